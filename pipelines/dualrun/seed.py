"""Seeding the legacy warehouse: realistic card_txn rows from the transaction generator, by COPY.

    seed_legacy(settings=settings, days=3, rows=5000, seed=1)   # schema, COPY, nightly ETL

Rows are stored the legacy way, i.e. configs/legacy/mapping.yaml read backwards: the merchant's
wall-clock time and IANA zone (`country_zones`), amounts in major units (`amount_minor.exponents`),
one-letter codes (`enums`). So a replay of the seeded rows must give back the generator's records.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

from pipelines.contracts.reference import FxRate, Merchant, load_reference
from pipelines.dualrun.mapping import MAPPING_FILE, LegacyMapping, load_mapping
from pipelines.dualrun.warehouse import connect, ensure_schema, run_nightly_etl, warehouse_errors
from pipelines.errors import ConfigError, UsageError, WarehouseError
from pipelines.synth import TransactionChunk, TransactionGenerator

if TYPE_CHECKING:
    from collections.abc import Mapping

    from psycopg import sql

    from pipelines.config import Settings
    from pipelines.dualrun.warehouse import Connection

Int64s = npt.NDArray[np.int64]

# The columns of card_txn in table order, without loaded_at (the database's default).
CARD_TXN_COLUMNS = (
    "txn_ref", "txn_ts_local", "txn_tz", "card_token", "acct_no", "merchant_code", "mcc", "amount", "ccy",
    "merchant_country", "channel_cd", "status_cd", "device_ref", "client_ip", "geo_lat", "geo_lon", "batch_id",
)  # fmt: skip

_SEED_CHUNK = 50_000


@dataclass
class SeedResult:
    """What `seed_legacy` loaded, and how fast (COPY with the index build, then the nightly ETL)."""

    schema: str
    rows: int
    days: int
    seed: int
    start: datetime  # UTC, inclusive
    end: datetime  # UTC, exclusive
    truncated: bool
    copy_seconds: float
    etl_seconds: float
    summary_rows: int

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.copy_seconds if self.copy_seconds > 0 else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema, "rows": self.rows, "days": self.days, "seed": self.seed,
            "start": self.start.isoformat(), "end": self.end.isoformat(), "truncated": self.truncated,
            "copy_seconds": round(self.copy_seconds, 3), "rows_per_s": round(self.rows_per_s),
            "etl_seconds": round(self.etl_seconds, 3), "summary_rows": self.summary_rows,
        }  # fmt: skip


def merchant_zone(merchant_id: str, country: str, *, mapping: LegacyMapping) -> str:
    """The merchant's zone: its country's (mapping `country_zones`), or a stable pick among them."""
    zones = mapping.country_zones.get(country)
    if not zones:
        raise ConfigError(
            f"merchant {merchant_id!r} is in country {country!r}, which has no time zone under key "
            f"'country_zones' of {mapping.source_path or MAPPING_FILE}",
            hint=f"add `{country}: [<IANA zone>, …]` under country_zones",
        )
    if len(zones) == 1:
        return zones[0]
    pick = int.from_bytes(hashlib.blake2b(merchant_id.encode(), digest_size=4).digest(), "little")
    return zones[pick % len(zones)]


class _LegacyRows:
    """Generator chunks (contract-shaped columns) → card_txn rows as CSV bytes for COPY, vectorised."""

    def __init__(self, *, mapping: LegacyMapping, merchants: Mapping[str, Merchant]) -> None:
        zone_of = {mid: merchant_zone(mid, m.country, mapping=mapping) for mid, m in merchants.items()}
        self.zone_names: list[str] = sorted(set(zone_of.values()))
        zone_index = {z: i for i, z in enumerate(self.zone_names)}
        self._merchant_zone = {mid: zone_index[zone] for mid, zone in zone_of.items()}
        self._zones = [ZoneInfo(z) for z in self.zone_names]
        self._exponents = mapping.amount_minor.exponents
        self._channel_codes = {symbol: code for code, symbol in mapping.enums["channel"].values.items()}
        self._status_codes = {symbol: code for code, symbol in mapping.enums["status"].values.items()}
        self._offsets: dict[int, int | None] = {}  # zone * 2^32 + UTC hour → offset ms (None: changes that hour)

    def _offset_ms(self, key: int) -> int | None:
        zone = self._zones[key >> 32]
        hour = key & 0xFFFFFFFF
        start = datetime.fromtimestamp(hour * 3600, tz=zone).utcoffset()
        end = datetime.fromtimestamp(hour * 3600 + 3599.999, tz=zone).utcoffset()
        assert start is not None and end is not None
        return start // timedelta(milliseconds=1) if start == end else None

    def local_ms(self, event_ms: Int64s, zone_idx: Int64s) -> Int64s:
        """UTC ms → the merchant's wall-clock ms (UTC instants map to one wall-clock time each)."""
        keys = (zone_idx.astype(np.int64) << 32) | (event_ms // 3_600_000)
        uniq, inverse = np.unique(keys, return_inverse=True)
        offsets = np.empty(len(uniq), dtype=np.int64)
        exact = []
        for i, key in enumerate(uniq.tolist()):
            if key not in self._offsets:
                self._offsets[key] = self._offset_ms(key)
            off = self._offsets[key]
            if off is None:
                exact.append(i)
                off = 0
            offsets[i] = off
        local: Int64s = event_ms + offsets[inverse]
        if exact:  # an hour with a DST transition in it: convert those rows one by one
            for row in np.nonzero(np.isin(inverse, exact))[0].tolist():
                zone = self._zones[int(zone_idx[row])]
                delta = datetime.fromtimestamp(int(event_ms[row]) / 1000, tz=zone).utcoffset()
                assert delta is not None
                local[row] = int(event_ms[row]) + delta // timedelta(milliseconds=1)
        return local

    def csv_chunk(self, chunk: TransactionChunk) -> bytes:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.csv as pacsv

        col = chunk.column  # plain arrays, whatever compact form the generator keeps them in
        n = len(chunk)
        event_ms = col("event_time").astype(np.int64)
        zone_idx = np.fromiter((self._merchant_zone[m] for m in col("merchant_id")), dtype=np.int64, count=n)
        local = self.local_ms(event_ms, zone_idx)
        zones = pa.DictionaryArray.from_arrays(pa.array(zone_idx, pa.int32()), pa.array(self.zone_names))

        currency = pa.array(col("currency"), pa.string()).dictionary_encode()
        suffixes = pa.array(["" if (e := self._exponents.get(c)) is None or e == 0 else f"e-{e}"
                             for c in currency.dictionary.to_pylist()], pa.string())  # fmt: skip
        missing = [c for c in currency.dictionary.to_pylist() if c not in self._exponents]
        if missing:
            raise ConfigError(
                f"the generator produced currency {missing[0]}, which has no exponent in {MAPPING_FILE}",
                hint="add it under amount_minor.exponents",
            )
        # numeric input accepts exponent notation: 5020e-2 is exactly 50.20 (no float on the way)
        amount = pc.binary_join_element_wise(
            pa.array(col("amount_minor"), pa.int64()).cast(pa.string()),
            pc.take(suffixes, currency.indices),
            "",
        )
        days = (event_ms // 86_400_000).astype("datetime64[D]")
        months = days.astype("datetime64[M]")
        batch_id = ((months.astype("datetime64[Y]").astype(np.int64) + 1970) * 10000
                    + (months.astype(np.int64) % 12 + 1) * 100
                    + (days - months).astype(np.int64) + 1)  # fmt: skip
        channel = pa.array([self._channel_codes[c] for c in col("channel").tolist()], pa.string())
        status = pa.array([self._status_codes[s] for s in col("status").tolist()], pa.string())
        table = pa.table({
            "txn_ref": pa.array(col("transaction_id"), pa.string()),
            "txn_ts_local": pa.array(local, pa.timestamp("ms")),
            "txn_tz": zones.cast(pa.string()),
            "card_token": pa.array(col("card_id"), pa.string()),
            "acct_no": pa.array(col("account_id"), pa.string()),
            "merchant_code": pa.array(col("merchant_id"), pa.string()),
            "mcc": pa.array(col("merchant_category"), pa.string()),
            "amount": amount,
            "ccy": currency.cast(pa.string()),
            "merchant_country": pa.array(col("country"), pa.string()),
            "channel_cd": channel,
            "status_cd": status,
            "device_ref": pa.array(col("device_id"), pa.string()),
            "client_ip": pa.array(col("ip_address"), pa.string()),
            "geo_lat": pa.array(col("latitude"), pa.float64(), from_pandas=True),  # NaN → NULL
            "geo_lon": pa.array(col("longitude"), pa.float64(), from_pandas=True),
            "batch_id": pa.array(batch_id, pa.int32()),
        })  # fmt: skip
        sink = pa.BufferOutputStream()
        pacsv.write_csv(table, sink, pacsv.WriteOptions(include_header=False, quoting_style="needed"))
        csv: bytes = sink.getvalue().to_pybytes()
        return csv


def _check_exponents(mapping: LegacyMapping, fx_rates: Mapping[str, FxRate], fx_path: Path) -> None:
    for ccy, fx in fx_rates.items():
        exp = mapping.amount_minor.exponents.get(ccy)
        if exp is not None and exp != fx.exponent:
            raise ConfigError(
                f"{mapping.source_path}: key 'amount_minor.exponents.{ccy}' is {exp}, but {fx_path} says "
                f"{ccy} has {fx.exponent} minor units",
                hint="ISO 4217 decides; make them agree",
            )


def _drop_indexes(conn: Connection, schema: str, table: str) -> list[sql.SQL | sql.Composed]:
    """Drop the table's indexes and constraints that own one; return the statements that recreate them."""
    from psycopg import sql

    constraints = conn.execute(
        "SELECT c.conname, pg_get_constraintdef(c.oid), c.conindid FROM pg_constraint c "
        "JOIN pg_class t ON t.oid = c.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace "
        "WHERE n.nspname = %s AND t.relname = %s AND c.contype IN ('p', 'u')",
        (schema, table),
    ).fetchall()
    owned = {row[2] for row in constraints}
    indexes = conn.execute(
        "SELECT i.indexrelid, pg_get_indexdef(i.indexrelid), ic.relname FROM pg_index i "
        "JOIN pg_class t ON t.oid = i.indrelid JOIN pg_namespace n ON n.oid = t.relnamespace "
        "JOIN pg_class ic ON ic.oid = i.indexrelid WHERE n.nspname = %s AND t.relname = %s",
        (schema, table),
    ).fetchall()
    recreate: list[sql.SQL | sql.Composed] = []
    qualified = sql.Identifier(schema, table)
    for name, definition, _ in constraints:
        conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(qualified, sql.Identifier(name)))
        recreate.append(
            sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} " + definition.replace("{", "{{").replace("}", "}}")).format(
                qualified, sql.Identifier(name)
            )
        )
    for oid, definition, name in indexes:
        if oid in owned:
            continue
        conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(schema, name)))
        recreate.append(sql.SQL(definition))  # as PostgreSQL printed it: no placeholders to fill
    return recreate


