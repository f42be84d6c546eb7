"""Dual-run parity: prove the legacy PostgreSQL warehouse and ClickHouse hold the same transactions.

`run_parity_check` compares `legacy.card_txn` with ClickHouse's transactions table over a
half-open UTC range `[since, until)` in three stages, each computed *in the databases*:

1. **Segments.** Per UTC day × the `by` dimensions, both sides count rows, sum amounts in
   minor units, count distinct ids and add up a 60-bit checksum of every row's canonical
   string. A segment differs when a count or a distinct count differs, when the amount sums
   differ by more than the tolerance, or when only the checksum differs (a value changed in a
   column that is neither a dimension nor summed, e.g. the time within a day).
2. **Checksum bisection** (the reladiff / data-diff technique). Each differing segment is cut
   into buckets by the leading bits of a 60-bit hash of `transaction_id` — 16 or more, as many
   as bring the largest segment near `LEAF_ROWS / 2` rows a bucket, so one round usually does;
   both sides return per-bucket count, amount sum and checksum; only differing buckets are cut
   again, until a bucket holds at most `LEAF_ROWS` rows. One query per side per round covers
   every differing segment, and only the days that hold them are scanned.
3. **Rows.** For the differing leaf buckets both sides return `(id, row hash)`; the ids whose
   hashes differ are fetched from both sides *by id, over the whole table* (a row whose time
   zone slipped lands outside the range on one side and is still found) and classified:
   missing in ClickHouse, missing in legacy, duplicated, or a value mismatch per column.

Normalisation, so that equal data compares equal:

- time: legacy stores the merchant's wall clock and its IANA zone; the UTC instant is
  `txn_ts_local AT TIME ZONE txn_tz`, compared as whole epoch seconds (floor), days are
  `epoch_seconds div 86400` on both sides (= `toDate` in UTC without trusting any server zone);
- amounts: `numeric(14,2)` major units × 10^exponent(currency) → exact `bigint` minor units;
- strings: trimmed (`char(n)` padding), codes mapped (`P` → `POS`, `CAPT` → `CAPTURED`, …).

The row hash is the first 15 hex digits (60 bits) of MD5 of the canonical string
`id|epoch_s|merchant_id|amount_minor|currency|country|channel|status`, as a non-negative
integer. PostgreSQL: `('x' || substr(md5(s), 1, 15))::bit(60)::bigint`; ClickHouse (18.16 and
26.x alike): `bitShiftRight(reinterpretAsUInt64(reverse(substring(MD5(s), 1, 8))), 4)`.
(PostgreSQL builds the string with `concat_ws('|', …)`, ClickHouse with `concat(…)`; both print
integers in plain decimal.) Checksums are sums of row hashes compared modulo 2^64 (ClickHouse's
`sum(UInt64)` wraps, PostgreSQL's `sum(bigint)` is an exact numeric reduced with `mod`), so a
duplicate or a missing row always changes them.
"""

from __future__ import annotations

import math
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pipelines.errors import NovaError, ParityMismatch, StoreError, UsageError, WarehouseError
from pipelines.urls import redact_url

if TYPE_CHECKING:
    import pyarrow as pa
    from rich.console import RenderableType

    from pipelines.clickhouse import Store
    from pipelines.config import Settings

LEGACY_TABLE = "card_txn"
DIMENSIONS = ("day", "merchant", "currency", "country", "channel", "status")
DEFAULT_BY = ("day", "merchant", "currency")
COMPARED_COLUMNS = (
    "transaction_id",
    "event_time",
    "merchant_id",
    "amount_minor",
    "currency",
    "country",
    "channel",
    "status",
)
CHANNELS = {"P": "POS", "E": "ECOM", "A": "ATM", "M": "MOTO", "C": "CONTACTLESS"}
STATUSES = {"AUTH": "AUTHORIZED", "CAPT": "CAPTURED", "DECL": "DECLINED", "RFND": "REFUNDED", "REVS": "REVERSED"}
# ISO 4217 exponents, used when configs/reference/fx_rates.csv (minor_units) is absent.
FALLBACK_EXPONENTS = {"EUR": 2, "USD": 2, "GBP": 2, "CHF": 2, "SEK": 2, "PLN": 2, "JPY": 0}
DEFAULT_EXPONENT = 2

LEAF_ROWS = 1000  # a bucket this small is compared row by row
FANOUT_BITS = 4  # a bisection round cuts a bucket into at least 2**4 = 16…
_MAX_STEP_BITS = 16  # …and at most 2**16
HASH_BITS = 60
DEFAULT_MAX_ROWS = 1000  # row-level differences collected before the search stops
_ID_CHUNK = 2000  # ids per fetch-by-id query
_LEAF_CHUNK = 200  # leaf buckets per leaf query
_MOD = 1 << 64

# Normalised columns both sides expose, in this order (c_day is derived from c_epoch).
_COLS = ("c_id", "c_epoch", "c_merchant", "c_amount", "c_currency", "c_country", "c_channel", "c_status")
_DIM_COLUMN = {
    "day": "c_day",
    "merchant": "c_merchant",
    "currency": "c_currency",
    "country": "c_country",
    "channel": "c_channel",
    "status": "c_status",
}
_COLUMN_NAME = dict(zip(_COLS, COMPARED_COLUMNS, strict=True))


# ── results ──────────────────────────────────────────────────────────────────────────────────


@dataclass
class SideAggregate:
    """What one side holds for one segment (or a total)."""

    count: int = 0
    amount_minor: int = 0
    distinct: int = 0
    checksum: int = 0  # sum of row hashes mod 2**64

    def add(self, other: SideAggregate) -> None:
        self.count += other.count
        self.amount_minor += other.amount_minor
        self.distinct += other.distinct
        self.checksum = (self.checksum + other.checksum) % _MOD


@dataclass
class SegmentDiff:
    """A segment (UTC day × dimensions) where the two sides disagree."""

    key: dict[str, str]
    legacy: SideAggregate
    clickhouse: SideAggregate
    reasons: list[str]  # count, distinct, amount, checksum

    @property
    def count_delta(self) -> int:
        return self.clickhouse.count - self.legacy.count

    @property
    def amount_delta(self) -> int:
        return self.clickhouse.amount_minor - self.legacy.amount_minor

    @property
    def distinct_delta(self) -> int:
        return self.clickhouse.distinct - self.legacy.distinct


