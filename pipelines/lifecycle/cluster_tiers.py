"""Tiers on a ClickHouse cluster: the moves run per shard on the `_local` tables, reads go through Distributed.

Partition operations (`ATTACH PARTITION … FROM`, `DROP PARTITION`) do nothing useful on a
`Distributed` table, and `ON CLUSTER` would run them on *every* replica of a shard (an attach twice).
So each shard is moved on its writer replica (`ClusterStore.shard_store`), where a partition
operation on a Replicated table is written to the shard's replication log and replayed by the
other replicas. Each shard is then exactly the single-server `TableTiers` case — its own parts,
block numbers, fingerprints and journal (`<table>@shardN`) — so the journal's crash guarantees hold
per shard unchanged. Only two things are cluster-wide: the day windows (counted from the newest day
on any shard, so every shard moves the same days) and the cold manifest of a day, which lists one
file per shard.

The engine (chdb) reads a shard's rows over the front host's HTTP interface with `remote()` to the
writer replica: the same rows the partition operations saw, not a possibly lagging replica.
"""

from __future__ import annotations

from datetime import date

from pipelines.clickhouse import Store
from pipelines.clickhouse.cluster import Host
from pipelines.clickhouse.cluster_store import ClusterStore
from pipelines.clickhouse.sql import literal, quote_identifier
from pipelines.errors import StoreError
from pipelines.lifecycle.fingerprint import EMPTY, Fingerprint
from pipelines.lifecycle.policy import TablePolicy, WarmPolicy
from pipelines.lifecycle.tiers import DayParts, TableTiers, Tier, Tiers


class ShardTiers(TableTiers):
    """One shard's `<table>_local` (hot) and `<table>_warm_local` (warm), on its writer replica."""

    def __init__(self, *, cluster: ClusterTiers, shard: int, store: Store, host: Host) -> None:
        super().__init__(
            store=store,
            engine=cluster.engine,
            table=cluster.policy,
            warm=cluster.warm_policy,
            http_url=cluster.http_url,
        )
        self.cluster = cluster
        self.shard = shard
        self.host = host  # the writer replica `store` is connected to, for remote() from the front host
        self.journal_key = f"{self.name}@shard{shard + 1}"

    def _table(self, tier: Tier) -> str:
        return self.cluster.local_name(tier)

    @property
    def qualified(self) -> str:
        return self._qualified("hot")

    def columns(self) -> list[tuple[str, str]]:
        if self._columns is None:
            self._columns = self.cluster.columns()
        return self._columns

    def check_partitioning(self) -> None:
        self.cluster.check_partitioning()

    def ensure_warm(self) -> None:
        """Created cluster-wide by `ClusterTiers.ensure_warm`."""

    def warm_exists(self) -> bool:
        return self.cluster.warm_exists()

    def window_days(self, days: dict[Tier, dict[date, DayParts]]) -> dict[Tier, dict[date, DayParts]]:
        return self.cluster.days()

    def _engine_table(self, table: str) -> str:
        endpoint = self.host.endpoint
        return (
            f"remote({literal(endpoint.label)}, {quote_identifier(self.database)}, {quote_identifier(table)}, "
            f"{literal(endpoint.user)}, {literal(endpoint.password)})"
        )


