"""Hot and warm of one table, on either kind of ClickHouse, and the engine that moves days to cold.

Two layouts, chosen by what the store can do (`Capabilities.storage_policies`):

- `VolumeTiers` (chdb, servers ≥ 19.15): one table with a storage policy whose volumes are
  `default` (hot) and the warm volume; a day goes warm with `MOVE PARTITION … TO VOLUME`, which
  ClickHouse does atomically. For chdb the policy and the warm disk are declared in the engine
  config inside the chdb path (`write_engine_config`), which every process opening it loads.
- `TableTiers` (18.16): the table (hot) and a warm table beside it with the same structure; a
  day goes warm with `ATTACH PARTITION … FROM` (hard links) and leaves hot with `DROP PARTITION`.

Cold I/O always runs in the embedded engine (18.16 has no Parquet or S3): for chdb it is the
store itself, for a server a `chdb://:memory:` engine that reads the server's tables over its
HTTP interface (`url(…, 'Native')`). `engine_source` renders that FROM clause either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from pipelines.clickhouse import Store
from pipelines.clickhouse.sql import literal, quote_identifier
from pipelines.config import Settings
from pipelines.errors import StoreError
from pipelines.lifecycle.fingerprint import Fingerprint, fingerprint_columns, from_row
from pipelines.lifecycle.policy import Policy, TablePolicy, WarmPolicy

Tier = Literal["hot", "warm"]
HOT_VOLUME = "default"  # a policy replacing `default` must keep its volume, under that name


@dataclass(frozen=True)
class DayParts:
    """The active parts of one day in one tier: size, and the block numbers they span."""

    rows: int
    bytes: int
    min_block: int
    max_block: int


def day_of(partition_id: str) -> date | None:
    """'20240105' → 2024-01-05; None for a partition id that is not a toYYYYMMDD day."""
    if len(partition_id) != 8 or not partition_id.isdigit():
        return None
    try:
        return date(int(partition_id[:4]), int(partition_id[4:6]), int(partition_id[6:]))
    except ValueError:
        return None


def partition_literal(day: date) -> str:
    return day.strftime("%Y%m%d")


class Tiers:
    """What both layouts offer; see the module docstring."""

    layout: str = "?"

    def __init__(
        self, *, store: Store, engine: Store, table: TablePolicy, warm: WarmPolicy, http_url: str | None = None
    ) -> None:
        self.store = store
        self.engine = engine
        self.policy = table
        self.warm_policy = warm
        self.name = table.name
        self.database = store.database
        self.http_url = http_url
        self.journal_key = table.name  # a cluster's shards journal apart (`cluster_tiers`)
        self._columns: list[tuple[str, str]] | None = None

    def units(self) -> list[Tiers]:
        """What moves run on: this table itself, or on a cluster each shard (`cluster_tiers`)."""
        return [self]

    def window_days(self, days: dict[Tier, dict[date, DayParts]]) -> dict[Tier, dict[date, DayParts]]:
        """The days the hot/warm windows are counted from: `days` itself, or on a cluster every shard's."""
        return days

    def _engine_table(self, table: str) -> str:
        """`table` as the server behind `http_url` names it in the engine's reads."""
        return f"{quote_identifier(self.database)}.{quote_identifier(table)}"

    @property
    def qualified(self) -> str:
        return f"{quote_identifier(self.database)}.{quote_identifier(self.name)}"

    def day_filter(self, day: date) -> str:
        return f"toYYYYMMDD({quote_identifier(self.policy.time_column)}) = {partition_literal(day)}"

    def days_filter(self, lo: date | None, hi: date | None) -> str:
        column = f"toYYYYMMDD({quote_identifier(self.policy.time_column)})"
        conds = []
        if lo is not None:
            conds.append(f"{column} >= {partition_literal(lo)}")
        if hi is not None:
            conds.append(f"{column} <= {partition_literal(hi)}")
        return " AND ".join(conds) or "1"

    def columns(self) -> list[tuple[str, str]]:
        """(name, type) of the hot table as the store reports them."""
        if self._columns is None:
            found = self.store.table_columns(f"{self.database}.{self.name}")
            if not found:
                raise StoreError(
                    f"table {self.database}.{self.name} does not exist", hint="create it with nova provision --yes"
                )
            self._columns = found
        return self._columns

    def check_partitioning(self) -> None:
        key = self.store.query_scalar(
            "SELECT partition_key FROM system.tables WHERE database = %(db)s AND name = %(t)s",
            {"db": self.database, "t": self.name},
        )
        wanted = f"toYYYYMMDD({self.policy.time_column})"
        if str(key or "").replace(" ", "") != wanted:
            raise StoreError(
                f"table {self.database}.{self.name} is partitioned by {key!r}, not {wanted}: tiers move whole days",
                hint="fix time_column in configs/lifecycle.yaml, or remove the table from its `tables:`",
            )

    def _parts(self, table: str, extra: str = "") -> dict[date, dict[str, DayParts]]:
        """day → disk name ('' when disks are unknown) → parts."""
        disk = "disk_name" if self.layout == "volume" else "''"
        rows = self.store.query_rows(
            f"SELECT partition_id, {disk}, sum(rows), sum(bytes_on_disk), min(min_block_number), "
            "max(max_block_number) FROM system.parts "
            f"WHERE database = %(db)s AND table = %(t)s AND active {extra} GROUP BY partition_id, {disk}",
            {"db": self.database, "t": table},
        )
        found: dict[date, dict[str, DayParts]] = {}
        for partition_id, disk_name, n, size, lo, hi in rows:
            day = day_of(str(partition_id))
            if day is None:
                raise StoreError(
                    f"table {self.database}.{table} has partition {partition_id!r}, which is not a day",
                    hint="tier-migrate moves tables partitioned by toYYYYMMDD(time_column)",
                )
            found.setdefault(day, {})[str(disk_name)] = DayParts(int(n), int(size), int(lo), int(hi))
        return found

    def _from(self, table: str, where: str) -> str:
        """A FROM item for the engine: the table itself when the engine is the store, else url() over HTTP."""
        cols = ", ".join(quote_identifier(n) for n, _ in self.columns())
        select = f"SELECT {cols} FROM {self._engine_table(table)} WHERE {where}"
        if self.engine is self.store:
            return f"({select})"
        if self.http_url is None:
            raise StoreError(
                f"the embedded engine cannot reach {self.database}.{table}: no HTTP URL of the server",
                hint="set server_http_url in configs/lifecycle.yaml",
            )
        structure = ", ".join(f"{quote_identifier(n)} {t}" for n, t in self.columns())
        sep = "&" if "?" in self.http_url else "?"
        url = f"{self.http_url}{sep}query=" + quote(select + " FORMAT Native", safe="")
        return f"url({literal(url)}, 'Native', {literal(structure)})"

    def _fingerprint_on(self, store: Store, source: str, where: str, columns: list[tuple[str, str]]) -> Fingerprint:
        select = fingerprint_columns(columns, self.policy.amount_column)
        return from_row(tuple(store.query_rows(f"SELECT {select} FROM {source} WHERE {where}")[0]))

    def ensure_warm(self) -> None:
        raise NotImplementedError

    def days(self) -> dict[Tier, dict[date, DayParts]]:
        raise NotImplementedError

    def fingerprint(self, tier: Tier, day: date) -> Fingerprint:
        raise NotImplementedError

    def move_to(self, tier: Tier, day: date) -> None:
        """Copy (or move) `day` into `tier` from the other one."""
        raise NotImplementedError

    def drop(self, tier: Tier, day: date) -> None:
        raise NotImplementedError

    def source_parts(self, tier: Tier, day: date) -> DayParts | None:
        raise NotImplementedError

    def engine_source(self, tier: Tier | None, where: str) -> str:
        """A FROM item the engine reads rows of `tier` (None: hot and warm) matching `where` from."""
        raise NotImplementedError

    def engine_columns(self) -> list[tuple[str, str]]:
        """(name, type) as the engine sees rows of `engine_source`."""
        raise NotImplementedError

    def engine_fingerprint(self, tier: Tier | None, day: date) -> Fingerprint:
        source = self.engine_source(tier, self.day_filter(day))
        return self._fingerprint_on(self.engine, source, "1", self.engine_columns())