@dataclass
class RowDiff:
    """One row-level difference.

    kind: missing_in_clickhouse | missing_in_legacy | duplicated | value_mismatch. For a value
    mismatch `column` names the compared column and `legacy`/`clickhouse` hold both values; for a
    missing row the present side holds the whole row; for a duplicate `side` and `copies` say
    where and how often the id occurs.
    """

    kind: str
    transaction_id: str
    column: str | None = None
    legacy: Any = None
    clickhouse: Any = None
    side: str | None = None
    copies: int | None = None


@dataclass
class DailyDelta:
    day: str
    legacy_count: int
    clickhouse_count: int
    legacy_amount_minor: int
    clickhouse_amount_minor: int

    @property
    def count_delta(self) -> int:
        return self.clickhouse_count - self.legacy_count

    @property
    def amount_delta(self) -> int:
        return self.clickhouse_amount_minor - self.legacy_amount_minor


@dataclass
class ParityResult:
    since: datetime
    until: datetime
    by: tuple[str, ...]
    tolerance_abs: int
    tolerance_rel: float
    legacy_source: str
    clickhouse_source: str
    segments_compared: int
    legacy_total: SideAggregate
    clickhouse_total: SideAggregate
    segments: list[SegmentDiff]
    rows: list[RowDiff]
    rows_truncated: bool
    daily: list[DailyDelta]
    tolerated_segments: int = 0  # segments whose sums differ within tolerance
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.segments and not self.rows

    def counts_by_kind(self) -> dict[str, int]:
        return dict(Counter(r.kind for r in self.rows))


# ── inputs ───────────────────────────────────────────────────────────────────────────────────


def parse_by(text: str | Sequence[str]) -> tuple[str, ...]:
    """`day,merchant,currency` → a tuple of known dimensions, in the given order. Raises UsageError."""
    parts = [p.strip().lower() for p in (text.split(",") if isinstance(text, str) else text)]
    parts = [p for p in parts if p]
    unknown = [p for p in parts if p not in DIMENSIONS]
    if unknown:
        raise UsageError(
            f"unknown --by dimension {', '.join(map(repr, unknown))}", hint=f"choose from {', '.join(DIMENSIONS)}"
        )
    if not parts:
        raise UsageError("--by names no dimension", hint=f"e.g. --by {','.join(DEFAULT_BY)}")
    if len(set(parts)) != len(parts):
        raise UsageError(f"--by {','.join(parts)} names a dimension twice")
    return tuple(parts)


def currency_exponents(settings: Settings) -> dict[str, int]:
    """ISO 4217 minor-unit exponents from the FX reference file, or the built-in table."""
    path = settings.resolve(settings.pipeline.fx_rates)
    if not path.exists():
        return dict(FALLBACK_EXPONENTS)
    from pipelines.contracts.reference import load_fx_rates

    return {ccy: fx.exponent for ccy, fx in load_fx_rates(path).items()}


_Key = tuple[Any, ...]

# ── SQL rendering ────────────────────────────────────────────────────────────────────────────

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")