class ClusterTiers(TableTiers):
    """The Distributed `<table>` (hot) and `<table>_warm` (warm) for reads; `units()` are the shards that move."""

    def __init__(
        self, *, store: ClusterStore, engine: Store, table: TablePolicy, warm: WarmPolicy, http_url: str | None = None
    ) -> None:
        super().__init__(store=store, engine=engine, table=table, warm=warm, http_url=http_url)
        self.cluster_store = store
        self._shards: list[ShardTiers] | None = None

    def local_name(self, tier: Tier) -> str:
        return self.cluster_store.local(self.name if tier == "hot" else self.warm_name)

    def columns(self) -> list[tuple[str, str]]:
        if self._columns is None:
            found = self.store.table_columns(f"{self.database}.{self.local_name('hot')}")
            if not found:
                raise StoreError(
                    f"table {self.database}.{self.local_name('hot')} does not exist on the cluster",
                    hint="create it with nova provision --yes",
                )
            self._columns = found
        return self._columns

    def check_partitioning(self) -> None:
        key = self.store.query_scalar(
            "SELECT partition_key FROM system.tables WHERE database = %(db)s AND name = %(t)s",
            {"db": self.database, "t": self.local_name("hot")},
        )
        wanted = f"toYYYYMMDD({self.policy.time_column})"
        if str(key or "").replace(" ", "") != wanted:
            raise StoreError(
                f"table {self.database}.{self.local_name('hot')} is partitioned by {key!r}, not {wanted}: "
                "tiers move whole days",
                hint="fix time_column in configs/lifecycle.yaml, or remove the table from its `tables:`",
            )

    def units(self) -> list[Tiers]:
        return list(self.shards())

    def shards(self) -> list[ShardTiers]:
        if self._shards is None:
            cs = self.cluster_store
            self._shards = [
                ShardTiers(cluster=self, shard=i, store=cs.shard_store(i), host=cs.shard_host(i))
                for i in range(cs.shard_count)
            ]
        return self._shards

    def ensure_warm(self) -> None:
        """`<table>_warm_local` (Replicated, its own ZooKeeper path) and its Distributed table, `ON CLUSTER`."""
        from pipelines.clickhouse.cluster_ddl import replica_path

        cs, db = self.cluster_store, self.database
        hot_local, warm_local = self.local_name("hot"), self.local_name("warm")
        on = f"ON CLUSTER {quote_identifier(cs.cluster.name)}"
        qdb = quote_identifier(db)
        if not self.store.table_exists(f"{db}.{warm_local}"):
            create = str(self.store.query_scalar(f"SHOW CREATE TABLE {qdb}.{quote_identifier(hot_local)}"))
            hot_path = literal(replica_path(cs.cluster, db, hot_local))
            if hot_path not in create:
                raise StoreError(
                    f"{db}.{hot_local} is not replicated under {hot_path}: cannot derive its warm table",
                    hint="provision the cluster with nova provision --yes (clickhouse.cluster.replica_path)",
                )
            engine = create[create.index(" ENGINE = ") :].replace(
                hot_path, literal(replica_path(cs.cluster, db, warm_local))
            )
            columns = ", ".join(f"{quote_identifier(n)} {t}" for n, t in self.columns())
            self.store.execute(
                f"CREATE TABLE IF NOT EXISTS {qdb}.{quote_identifier(warm_local)} {on} ({columns}){engine}"
            )
        if not self.store.table_exists(f"{db}.{self.warm_name}"):
            dist = str(self.store.query_scalar(f"SHOW CREATE TABLE {qdb}.{quote_identifier(self.name)}"))
            args = dist[dist.index("Distributed(") :]
            args = args.replace(f"'{hot_local}'", f"'{warm_local}'").replace(f", {hot_local},", f", {warm_local},")
            self.store.execute(
                f"CREATE TABLE IF NOT EXISTS {qdb}.{quote_identifier(self.warm_name)} {on} "
                f"AS {qdb}.{quote_identifier(warm_local)} ENGINE = {args}"
            )
        warm = self.store.table_columns(f"{db}.{warm_local}")
        for name, ctype in [(n, t) for n, t in self.columns() if (n, t) not in warm]:
            for table in (warm_local, self.warm_name):
                self.store.execute(
                    f"ALTER TABLE {qdb}.{quote_identifier(table)} {on} ADD COLUMN IF NOT EXISTS "
                    f"{quote_identifier(name)} {ctype}"
                )

    def days(self) -> dict[Tier, dict[date, DayParts]]:
        """Every shard's days summed (block numbers are per shard: only the shards' own are meaningful)."""
        out: dict[Tier, dict[date, DayParts]] = {"hot": {}, "warm": {}}
        for shard in self.shards():
            for tier, days in shard.days().items():
                for day, p in days.items():
                    q = out[tier].get(day)
                    out[tier][day] = p if q is None else DayParts(q.rows + p.rows, q.bytes + p.bytes, -1, -1)
        return out

    def fingerprint(self, tier: Tier, day: date) -> Fingerprint:
        total = EMPTY
        for shard in self.shards():
            total = total + shard.fingerprint(tier, day)
        return total

    def move_to(self, tier: Tier, day: date) -> None:
        raise StoreError(f"{self.name}: a cluster moves days per shard", hint="run the moves of units()")

    def drop(self, tier: Tier, day: date) -> None:
        raise StoreError(f"{self.name}: a cluster drops days per shard", hint="run the moves of units()")

    def source_parts(self, tier: Tier, day: date) -> DayParts | None:
        return self.days()[tier].get(day)
