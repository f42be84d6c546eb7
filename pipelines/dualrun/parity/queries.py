"""The SQL both sides run, rendered for either dialect: sources, segments, buckets, leaves, rows.

Normalisation, so that equal data compares equal:

- time: legacy stores the merchant's wall clock and its IANA zone; the UTC instant is
  `txn_ts_local AT TIME ZONE txn_tz`, compared as whole epoch seconds (floor), days are
  `epoch_seconds div 86400` on both sides (= `toDate` in UTC without trusting any server zone);
- amounts: `numeric(14,2)` major units × 10^exponent(currency) → exact `bigint` minor units;
- strings: trimmed (`char(n)` padding), codes mapped (`P` → `POS`, `CAPT` → `CAPTURED`, …) with
  the maps of the legacy mapping (`inputs.Normalisation`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TypeVar

from pipelines.clickhouse.sql import literal as ch_literal
from pipelines.clickhouse.sql import quote_identifier
from pipelines.dualrun.parity.columns import (
    DIMENSION_COLUMN,
    HASH_BITS,
    LEGACY_TABLE,
    NORMALISED_COLUMNS,
    Bucket,
)
from pipelines.dualrun.parity.dialects import Dialect, pg_identifier, pg_literal
from pipelines.dualrun.parity.inputs import DEFAULT_EXPONENT, Normalisation

ID_CHUNK = 2000  # ids per fetch-by-id query
LEAF_CHUNK = 200  # buckets per bucket or leaf query

_T = TypeVar("_T")

# The UTC instant of a legacy row: its wall clock read in its zone (a DST gap or overlap resolves
# as PostgreSQL resolves it, which is what the legacy mapping documents).
_UTC_INSTANT = "(t.txn_ts_local AT TIME ZONE t.txn_tz)"


def chunks(items: Sequence[_T], size: int) -> Iterator[Sequence[_T]]:
    """`items` in slices of `size`, so that no single IN list grows beyond what a server parses quickly."""
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _case_map(column: str, mapping: Mapping[str, str]) -> str:
    if not mapping:
        return column
    whens = " ".join(f"WHEN {pg_literal(k)} THEN {pg_literal(v)}" for k, v in mapping.items())
    return f"CASE {column} {whens} ELSE {column} END"


def legacy_source_sql(
    schema: str,
    normalisation: Normalisation,
    *,
    since: datetime | None,
    until: datetime | None,
    ids: Sequence[str] | None = None,
) -> str:
    """The legacy table as normalised columns (`c_id`, `c_epoch`, …); range pre-filter on local time."""
    scale_whens = " ".join(
        f"WHEN {pg_literal(ccy)} THEN {10**exp}"
        for ccy, exp in sorted(normalisation.exponents.items())
        if exp != DEFAULT_EXPONENT
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
            _case_map("btrim(t.channel_cd)", normalisation.channels) + " AS c_channel",
            _case_map("btrim(t.status_cd)", normalisation.statuses) + " AS c_status",
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
        where.append("t.txn_ref IN (" + ", ".join(pg_literal(i) for i in ids) + ")")
    sql = f"SELECT\n  {select}\nFROM {pg_identifier(schema, LEGACY_TABLE)} t"
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
        where.append("transaction_id IN (" + ", ".join(ch_literal(i) for i in ids) + ")")
    sql = f"SELECT\n  {select}\nFROM {quote_identifier(database)}.{quote_identifier(table)}"
    if where:
        sql += "\nWHERE " + " AND ".join(where)
    return sql


def _enriched(d: Dialect, source: str, *, row_hash: bool, key_hash: bool) -> str:
    cols = [*NORMALISED_COLUMNS, f"{d.epoch_day('c_epoch')} AS c_day"]
    if row_hash:
        cols.append(f"{d.hash60(d.canonical())} AS c_rh")
    if key_hash:
        cols.append(f"{d.hash60('c_id')} AS c_kh")
    return f"SELECT {', '.join(cols)} FROM ({source}) src"


def _in_list(d: Dialect, exprs: Sequence[str], keys: Iterable[Sequence[int | str]]) -> str:
    if len(exprs) == 1:
        return f"{exprs[0]} IN (" + ", ".join(d.literal(k[0]) for k in keys) + ")"
    tuples = ", ".join("(" + ", ".join(d.literal(v) for v in k) + ")" for k in keys)
    return f"({', '.join(exprs)}) IN ({tuples})"


def aggregate_sql(d: Dialect, source: str, by: Sequence[str], *, distinct: bool, checksum: bool) -> str:
    """Per segment: rows, amount sum, distinct ids, checksum (mod 2**64) — columns `SEGMENT_COLUMNS`."""
    dims = [DIMENSION_COLUMN[b] for b in by]
    aggs = [
        "count(*) AS n_rows",
        "sum(c_amount) AS amount",
        (d.distinct("c_id") if distinct else "count(*)") + " AS n_ids",
        (d.checksum_sum("c_rh") if checksum else d.zero_u64()) + " AS checksum",
    ]
    rows = _enriched(d, source, row_hash=checksum, key_hash=False)
    return f"SELECT {', '.join(dims)}, {', '.join(aggs)}\nFROM ({rows}) e\nGROUP BY {', '.join(dims)}"


def _prefix(d: Dialect, bits: int) -> str:
    """The bucket of a row at `bits` bits of depth: the leading bits of its id hash."""
    return d.shift_right("c_kh", HASH_BITS - bits)


def _bucket_filter(d: Dialect, by: Sequence[str], bits: int, targets: Sequence[Bucket]) -> str:
    dims = [DIMENSION_COLUMN[b] for b in by]
    if not bits:
        return _in_list(d, dims, [seg for seg, _ in targets])
    return _in_list(d, [*dims, _prefix(d, bits)], [(*seg, prefix) for seg, prefix in targets])


def bucket_sql(
    d: Dialect, source: str, by: Sequence[str], bits: int, child_bits: int, parents: Sequence[Bucket]
) -> str:
    """Per (segment, child bucket) count, amount sum and checksum, inside the given parent buckets."""
    dims = [DIMENSION_COLUMN[b] for b in by]
    return (
        f"SELECT {', '.join(dims)}, {_prefix(d, child_bits)} AS c_bucket, count(*), sum(c_amount), "
        f"{d.checksum_sum('c_rh')}\n"
        f"FROM ({_enriched(d, source, row_hash=True, key_hash=True)}) e\n"
        f"WHERE {_bucket_filter(d, by, bits, parents)}\n"
        f"GROUP BY {', '.join(dims)}, c_bucket"
    )


def leaf_sql(d: Dialect, source: str, by: Sequence[str], bits: int, leaves: Sequence[Bucket]) -> str:
    """`(segment…, id, row hash)` of every row in the given leaf buckets."""
    dims = [DIMENSION_COLUMN[b] for b in by]
    return (
        f"SELECT {', '.join(dims)}, c_id, c_rh\n"
        f"FROM ({_enriched(d, source, row_hash=True, key_hash=bits > 0)}) e\n"
        f"WHERE {_bucket_filter(d, by, bits, leaves)}"
    )


def rows_sql(source: str) -> str:
    """The normalised columns of a source, for rows fetched by id."""
    return f"SELECT {', '.join(NORMALISED_COLUMNS)} FROM ({source}) src"