def _pg_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _pg_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _ch_ident(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def _ch_str(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class _Dialect:
    """Where PostgreSQL and ClickHouse SQL differ; the query shapes are shared."""

    name: str
    literal_str: Callable[[str], str]

    def hash60(self, text_expr: str) -> str:
        raise NotImplementedError

    def shift_right(self, expr: str, bits: int) -> str:
        raise NotImplementedError

    def distinct(self, expr: str) -> str:
        raise NotImplementedError

    def concat(self, parts: Sequence[str]) -> str:
        raise NotImplementedError

    def to_text(self, expr: str) -> str:
        raise NotImplementedError

    def checksum_sum(self, expr: str) -> str:
        raise NotImplementedError

    def zero_u64(self) -> str:
        raise NotImplementedError

    def literal(self, value: Any) -> str:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise TypeError(f"unexpected literal {value!r}")
        return str(value) if isinstance(value, int) else self.literal_str(value)

    def canonical(self) -> str:
        """The row's canonical string: compared columns, '|'-separated, integers in decimal."""
        parts: list[str] = []
        for col in _COLS:
            if parts:
                parts.append("'|'")
            parts.append(self.to_text(col) if col in ("c_epoch", "c_amount") else col)
        return self.concat(parts)


class _PgDialect(_Dialect):
    name = "postgresql"
    literal_str = staticmethod(_pg_str)

    def canonical(self) -> str:
        # One concat_ws call (bigints through their output function, as ::text) costs PostgreSQL
        # less than fifteen || operators; the string is the same.
        return "concat_ws('|', " + ", ".join(_COLS) + ")"

    def hash60(self, text_expr: str) -> str:
        return f"('x' || substr(md5({text_expr}), 1, 15))::bit(60)::bigint"

    def shift_right(self, expr: str, bits: int) -> str:
        return f"({expr} >> {bits})"

    def distinct(self, expr: str) -> str:
        return f"count(DISTINCT {expr})"

    def concat(self, parts: Sequence[str]) -> str:
        return "(" + " || ".join(parts) + ")"

    def to_text(self, expr: str) -> str:
        return f"{expr}::text"

    def checksum_sum(self, expr: str) -> str:
        # sum(bigint) is an exact numeric; reduce it the way ClickHouse's UInt64 sum wraps.
        return f"mod(sum({expr}), 18446744073709551616)"

    def zero_u64(self) -> str:
        return "0"


class _ChDialect(_Dialect):
    name = "clickhouse"
    literal_str = staticmethod(_ch_str)

    def hash60(self, text_expr: str) -> str:
        # The first 8 bytes of the digest, read big-endian (reverse + little-endian reinterpret),
        # minus the last 4 bits = the first 15 hex digits, exactly as PostgreSQL's bit(60) cast.
        return f"bitShiftRight(reinterpretAsUInt64(reverse(substring(MD5({text_expr}), 1, 8))), 4)"

    def shift_right(self, expr: str, bits: int) -> str:
        return f"bitShiftRight({expr}, {bits})"

    def distinct(self, expr: str) -> str:
        return f"uniqExact({expr})"

    def concat(self, parts: Sequence[str]) -> str:
        return "concat(" + ", ".join(parts) + ")"

    def to_text(self, expr: str) -> str:
        return f"toString({expr})"

    def checksum_sum(self, expr: str) -> str:
        return f"sum({expr})"  # UInt64: wraps modulo 2**64

    def zero_u64(self) -> str:
        return "toUInt64(0)"


def _case_map(column: str, mapping: dict[str, str]) -> str:
    whens = " ".join(f"WHEN {_pg_str(k)} THEN {_pg_str(v)}" for k, v in mapping.items())
    return f"CASE {column} {whens} ELSE {column} END"


# The UTC instant of a legacy row: its wall clock read in its zone (a DST gap or overlap resolves
# as PostgreSQL resolves it, which is what the legacy mapping documents).
_UTC_INSTANT = "(t.txn_ts_local AT TIME ZONE t.txn_tz)"


def legacy_source_sql(
    schema: str,
    exponents: dict[str, int],
    *,
    since: datetime | None,
    until: datetime | None,
    ids: Sequence[str] | None = None,
) -> str:
    """The legacy table as normalised columns (`c_id`, `c_epoch`, …); range pre-filter on local time."""
    scale_whens = " ".join(
        f"WHEN {_pg_str(ccy)} THEN {10**exp}" for ccy, exp in sorted(exponents.items()) if exp != DEFAULT_EXPONENT
    )
    scale = f"CASE btrim(t.ccy) {scale_whens} ELSE {10**DEFAULT_EXPONENT} END" if scale_whens else "100"
    # date_part (a double) is exact enough for whole seconds of microsecond timestamps and much
    # cheaper than extract (a numeric); numeric → bigint rounds, amounts are exact numerics.
    select = ",\n  ".join(
        [
            "btrim(t.txn_ref) AS c_id",
            f"floor(date_part('epoch', {_UTC_INSTANT}))::bigint AS c_epoch",
            "btrim(t.merchant_code) AS c_merchant",
            f"(t.amount * {scale})::bigint AS c_amount",
            "btrim(t.ccy) AS c_currency",
            "btrim(t.merchant_country) AS c_country",
            _case_map("btrim(t.channel_cd)", CHANNELS) + " AS c_channel",
            _case_map("btrim(t.status_cd)", STATUSES) + " AS c_status",
        ]
    )
    where = []
    if since is not None and until is not None:
        # Zones run from UTC-12 to UTC+14: a day of margin on the wall clock lets an index on
        # txn_ts_local prune; the exact cut is on the UTC instant.
        lo = (since - timedelta(days=1)).strftime("%Y-%m-%d %H:%M:%S")
        hi = (until + timedelta(days=1)).strftime("%Y-%m-%d %H:%M:%S")
        where.append(f"t.txn_ts_local >= '{lo}'::timestamp AND t.txn_ts_local < '{hi}'::timestamp")
        where.append(
            f"{_UTC_INSTANT} >= '{since:%Y-%m-%d %H:%M:%S}+00'::timestamptz"
            f" AND {_UTC_INSTANT} < '{until:%Y-%m-%d %H:%M:%S}+00'::timestamptz"
        )
    if ids is not None:
        where.append("t.txn_ref IN (" + ", ".join(_pg_str(i) for i in ids) + ")")
    sql = f"SELECT\n  {select}\nFROM {_pg_ident(schema)}.{_pg_ident(LEGACY_TABLE)} t"
    if where:
        sql += "\nWHERE " + " AND ".join(where)
    return sql


def _ch_trim(expr: str, *, has_trim_both: bool) -> str:
    if has_trim_both:
        return f"trimBoth({expr})"
    # trimBoth arrived after 18.16; there a regular expression trims the same spaces, run only on
    # the values that need it (LIKE is a cheap substring test, the regex halves the scan rate).
    return f"if({expr} LIKE ' %' OR {expr} LIKE '% ', replaceRegexpAll({expr}, '^ +| +$', ''), {expr})"


def clickhouse_source_sql(
    database: str,
    table: str,
    *,
    since: datetime | None,
    until: datetime | None,
    ids: Sequence[str] | None = None,
    has_trim_both: bool = True,
) -> str:
    """The ClickHouse table as the same normalised columns, for 18.16 and current servers alike."""

    def trim(col: str) -> str:
        return _ch_trim(f"toString({col})", has_trim_both=has_trim_both)

    select = ",\n  ".join(
        [
            f"{trim('transaction_id')} AS c_id",
            "toInt64(toUnixTimestamp(event_time)) AS c_epoch",
            f"{trim('merchant_id')} AS c_merchant",
            "toInt64(amount_minor) AS c_amount",
            f"{trim('currency')} AS c_currency",
            f"{trim('country')} AS c_country",
            f"{trim('channel')} AS c_channel",
            f"{trim('status')} AS c_status",
        ]
    )
    where = []
    if since is not None and until is not None:
        where.append(
            f"event_time >= toDateTime({int(since.timestamp())}) AND event_time < toDateTime({int(until.timestamp())})"
        )
    if ids is not None:
        where.append("transaction_id IN (" + ", ".join(_ch_str(i) for i in ids) + ")")
    sql = f"SELECT\n  {select}\nFROM {_ch_ident(database)}.{_ch_ident(table)}"
    if where:
        sql += "\nWHERE " + " AND ".join(where)
    return sql


def _day_expr(d: _Dialect) -> str:
    return "(c_epoch / 86400)" if isinstance(d, _PgDialect) else "intDiv(c_epoch, 86400)"


def _enriched(d: _Dialect, source: str, *, row_hash: bool, key_hash: bool) -> str:
    cols = [*_COLS, f"{_day_expr(d)} AS c_day"]
    if row_hash:
        cols.append(f"{d.hash60(d.canonical())} AS c_rh")
    if key_hash:
        cols.append(f"{d.hash60('c_id')} AS c_kh")
    return f"SELECT {', '.join(cols)} FROM ({source}) src"


def _in_list(d: _Dialect, exprs: Sequence[str], keys: Iterable[Sequence[Any]]) -> str:
    if len(exprs) == 1:
        return f"{exprs[0]} IN (" + ", ".join(d.literal(k[0]) for k in keys) + ")"
    tuples = ", ".join("(" + ", ".join(d.literal(v) for v in k) + ")" for k in keys)
    return f"({', '.join(exprs)}) IN ({tuples})"


SEGMENT_COLUMNS = ("n_rows", "amount", "n_ids", "checksum")


def aggregate_sql(d: _Dialect, source: str, by: Sequence[str], *, distinct: bool, checksum: bool) -> str:
    """Per segment: rows, amount sum, distinct ids, checksum (mod 2**64) — columns `SEGMENT_COLUMNS`."""
    dims = [_DIM_COLUMN[b] for b in by]
    aggs = [
        "count(*) AS n_rows",
        "sum(c_amount) AS amount",
        (d.distinct("c_id") if distinct else "count(*)") + " AS n_ids",
        (d.checksum_sum("c_rh") if checksum else d.zero_u64()) + " AS checksum",
    ]
    rows = _enriched(d, source, row_hash=checksum, key_hash=False)
    return f"SELECT {', '.join(dims)}, {', '.join(aggs)}\nFROM ({rows}) e\nGROUP BY {', '.join(dims)}"


def _prefix(d: _Dialect, bits: int) -> str:
    """The bucket of a row at `bits` bits of depth: the leading bits of its id hash."""
    return d.shift_right("c_kh", HASH_BITS - bits)


def _bucket_filter(d: _Dialect, by: Sequence[str], bits: int, targets: Sequence[tuple[_Key, int]]) -> str:
    dims = [_DIM_COLUMN[b] for b in by]
    if not bits:
        return _in_list(d, dims, [seg for seg, _ in targets])
    return _in_list(d, [*dims, _prefix(d, bits)], [(*seg, prefix) for seg, prefix in targets])


def bucket_sql(
    d: _Dialect, source: str, by: Sequence[str], bits: int, child_bits: int, parents: Sequence[tuple[_Key, int]]
) -> str:
    """Per (segment, child bucket) count, amount sum and checksum, inside the given parent buckets."""
    dims = [_DIM_COLUMN[b] for b in by]
    return (
        f"SELECT {', '.join(dims)}, {_prefix(d, child_bits)} AS c_bucket, count(*), sum(c_amount), "
        f"{d.checksum_sum('c_rh')}\n"
        f"FROM ({_enriched(d, source, row_hash=True, key_hash=True)}) e\n"
        f"WHERE {_bucket_filter(d, by, bits, parents)}\n"
        f"GROUP BY {', '.join(dims)}, c_bucket"
    )


def leaf_sql(d: _Dialect, source: str, by: Sequence[str], bits: int, leaves: Sequence[tuple[_Key, int]]) -> str:
    """`(segment…, id, row hash)` of every row in the given leaf buckets."""
    dims = [_DIM_COLUMN[b] for b in by]
    return (
        f"SELECT {', '.join(dims)}, c_id, c_rh\n"
        f"FROM ({_enriched(d, source, row_hash=True, key_hash=bits > 0)}) e\n"
        f"WHERE {_bucket_filter(d, by, bits, leaves)}"
    )


def rows_sql(d: _Dialect, source: str) -> str:
    return f"SELECT {', '.join(_COLS)} FROM ({source}) src"


# ── the two sides ────────────────────────────────────────────────────────────────────────────


class _Legacy:
    dialect = _PgDialect()

    def __init__(self, settings: Settings, exponents: dict[str, int], since: datetime, until: datetime) -> None:
        import psycopg

        self.dsn = settings.legacy.dsn
        self.schema = settings.legacy.schema_name
        self.exponents = exponents
        self.since, self.until = since, until
        self.source = f"{self.schema}.{LEGACY_TABLE}"
        try:
            self.conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=10)
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
        exists = self._one(f"SELECT to_regclass({_pg_str(_pg_ident(self.schema) + '.' + _pg_ident(LEGACY_TABLE))})")
        if exists is None:
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
                f" WHERE i.indrelid = {_pg_str(_pg_ident(self.schema) + '.' + _pg_ident(LEGACY_TABLE))}::regclass"
                " AND i.indisunique AND i.indnkeyatts = 1 AND i.indpred IS NULL AND a.attname = 'txn_ref')"
            )
        )

    def _one(self, sql: str) -> Any:
        rows = self.query(sql)
        return rows[0][0] if rows else None

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        import psycopg

        try:
            with self.conn.cursor() as cur:
                cur.execute(sql.encode())
                return list(cur.fetchall()) if cur.description else []
        except psycopg.Error as exc:
            raise WarehouseError(f"legacy warehouse query failed on {self.source}: {str(exc).strip()}") from None

    def query_arrow(self, sql: str, schema: pa.Schema) -> pa.Table:
        """A (possibly large) result through COPY … TO STDOUT as CSV, parsed by Arrow into `schema`."""
        import psycopg
        import pyarrow as pa
        import pyarrow.csv as pacsv

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

    def ranged(self, window: tuple[datetime, datetime] | None = None) -> str:
        since, until = window or (self.since, self.until)
        return legacy_source_sql(self.schema, self.exponents, since=since, until=until)

    def by_ids(self, ids: Sequence[str]) -> str:
        return legacy_source_sql(self.schema, self.exponents, since=None, until=None, ids=ids)

    def close(self) -> None:
        self.conn.close()