def _merge(parts: list[DayParts]) -> DayParts:
    return DayParts(
        sum(p.rows for p in parts),
        sum(p.bytes for p in parts),
        min(p.min_block for p in parts),
        max(p.max_block for p in parts),
    )


class VolumeTiers(Tiers):
    """One table, a storage policy with volumes `default` (hot) and warm."""

    layout = "volume"
    _disk_volume: dict[str, str] | None = None

    def ensure_warm(self) -> None:
        wp = self.warm_policy
        volumes = self.store.query_rows(
            "SELECT volume_name, disks FROM system.storage_policies WHERE policy_name = %(p)s", {"p": wp.storage_policy}
        )
        names = {str(v) for v, _d in volumes}
        if not {HOT_VOLUME, wp.volume} <= names:
            raise StoreError(
                f"storage policy {wp.storage_policy!r} with volumes {HOT_VOLUME!r} and {wp.volume!r} is not declared "
                f"on this ClickHouse (it has volumes {sorted(names) or 'none'})",
                hint="declare it in the server's storage_configuration (the embedded store gets it from "
                "nova tier-migrate), or set warm.storage_policy in configs/lifecycle.yaml",
            )
        current = self.store.query_scalar(
            "SELECT storage_policy FROM system.tables WHERE database = %(db)s AND name = %(t)s",
            {"db": self.database, "t": self.name},
        )
        if current != wp.storage_policy:
            self.store.execute(
                f"ALTER TABLE {self.qualified} MODIFY SETTING storage_policy = {literal(wp.storage_policy)}"
            )

    def _volume_of(self, disk: str) -> str:
        if self._disk_volume is None:
            rows = self.store.query_rows(
                "SELECT volume_name, disks FROM system.storage_policies WHERE policy_name = %(p)s",
                {"p": self.warm_policy.storage_policy},
            )
            self._disk_volume = {str(d): str(v) for v, disks in rows for d in (disks or [])}
        return self._disk_volume.get(disk, HOT_VOLUME)

    def days(self) -> dict[Tier, dict[date, DayParts]]:
        by_tier: dict[Tier, dict[date, list[DayParts]]] = {"hot": {}, "warm": {}}
        for day, disks in self._parts(self.name).items():
            for disk, parts in disks.items():
                tier: Tier = "warm" if self._volume_of(disk) == self.warm_policy.volume else "hot"
                by_tier[tier].setdefault(day, []).append(parts)
        return {tier: {d: _merge(ps) for d, ps in days.items()} for tier, days in by_tier.items()}

    def fingerprint(self, tier: Tier, day: date) -> Fingerprint:
        # hot and warm are volumes of one table: a day's fingerprint is the table's.
        return self._fingerprint_on(self.store, self.qualified, self.day_filter(day), self.columns())

    def move_to(self, tier: Tier, day: date) -> None:
        volume = self.warm_policy.volume if tier == "warm" else HOT_VOLUME
        other = HOT_VOLUME if tier == "warm" else self.warm_policy.volume
        on_other = [
            d for d, ps in self._parts(self.name).get(day, {}).items() if self._volume_of(d) == other and ps.rows
        ]
        if on_other:
            self.store.execute(
                f"ALTER TABLE {self.qualified} MOVE PARTITION {partition_literal(day)} TO VOLUME {literal(volume)}"
            )

    def drop(self, tier: Tier, day: date) -> None:
        self.store.execute(f"ALTER TABLE {self.qualified} DROP PARTITION {partition_literal(day)}")

    def source_parts(self, tier: Tier, day: date) -> DayParts | None:
        disks = self._parts(self.name).get(day)
        return _merge(list(disks.values())) if disks else None

    def engine_source(self, tier: Tier | None, where: str) -> str:
        return self._from(self.name, where)

    def engine_columns(self) -> list[tuple[str, str]]:
        return self.columns()


