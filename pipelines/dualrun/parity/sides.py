"""The two databases being compared, behind one shape: source SQL, rows, Arrow tables.

Each side translates its driver's errors (WarehouseError, StoreError) so the comparison never
sees psycopg or ClickHouse exceptions. `run_both` runs one query on each side at the same time:
PostgreSQL works in its own process, so the legacy query overlaps the ClickHouse one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import TYPE_CHECKING, Any

import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv

from pipelines.clickhouse.sql import literal as ch_literal
from pipelines.dualrun.parity.columns import LEGACY_TABLE
from pipelines.dualrun.parity.dialects import ChDialect, PgDialect, pg_identifier, pg_literal
from pipelines.dualrun.parity.inputs import Normalisation
from pipelines.dualrun.parity.queries import clickhouse_source_sql, legacy_source_sql
from pipelines.errors import NovaError, StoreError, WarehouseError
from pipelines.urls import redact_url

if TYPE_CHECKING:
    from pipelines.clickhouse import Store
    from pipelines.config import Settings

DbRow = tuple[Any, ...]
"""A result row as the driver returns it; each query's caller knows its columns' types."""

Window = tuple[datetime, datetime]


class LegacySide:
    """The legacy PostgreSQL warehouse's `card_txn`, over one connection with hash-friendly settings."""

    dialect = PgDialect()

    def __init__(self, settings: Settings, normalisation: Normalisation, since: datetime, until: datetime) -> None:
        self.dsn = settings.legacy.dsn
        self.schema = settings.legacy.schema_name
        self.normalisation = normalisation
        self.since, self.until = since, until
        self.source = f"{self.schema}.{LEGACY_TABLE}"
        try:
            self.conn: psycopg.Connection[DbRow] = psycopg.connect(self.dsn, autocommit=True, connect_timeout=10)
        except psycopg.Error as exc:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise WarehouseError(
                f"cannot connect to the legacy warehouse at {redact_url(self.dsn)}: {detail}",
                hint="start it with `nova stack up`, or fix legacy.dsn in configs/nova.yaml (NOVA_LEGACY__DSN)",
            ) from None
        # The planner cannot estimate the zone-converted range filter (it guesses a few thousand
        # rows for millions) and picks sort + group aggregation that spills to disk; hashing is
        # what fits these queries. Session settings of this connection only.
        self.query("SET enable_sort = off; SET work_mem = '64MB'")
        regclass = pg_literal(pg_identifier(self.schema, LEGACY_TABLE))
        if self._one(f"SELECT to_regclass({regclass})") is None:
            self.close()
            raise WarehouseError(
                f"legacy table {self.source} does not exist in {redact_url(self.dsn)}",
                hint="load the legacy warehouse, or fix legacy.schema in configs/nova.yaml",
            )
        # txn_ref is the primary key: distinct ids = rows, and skipping count(DISTINCT) lets
        # PostgreSQL aggregate in parallel.
        self.ids_unique = bool(
            self._one(
                "SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a"
                " ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]"
                f" WHERE i.indrelid = {regclass}::regclass"
                " AND i.indisunique AND i.indnkeyatts = 1 AND i.indpred IS NULL AND a.attname = 'txn_ref')"
            )
        )

    def _one(self, sql: str) -> Any:
        rows = self.query(sql)
        return rows[0][0] if rows else None

    def query(self, sql: str) -> list[DbRow]:
        try:
            with self.conn.cursor() as cur:
                cur.execute(sql.encode())
                return list(cur.fetchall()) if cur.description else []
        except psycopg.Error as exc:
            raise WarehouseError(f"legacy warehouse query failed on {self.source}: {str(exc).strip()}") from None

    def query_arrow(self, sql: str, schema: pa.Schema) -> pa.Table:
        """A (possibly large) result through COPY … TO STDOUT as CSV, parsed by Arrow into `schema`."""
        buf = bytearray()
        try:
            with self.conn.cursor() as cur, cur.copy(f"COPY ({sql}) TO STDOUT (FORMAT csv)".encode()) as copy:
                for block in copy:
                    buf += block
        except psycopg.Error as exc:
            raise WarehouseError(f"legacy warehouse query failed on {self.source}: {str(exc).strip()}") from None
        if not buf:
            return schema.empty_table()
        return pacsv.read_csv(
            pa.py_buffer(bytes(buf)),
            read_options=pacsv.ReadOptions(column_names=schema.names),
            parse_options=pacsv.ParseOptions(newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(column_types=schema, strings_can_be_null=False),
        )

    def ranged(self, window: Window | None = None) -> str:
        since, until = window or (self.since, self.until)
        return legacy_source_sql(self.schema, self.normalisation, since=since, until=until)

    def by_ids(self, ids: Sequence[str]) -> str:
        return legacy_source_sql(self.schema, self.normalisation, since=None, until=None, ids=ids)

    def close(self) -> None:
        self.conn.close()


class ClickHouseSide:
    """ClickHouse's transactions table, through a `Store` (embedded chdb or a server, 18.16 or current)."""

    dialect = ChDialect()

    def __init__(self, store: Store, database: str, table: str, since: datetime, until: datetime) -> None:
        self.store = store
        self.database, self.table = database, table
        self.since, self.until = since, until
        self.source = f"{database}.{table}"
        found = self.query(
            f"SELECT count() FROM system.tables WHERE database = {ch_literal(database)} AND name = {ch_literal(table)}"
        )
        if not found or not int(found[0][0]):
            raise StoreError(
                f"ClickHouse table {self.source} does not exist",
                hint="create it with `nova provision --yes`, or fix pipeline.table / clickhouse.database",
            )
        self.has_trim_both = bool(int(self.query("SELECT count() FROM system.functions WHERE name = 'trimBoth'")[0][0]))

    def query(self, sql: str) -> list[DbRow]:
        try:
            return [tuple(r) for r in self.store.query_rows(sql)]
        except NovaError:
            raise
        except Exception as exc:  # the store translates its vendors' errors; this is the backstop
            raise StoreError(f"ClickHouse query failed on {self.source}: {exc}") from None

    def query_arrow(self, sql: str, schema: pa.Schema) -> pa.Table:
        try:
            table = self.store.query_arrow(sql)
        except NovaError:
            raise
        except Exception as exc:
            raise StoreError(f"ClickHouse query failed on {self.source}: {exc}") from None
        columns = []
        for column, target in zip(table.columns, schema, strict=True):
            if pa.types.is_dictionary(column.type):
                column = column.cast(column.type.value_type)
            columns.append(column.cast(target.type))
        return pa.Table.from_arrays(columns, schema=schema)

    def ranged(self, window: Window | None = None) -> str:
        since, until = window or (self.since, self.until)
        return clickhouse_source_sql(
            self.database, self.table, since=since, until=until, has_trim_both=self.has_trim_both
        )

    def by_ids(self, ids: Sequence[str]) -> str:
        return clickhouse_source_sql(
            self.database, self.table, since=None, until=None, ids=ids, has_trim_both=self.has_trim_both
        )


def run_both(legacy: LegacySide, legacy_sql: str, ch: ClickHouseSide, ch_sql: str) -> tuple[list[DbRow], list[DbRow]]:
    """Run one query on each side at the same time (PostgreSQL works in its own process)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(legacy.query, legacy_sql)
        ch_rows = ch.query(ch_sql)
        return pending.result(), ch_rows


def run_both_arrow(
    legacy: LegacySide, legacy_sql: str, ch: ClickHouseSide, ch_sql: str, schema: pa.Schema, timings: dict[str, float]
) -> tuple[pa.Table, pa.Table]:
    """`run_both` for large results, as Arrow tables of `schema`; adds each side's time to `timings`."""

    def timed(key: str, fn: Callable[[str, pa.Schema], pa.Table], sql: str) -> pa.Table:
        started = time.perf_counter()
        try:
            return fn(sql, schema)
        finally:
            timings[key] = timings.get(key, 0.0) + time.perf_counter() - started

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(timed, "segments_legacy_s", legacy.query_arrow, legacy_sql)
        ch_table = timed("segments_clickhouse_s", ch.query_arrow, ch_sql)
        return pending.result(), ch_table