class _ClickHouse:
    dialect = _ChDialect()

    def __init__(self, store: Store, database: str, table: str, since: datetime, until: datetime) -> None:
        self.store = store
        self.database, self.table = database, table
        self.since, self.until = since, until
        self.source = f"{database}.{table}"
        found = self.query(
            f"SELECT count() FROM system.tables WHERE database = {_ch_str(database)} AND name = {_ch_str(table)}"
        )
        if not found or not int(found[0][0]):
            raise StoreError(
                f"ClickHouse table {self.source} does not exist",
                hint="create it with `nova provision --yes`, or fix pipeline.table / clickhouse.database",
            )
        self.has_trim_both = bool(int(self.query("SELECT count() FROM system.functions WHERE name = 'trimBoth'")[0][0]))

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        try:
            return [tuple(r) for r in self.store.query_rows(sql)]
        except NovaError:
            raise
        except Exception as exc:  # the store translates its vendors' errors; this is the backstop
            raise StoreError(f"ClickHouse query failed on {self.source}: {exc}") from None

    def query_arrow(self, sql: str, schema: pa.Schema) -> pa.Table:
        import pyarrow as pa

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

    def ranged(self, window: tuple[datetime, datetime] | None = None) -> str:
        since, until = window or (self.since, self.until)
        return clickhouse_source_sql(
            self.database, self.table, since=since, until=until, has_trim_both=self.has_trim_both
        )

    def by_ids(self, ids: Sequence[str]) -> str:
        return clickhouse_source_sql(
            self.database, self.table, since=None, until=None, ids=ids, has_trim_both=self.has_trim_both
        )