class TableTiers(Tiers):
    """The table (hot) and NAME + suffix (warm), for ClickHouse without storage policies."""

    layout = "table"

    def __init__(
        self, *, store: Store, engine: Store, table: TablePolicy, warm: WarmPolicy, http_url: str | None = None
    ) -> None:
        super().__init__(store=store, engine=engine, table=table, warm=warm, http_url=http_url)
        self.warm_name = table.name + warm.table_suffix

    def _table(self, tier: Tier) -> str:
        return self.name if tier == "hot" else self.warm_name

    def _qualified(self, tier: Tier) -> str:
        return f"{quote_identifier(self.database)}.{quote_identifier(self._table(tier))}"

    def warm_exists(self) -> bool:
        """Whether the warm table exists (the first real run creates it)."""
        return self.store.table_exists(f"{self.database}.{self.warm_name}")

    def ensure_warm(self) -> None:
        self.store.execute(f"CREATE TABLE IF NOT EXISTS {self._qualified('warm')} AS {self._qualified('hot')}")
        hot, warm = self.columns(), self.store.table_columns(f"{self.database}.{self.warm_name}")
        missing = [(n, t) for n, t in hot if (n, t) not in warm]
        for name, ctype in missing:
            # Columns are only ever added to the hot table (provision); the warm one follows.
            self.store.execute(f"ALTER TABLE {self._qualified('warm')} ADD COLUMN {quote_identifier(name)} {ctype}")

    def days(self) -> dict[Tier, dict[date, DayParts]]:
        return {
            tier: {d: _merge(list(disks.values())) for d, disks in self._parts(self._table(tier)).items()}
            for tier in ("hot", "warm")
        }

    def fingerprint(self, tier: Tier, day: date) -> Fingerprint:
        return self._fingerprint_on(self.store, self._qualified(tier), self.day_filter(day), self.columns())

    def move_to(self, tier: Tier, day: date) -> None:
        source: Tier = "hot" if tier == "warm" else "warm"
        into, source_q = self._qualified(tier), self._qualified(source)
        self.store.execute(f"ALTER TABLE {into} ATTACH PARTITION {partition_literal(day)} FROM {source_q}")

    def drop(self, tier: Tier, day: date) -> None:
        self.store.execute(f"ALTER TABLE {self._qualified(tier)} DROP PARTITION {partition_literal(day)}")

    def source_parts(self, tier: Tier, day: date) -> DayParts | None:
        disks = self._parts(self._table(tier)).get(day)
        return _merge(list(disks.values())) if disks else None

    def engine_source(self, tier: Tier | None, where: str) -> str:
        tiers: tuple[Tier, ...] = (tier,) if tier is not None else ("hot", "warm")
        branches = [self._from(self._table(t), where) for t in tiers]
        if len(branches) == 1:
            return branches[0]
        cols = ", ".join(quote_identifier(n) for n, _ in self.columns())
        return "(" + " UNION ALL ".join(f"SELECT {cols} FROM {b}" for b in branches) + ")"

    def engine_columns(self) -> list[tuple[str, str]]:
        return self.columns()