def seed_legacy(
    *,
    settings: Settings,
    days: int,
    rows: int,
    seed: int = 1,
    truncate: bool = False,
    end: date | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> SeedResult:
    """Create the legacy schema if needed and load `rows` realistic card_txn rows over the `days`
    UTC days before `end` (default: today, UTC), then run the nightly ETL for those dates.

    One transaction: a crash leaves the warehouse as it was. Deterministic for (seed, days, rows, end).
    Rows go in with COPY (CSV built by pyarrow from the generator's numpy columns).
    """
    from psycopg import sql
    from psycopg.copy import QueuedLibpqWriter

    if days < 1:
        raise UsageError(f"--days must be at least 1, got {days}")
    if rows < 0:
        raise UsageError(f"--rows must not be negative, got {rows}")
    mapping = load_mapping(settings=settings)
    ref = load_reference(settings)
    _check_exponents(mapping, ref.fx_rates, settings.resolve(settings.pipeline.fx_rates))
    end_date = end or datetime.now(UTC).date()
    end_dt = datetime(end_date.year, end_date.month, end_date.day, tzinfo=UTC)
    start_dt = end_dt - timedelta(days=days)
    converter = _LegacyRows(mapping=mapping, merchants=ref.merchants)
    generator = TransactionGenerator(
        seed=seed,
        merchants=ref.merchants,
        fx_rates=ref.fx_rates,
        currencies=[c for c in settings.pipeline.rules.currencies if c in ref.fx_rates],
        start_ms=int(start_dt.timestamp() * 1000),
        spread_s=days * 86400.0,
    )
    schema = settings.legacy.schema_name
    table = sql.Identifier(schema, mapping.table)
    copy_sql = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(
        table, sql.SQL(", ").join(sql.Identifier(c) for c in CARD_TXN_COLUMNS)
    )
    failed = warehouse_errors(
        f"seeding {schema}.{mapping.table} failed",
        duplicate=WarehouseError(
            f"{schema}.{mapping.table} already holds some of these transactions (seed {seed} was loaded before)",
            hint="pass --truncate to reload, or another --seed to add different rows",
        ),
    )
    conn = connect(settings=settings)
    try:
        ensure_schema(settings=settings, conn=conn)
        started = time.perf_counter()
        done = 0
        with failed, conn.transaction():
            if truncate:
                conn.execute(sql.SQL("TRUNCATE {}").format(table))
            # Into an empty table, load first and index after: building an index by sorting is several
            # times faster than growing a random-uuid btree row by row. Same transaction, so a failure
            # rolls the drop back too.
            empty = conn.execute(sql.SQL("SELECT NOT EXISTS (SELECT 1 FROM {})").format(table)).fetchone()
            rebuild = _drop_indexes(conn, schema, mapping.table) if empty and empty[0] and rows else []
            with conn.cursor() as cur, cur.copy(copy_sql, writer=QueuedLibpqWriter(cur)) as copy:
                chunks = generator.chunks(_SEED_CHUNK)
                while done < rows:
                    chunk = next(chunks)
                    if done + len(chunk) > rows:
                        chunk = chunk[: rows - done]
                    copy.write(converter.csv_chunk(chunk))
                    done += len(chunk)
                    if on_progress:
                        on_progress(done, rows)
            if rebuild:
                conn.execute("SET LOCAL maintenance_work_mem = '512MB'")
                for statement in rebuild:
                    conn.execute(statement)
            copy_seconds = time.perf_counter() - started
            etl_started = time.perf_counter()
            summary_rows = run_nightly_etl(settings=settings, from_date=start_dt.date(), to_date=end_date, conn=conn)
            etl_seconds = time.perf_counter() - etl_started
    finally:
        conn.close()
    return SeedResult(
        schema=schema, rows=done, days=days, seed=seed, start=start_dt, end=end_dt, truncated=truncate,
        copy_seconds=copy_seconds, etl_seconds=etl_seconds, summary_rows=summary_rows,
    )  # fmt: skip