# ── the comparison ───────────────────────────────────────────────────────────────────────────


def _segment_schema(by: Sequence[str]) -> pa.Schema:
    import pyarrow as pa

    dims = [pa.field(_DIM_COLUMN[b], pa.int64() if b == "day" else pa.string()) for b in by]
    aggs = [pa.field(name, pa.uint64() if name == "checksum" else pa.int64()) for name in SEGMENT_COLUMNS]
    return pa.schema(dims + aggs)


def _both_arrow(
    legacy: _Legacy, legacy_sql: str, ch: _ClickHouse, ch_sql: str, schema: pa.Schema, timings: dict[str, float]
) -> tuple[Any, Any]:
    """`_both` for large results, as Arrow tables of `schema`; adds each side's time to `timings`."""

    def timed(side: str, fn: Callable[[str, pa.Schema], Any], sql: str) -> Any:
        started = time.perf_counter()
        try:
            return fn(sql, schema)
        finally:
            timings[side] = timings.get(side, 0.0) + time.perf_counter() - started

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(timed, "segments_legacy_s", legacy.query_arrow, legacy_sql)
        ch_table = timed("segments_clickhouse_s", ch.query_arrow, ch_sql)
        return pending.result(), ch_table


def _total(table: pa.Table) -> SideAggregate:
    import pyarrow.compute as pc

    def total(name: str) -> int:
        return int(pc.sum(table[name]).as_py() or 0)

    return SideAggregate(total("n_rows"), total("amount"), total("n_ids"))


def _daily(table: pa.Table) -> dict[int, SideAggregate]:
    grouped = table.group_by("c_day").aggregate([("n_rows", "sum"), ("amount", "sum")])
    return {
        int(d): SideAggregate(int(n), int(a or 0))
        for d, n, a in zip(
            grouped["c_day"].to_pylist(),
            grouped["n_rows_sum"].to_pylist(),
            grouped["amount_sum"].to_pylist(),
            strict=True,
        )
    }


def _differing_segments(
    by: Sequence[str], lt: pa.Table, ct: pa.Table
) -> tuple[int, list[tuple[_Key, SideAggregate, SideAggregate]]]:
    """(segments on either side, [(key, legacy, clickhouse)] where any aggregate differs), in key order."""
    import pyarrow.compute as pc

    keys = [_DIM_COLUMN[b] for b in by]
    left = lt.rename_columns([*keys, *(f"l_{c}" for c in SEGMENT_COLUMNS)])
    right = ct.rename_columns([*keys, *(f"r_{c}" for c in SEGMENT_COLUMNS)])
    joined = left.join(right, keys=keys, join_type="full outer")
    cols = {c: pc.fill_null(joined[c], 0) for c in joined.column_names if c not in keys}
    mask = None
    for c in SEGMENT_COLUMNS:
        ne = pc.not_equal(cols[f"l_{c}"], cols[f"r_{c}"])
        mask = ne if mask is None else pc.or_(mask, ne)
    if mask is None or joined.num_rows == 0:
        return joined.num_rows, []
    picked = {name: pc.filter(col, mask).to_pylist() for name, col in cols.items()}
    key_values = [pc.filter(joined[k], mask).to_pylist() for k in keys]
    out = []
    for i, key in enumerate(zip(*key_values, strict=True)):
        a = SideAggregate(*(int(picked[f"l_{c}"][i]) for c in SEGMENT_COLUMNS))
        b = SideAggregate(*(int(picked[f"r_{c}"][i]) for c in SEGMENT_COLUMNS))
        out.append((tuple(key), a, b))
    out.sort(key=lambda item: tuple(map(str, item[0])))
    return joined.num_rows, out


def _day_iso(day_number: int) -> str:
    return (date(1970, 1, 1) + timedelta(days=int(day_number))).isoformat()