def server_http_url(settings: Settings, policy: Policy) -> str:
    """The HTTP interface of clickhouse.url's server, with its user and password as query parameters."""
    url = settings.clickhouse.url
    parts = urlsplit(url)
    # A cluster's URL lists several hosts: the default is the local cluster's first host (its Distributed tables).
    port = (
        settings.stack.clickhouse_cluster_port + 11
        if settings.clickhouse.cluster
        else settings.stack.clickhouse_http_port
    )
    host = (parts.hostname or "127.0.0.1").split(",")[0]
    named = dict(parse_qsl(parts.query)).get("http_port", "")
    port = int(named) if named.isdigit() else port  # the URL's own, when it names one
    base = policy.server_http_url or f"http://{host}:{port}/"
    params = {"user": parts.username or "default"}
    if parts.password:
        params["password"] = parts.password
    return base.rstrip("/") + "/?" + urlencode(params)


def engine_config_xml(*, warm: WarmPolicy, warm_disk: Path) -> str:
    """The embedded engine's storage configuration: the warm disk and the tiered policy."""
    from xml.sax.saxutils import escape

    return f"""<?xml version="1.0"?>
<!-- Written by `nova tier-migrate` from configs/lifecycle.yaml (warm.*); edits are overwritten.
     Every process opening this chdb path loads it: tables use the policy below. -->
<clickhouse>
    <storage_configuration>
        <disks>
            <nova_warm><path>{escape(str(warm_disk))}/</path></nova_warm>
        </disks>
        <policies>
            <{warm.storage_policy}>
                <volumes>
                    <{HOT_VOLUME}><disk>default</disk></{HOT_VOLUME}>
                    <{warm.volume}><disk>nova_warm</disk></{warm.volume}>
                </volumes>
                <!-- no automatic moves: tier-migrate decides, verifies and journals each one -->
                <move_factor>0</move_factor>
            </{warm.storage_policy}>
        </policies>
    </storage_configuration>
</clickhouse>
"""