def _iso(epoch: int) -> str:
    return datetime.fromtimestamp(int(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _key_dict(by: Sequence[str], key: _Key) -> dict[str, str]:
    return {dim: _day_iso(v) if dim == "day" else str(v) for dim, v in zip(by, key, strict=True)}


def _within(legacy: int, clickhouse: int, tolerance_abs: int, tolerance_rel: float) -> bool:
    allowed = max(float(tolerance_abs), tolerance_rel * max(abs(legacy), abs(clickhouse)))
    return abs(clickhouse - legacy) <= allowed


def _both(legacy: _Legacy, legacy_sql: str, ch: _ClickHouse, ch_sql: str) -> tuple[list[Any], list[Any]]:
    """Run one query on each side at the same time (PostgreSQL works in its own process)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(legacy.query, legacy_sql)
        ch_rows = ch.query(ch_sql)
        return pending.result(), ch_rows


def _row_dict(row: tuple[Any, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for col, value in zip(_COLS, row, strict=True):
        name = _COLUMN_NAME[col]
        if col == "c_epoch":
            out[name] = _iso(value)
        elif col == "c_amount":
            out[name] = int(value)
        else:
            out[name] = str(value)
    return out


def _classify(tid: str, legacy_rows: list[dict[str, Any]], ch_rows: list[dict[str, Any]]) -> list[RowDiff]:
    if not ch_rows and not legacy_rows:
        return []
    if not ch_rows:
        out = [RowDiff("missing_in_clickhouse", tid, legacy=legacy_rows[0])]
        if len(legacy_rows) > 1:
            out.append(RowDiff("duplicated", tid, side="legacy", copies=len(legacy_rows)))
        return out
    if not legacy_rows:
        out = [RowDiff("missing_in_legacy", tid, clickhouse=ch_rows[0])]
        if len(ch_rows) > 1:
            out.append(RowDiff("duplicated", tid, side="clickhouse", copies=len(ch_rows)))
        return out
    out = []
    if len(legacy_rows) > 1:
        out.append(RowDiff("duplicated", tid, side="legacy", copies=len(legacy_rows)))
    if len(ch_rows) > 1:
        out.append(RowDiff("duplicated", tid, side="clickhouse", copies=len(ch_rows)))
    reference = legacy_rows[0]
    seen: set[tuple[str, str]] = set()
    for version in ch_rows:
        for col in COMPARED_COLUMNS[1:]:
            if version[col] != reference[col] and (col, repr(version[col])) not in seen:
                seen.add((col, repr(version[col])))
                out.append(RowDiff("value_mismatch", tid, column=col, legacy=reference[col], clickhouse=version[col]))
    return out


def _segment_of(by: Sequence[str], row: dict[str, Any]) -> _Key:
    values = []
    for dim in by:
        if dim == "day":
            values.append(
                int(datetime.strptime(row["event_time"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()) // 86400
            )
        else:
            values.append(row[{"merchant": "merchant_id"}.get(dim, dim)])
    return tuple(values)


def run_parity_check(
    *,
    settings: Settings,
    since: datetime,
    until: datetime,
    by: Sequence[str] = DEFAULT_BY,
    tolerance_abs: int = 0,
    tolerance_rel: float = 0.0,
    store: Store | None = None,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> ParityResult:
    """Compare legacy and ClickHouse over [since, until) UTC; see the module docstring.

    Returns the result whether or not the sides agree (`result.ok`); raises UsageError for
    bad arguments, WarehouseError / StoreError when a database cannot be reached or queried.
    """
    since = since.replace(tzinfo=UTC) if since.tzinfo is None else since.astimezone(UTC)
    until = until.replace(tzinfo=UTC) if until.tzinfo is None else until.astimezone(UTC)
    if since >= until:
        raise UsageError(
            f"--since {since:%Y-%m-%d %H:%M:%S} is not before --until {until:%Y-%m-%d %H:%M:%S}",
            hint="the range is [since, until), e.g. --since 2024-03-01 --until 2024-03-02",
        )
    by = parse_by(by)
    if tolerance_abs < 0 or tolerance_rel < 0:
        raise UsageError("tolerances cannot be negative")
    if max_rows < 1:
        raise UsageError("--max-rows must be at least 1")
    exponents = currency_exponents(settings)
    own_store = store is None
    if store is None:
        from pipelines.clickhouse import open_store

        store = open_store(settings)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    legacy: _Legacy | None = None
    try:
        legacy = _Legacy(settings, exponents, since, until)
        ch = _ClickHouse(store, settings.clickhouse.database, settings.pipeline.table, since, until)
        timings["connect_s"] = time.perf_counter() - started
        result = _compare(
            legacy,
            ch,
            since=since,
            until=until,
            by=by,
            tolerance_abs=tolerance_abs,
            tolerance_rel=tolerance_rel,
            max_rows=max_rows,
            timings=timings,
        )
        result.clickhouse_source = f"{ch.source} ({store.backend})"
    finally:
        if legacy is not None:
            legacy.close()
        if own_store:
            store.close()
    timings["total_s"] = time.perf_counter() - started
    return result


def _compare(
    legacy: _Legacy,
    ch: _ClickHouse,
    *,
    since: datetime,
    until: datetime,
    by: tuple[str, ...],
    tolerance_abs: int,
    tolerance_rel: float,
    max_rows: int,
    timings: dict[str, float],
) -> ParityResult:
    lp, cp = legacy.dialect, ch.dialect
    n = len(by)

    # 1. segments: aggregated in the databases, joined and compared in Arrow (there may be
    # hundreds of thousands: day × 2000 merchants × 7 currencies)
    t0 = time.perf_counter()
    schema = _segment_schema(by)
    lt, ct = _both_arrow(
        legacy,
        aggregate_sql(lp, legacy.ranged(), by, distinct=not legacy.ids_unique, checksum=True),
        ch,
        aggregate_sql(cp, ch.ranged(), by, distinct=True, checksum=True),
        schema,
        timings,
    )
    if "day" in by:
        daily_l, daily_c = _daily(lt), _daily(ct)
    else:
        day_schema = _segment_schema(("day",))
        dl, dc = _both_arrow(
            legacy,
            aggregate_sql(lp, legacy.ranged(), ("day",), distinct=False, checksum=False),
            ch,
            aggregate_sql(cp, ch.ranged(), ("day",), distinct=False, checksum=False),
            day_schema,
            timings,
        )
        daily_l, daily_c = _daily(dl), _daily(dc)
    legacy_total, ch_total = _total(lt), _total(ct)
    compared, changed = _differing_segments(by, lt, ct)
    timings["segments_s"] = time.perf_counter() - t0

    seg_pairs: dict[_Key, tuple[SideAggregate, SideAggregate]] = {}
    differing: dict[_Key, list[str]] = {}
    amount_tolerated: set[_Key] = set()  # sums differ, but within tolerance
    for key, a, b in changed:
        seg_pairs[key] = (a, b)
        reasons = []
        if a.count != b.count:
            reasons.append("count")
        if a.distinct != b.distinct:
            reasons.append("distinct")
        if a.amount_minor != b.amount_minor:
            if _within(a.amount_minor, b.amount_minor, tolerance_abs, tolerance_rel):
                amount_tolerated.add(key)
            else:
                reasons.append("amount")
        if a.checksum != b.checksum and not reasons:
            reasons.append("checksum")
        if reasons:
            differing[key] = reasons

    # 2. bisection down to leaf buckets: one query per side per round covers every segment; each
    # round cuts deep enough (2^step buckets) that the largest parent falls to about LEAF_ROWS / 2.
    t0 = time.perf_counter()
    window = _window(by, differing, since, until)
    leaves_by_bits: dict[int, list[tuple[_Key, int]]] = defaultdict(list)
    pending = [(key, 0) for key in differing]
    sizes = {(key, 0): max(seg_pairs[key][0].count, seg_pairs[key][1].count) for key in differing}
    bits = rounds = 0
    while pending:
        descend = []
        for item in pending:
            if sizes[item] <= LEAF_ROWS or bits >= HASH_BITS:
                leaves_by_bits[bits].append(item)
            else:
                descend.append(item)
        if not descend:
            break
        largest = max(sizes[item] for item in descend)
        step = min(max(FANOUT_BITS, math.ceil(math.log2(largest / LEAF_ROWS)) + 1), _MAX_STEP_BITS, HASH_BITS - bits)
        child_bits = bits + step
        next_pending: list[tuple[_Key, int]] = []
        for chunk in _chunks(descend, _LEAF_CHUNK):
            lb, cb = _both(
                legacy,
                bucket_sql(lp, legacy.ranged(window), by, bits, child_bits, chunk),
                ch,
                bucket_sql(cp, ch.ranged(window), by, bits, child_bits, chunk),
            )
            lbk, cbk = _buckets(lb, n), _buckets(cb, n)
            for bkey in sorted(set(lbk) | set(cbk), key=lambda k: tuple(map(str, k))):
                x, y = lbk.get(bkey, (0, 0, 0)), cbk.get(bkey, (0, 0, 0))
                if x != y:
                    next_pending.append(bkey)
                    sizes[bkey] = max(x[0], y[0])
        bits, rounds = child_bits, rounds + 1
        # Enough differing buckets to fill the row budget: stop looking for more.
        pending = next_pending[: max(max_rows, 1)]
    timings["bisect_s"] = time.perf_counter() - t0
    timings["bisect_rounds"] = float(rounds)

    # 3. rows: leaf contents, then the suspicious ids by id from both sides
    t0 = time.perf_counter()
    candidates: dict[str, None] = {}
    truncated = False
    leaf_chunks = [(b, chunk) for b in sorted(leaves_by_bits) for chunk in _chunks(leaves_by_bits[b], _LEAF_CHUNK)]
    for leaf_bits, chunk in leaf_chunks:
        if len(candidates) >= max_rows:
            truncated = True
            break
        ll, cl = _both(
            legacy,
            leaf_sql(lp, legacy.ranged(window), by, leaf_bits, chunk),
            ch,
            leaf_sql(cp, ch.ranged(window), by, leaf_bits, chunk),
        )
        lc = Counter((str(r[n]), int(r[n + 1])) for r in ll)
        cc = Counter((str(r[n]), int(r[n + 1])) for r in cl)
        for tid, _ in sorted((lc - cc) + (cc - lc)):
            candidates.setdefault(tid)
    ids = list(candidates)
    if len(ids) > max_rows:
        ids, truncated = ids[:max_rows], True
    rows: list[RowDiff] = []
    found_in: dict[_Key, bool] = {}
    tolerant = tolerance_abs > 0 or tolerance_rel > 0
    for chunk in _chunks(ids, _ID_CHUNK):
        lr, cr = _both(legacy, rows_sql(lp, legacy.by_ids(chunk)), ch, rows_sql(cp, ch.by_ids(chunk)))
        l_by: dict[str, list[dict[str, Any]]] = defaultdict(list)
        c_by: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in lr:
            l_by[str(r[0])].append(_row_dict(r))
        for r in cr:
            c_by[str(r[0])].append(_row_dict(r))
        for tid in chunk:
            segs = {_segment_of(by, r) for r in (*l_by[tid], *c_by[tid])}
            for diff in _classify(tid, l_by[tid], c_by[tid]):
                # With a tolerance, an amount difference inside segments whose sums agree within
                # it is tolerated (the checksum saw it; the tolerance forgives it).
                if (
                    tolerant
                    and diff.kind == "value_mismatch"
                    and diff.column == "amount_minor"
                    and all(s in amount_tolerated or "amount" not in differing.get(s, ()) for s in segs)
                ):
                    continue
                rows.append(diff)
                for s in segs:
                    found_in[s] = True
    timings["rows_s"] = time.perf_counter() - t0

    # A checksum-only segment whose rows all turned out tolerated is equal after all.
    segments = [
        SegmentDiff(_key_dict(by, key), *seg_pairs[key], reasons)
        for key, reasons in differing.items()
        if reasons != ["checksum"] or found_in.get(key) or truncated
    ]
    kept = {tuple(s.key.values()) for s in segments}
    tolerated = sum(1 for key in amount_tolerated if tuple(_key_dict(by, key).values()) not in kept)
    days = sorted(set(daily_l) | set(daily_c))
    daily = [
        DailyDelta(
            _day_iso(d),
            daily_l.get(d, SideAggregate()).count,
            daily_c.get(d, SideAggregate()).count,
            daily_l.get(d, SideAggregate()).amount_minor,
            daily_c.get(d, SideAggregate()).amount_minor,
        )
        for d in days
    ]
    rows.sort(key=lambda r: (r.kind, r.transaction_id, r.column or ""))
    return ParityResult(
        since=since,
        until=until,
        by=by,
        tolerance_abs=tolerance_abs,
        tolerance_rel=tolerance_rel,
        legacy_source=legacy.source,
        clickhouse_source=ch.source,
        segments_compared=compared,
        legacy_total=legacy_total,
        clickhouse_total=ch_total,
        segments=segments,
        rows=rows,
        rows_truncated=truncated,
        daily=daily,
        tolerated_segments=tolerated,
        timings=timings,
    )


def _window(
    by: Sequence[str], differing: dict[_Key, list[str]], since: datetime, until: datetime
) -> tuple[datetime, datetime]:
    """The part of [since, until) holding the differing segments (their days, when day is a dimension)."""
    if "day" not in by or not differing:
        return since, until
    i = list(by).index("day")
    days = [int(key[i]) for key in differing]
    lo = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(days=min(days))
    hi = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(days=max(days) + 1)
    return max(since, lo), min(until, hi)


def _buckets(rows: Iterable[tuple[Any, ...]], ndims: int) -> dict[tuple[_Key, int], tuple[int, int, int]]:
    out = {}
    for r in rows:
        key = tuple(int(v) if isinstance(v, int) else str(v) for v in r[:ndims])
        out[(key, int(r[ndims]))] = (int(r[ndims + 1]), int(r[ndims + 2] or 0), int(r[ndims + 3] or 0) % _MOD)
    return out


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def raise_if_mismatch(result: ParityResult) -> None:
    """ParityMismatch (exit 1) naming what differs, for callers that print first."""
    if result.ok:
        return
    kinds = result.counts_by_kind()
    detail = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in sorted(kinds.items())) or "no row-level detail"
    more = " (row search stopped at --max-rows)" if result.rows_truncated else ""
    raise ParityMismatch(
        f"legacy {result.legacy_source} and ClickHouse {result.clickhouse_source} differ in "
        f"{len(result.segments)} of {result.segments_compared} segment(s) between {result.since:%Y-%m-%d %H:%M} "
        f"and {result.until:%Y-%m-%d %H:%M} UTC: {detail}{more}"
    )


# ── formatting (pure: returns dicts and renderables, prints nothing) ─────────────────────────


def format_json(result: ParityResult) -> dict[str, Any]:
    """The whole result as plain JSON-able data."""

    def side(a: SideAggregate) -> dict[str, int]:
        return {"count": a.count, "amount_minor": a.amount_minor, "distinct": a.distinct}

    return {
        "ok": result.ok,
        "since": result.since.isoformat(),
        "until": result.until.isoformat(),
        "by": list(result.by),
        "tolerance": {"abs": result.tolerance_abs, "rel": result.tolerance_rel},
        "legacy": result.legacy_source,
        "clickhouse": result.clickhouse_source,
        "segments_compared": result.segments_compared,
        "segments_differing": len(result.segments),
        "segments_tolerated": result.tolerated_segments,
        "totals": {
            "legacy": side(result.legacy_total),
            "clickhouse": side(result.clickhouse_total),
            "count_delta": result.clickhouse_total.count - result.legacy_total.count,
            "amount_delta": result.clickhouse_total.amount_minor - result.legacy_total.amount_minor,
        },
        "segments": [
            {
                "key": s.key,
                "reasons": s.reasons,
                "legacy": side(s.legacy),
                "clickhouse": side(s.clickhouse),
                "count_delta": s.count_delta,
                "amount_delta": s.amount_delta,
                "distinct_delta": s.distinct_delta,
            }
            for s in result.segments
        ],
        "rows": [{k: v for k, v in asdict(r).items() if v is not None} for r in result.rows],
        "rows_by_kind": result.counts_by_kind(),
        "rows_truncated": result.rows_truncated,
        "daily": [{**asdict(d), "count_delta": d.count_delta, "amount_delta": d.amount_delta} for d in result.daily],
        "timings": {k: round(v, 3) for k, v in result.timings.items()},
    }


def _signed(v: int) -> str:
    return f"{v:+,}" if v else "0"


def format_summary(result: ParityResult) -> RenderableType:
    """Per differing segment: both sides' count / sum / distinct and the deltas; a totals line."""
    from rich.table import Table

    title = f"parity {result.since:%Y-%m-%d %H:%M} → {result.until:%Y-%m-%d %H:%M} UTC by {','.join(result.by)}: " + (
        "[green]in parity[/]"
        if result.ok
        else f"[red]{len(result.segments)} of {result.segments_compared} segment(s) differ[/]"
    )
    table = Table(title=title, title_justify="left", show_footer=True)
    for i, dim in enumerate(result.by):
        table.add_column(dim, footer="total" if i == 0 else "")
    lt, ct = result.legacy_total, result.clickhouse_total
    numeric = [
        ("legacy rows", f"{lt.count:,}"),
        ("ch rows", f"{ct.count:,}"),
        ("Δ rows", _signed(ct.count - lt.count)),
        ("legacy amount", f"{lt.amount_minor:,}"),
        ("ch amount", f"{ct.amount_minor:,}"),
        ("Δ amount", _signed(ct.amount_minor - lt.amount_minor)),
        ("legacy ids", f"{lt.distinct:,}"),
        ("ch ids", f"{ct.distinct:,}"),
        ("Δ ids", _signed(ct.distinct - lt.distinct)),
    ]
    for name, footer in numeric:
        table.add_column(name, footer=footer, justify="right")
    table.add_column("why", footer="")
    for s in result.segments:
        table.add_row(
            *s.key.values(),
            f"{s.legacy.count:,}",
            f"{s.clickhouse.count:,}",
            _signed(s.count_delta),
            f"{s.legacy.amount_minor:,}",
            f"{s.clickhouse.amount_minor:,}",
            _signed(s.amount_delta),
            f"{s.legacy.distinct:,}",
            f"{s.clickhouse.distinct:,}",
            _signed(s.distinct_delta),
            ",".join(s.reasons),
        )
    return table


def _cell(value: Any) -> str:
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in value.items() if k != "transaction_id")
    return "" if value is None else str(value)


def format_rows(result: ParityResult, *, limit: int = 50) -> RenderableType:
    """The row-level differences, at most `limit`, with a line counting the rest."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"row-level differences ({len(result.rows)})", title_justify="left")
    for name in ("kind", "transaction_id", "column", "legacy", "clickhouse"):
        table.add_column(name, overflow="fold")
    for r in result.rows[:limit]:
        column = r.column or (f"{r.side} ×{r.copies}" if r.kind == "duplicated" else "")
        table.add_row(r.kind, r.transaction_id, column, _cell(r.legacy), _cell(r.clickhouse))
    notes = []
    if len(result.rows) > limit:
        notes.append(Text(f"… and {len(result.rows) - limit} more row-level difference(s) (see --json or --report)"))
    if result.rows_truncated:
        notes.append(Text("row-level search stopped at --max-rows; raise it to see every row", style="yellow"))
    return Group(table, *notes)


def format_timings(result: ParityResult) -> str:
    t = result.timings
    return (
        f"{result.segments_compared} segment(s), {result.legacy_total.count:,} legacy / "
        f"{result.clickhouse_total.count:,} ClickHouse rows in {t.get('total_s', 0):.2f} s "
        f"(segments {t.get('segments_s', 0):.2f} s, bisection {t.get('bisect_s', 0):.2f} s, "
        f"rows {t.get('rows_s', 0):.2f} s)"
    )
