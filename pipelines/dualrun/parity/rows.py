"""Stage 3, rows: leaf contents, then the suspicious ids fetched by id from both sides and classified.

For the differing leaf buckets both sides return `(id, row hash)`; the ids whose hashes differ
are fetched from both sides *by id, over the whole table* (a row whose time zone slipped lands
outside the range on one side and is still found) and classified: missing in ClickHouse, missing
in legacy, duplicated, or a value mismatch per column.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pipelines.dualrun.parity.bisect import Leaves
from pipelines.dualrun.parity.columns import COMPARED_COLUMNS, CONTRACT_COLUMN, NORMALISED_COLUMNS, SegmentKey
from pipelines.dualrun.parity.queries import ID_CHUNK, LEAF_CHUNK, chunks, leaf_sql, rows_sql
from pipelines.dualrun.parity.results import RowDiff, RowValues
from pipelines.dualrun.parity.sides import ClickHouseSide, DbRow, LegacySide, Window, run_both

_EPOCH = NORMALISED_COLUMNS.index("c_epoch")
_DIMENSION_INDEX = {
    "merchant": NORMALISED_COLUMNS.index("c_merchant"),
    "currency": NORMALISED_COLUMNS.index("c_currency"),
    "country": NORMALISED_COLUMNS.index("c_country"),
    "channel": NORMALISED_COLUMNS.index("c_channel"),
    "status": NORMALISED_COLUMNS.index("c_status"),
}


@dataclass
class Candidates:
    """Ids whose row hashes differ between the sides, and whether the search stopped at the budget."""

    ids: list[str]
    truncated: bool


@dataclass
class RowFindings:
    """The row differences kept, and the segments they were found in."""

    rows: list[RowDiff] = field(default_factory=list)
    segments: set[SegmentKey] = field(default_factory=set)


def leaf_candidates(
    legacy: LegacySide, ch: ClickHouseSide, by: tuple[str, ...], leaves: Leaves, window: Window, *, max_rows: int
) -> Candidates:
    """The ids in the leaf buckets whose (id, row hash) pairs are not the same on both sides."""
    n = len(by)
    found: dict[str, None] = {}  # insertion-ordered set
    truncated = False
    work = [(bits, chunk) for bits in sorted(leaves.by_bits) for chunk in chunks(leaves.by_bits[bits], LEAF_CHUNK)]
    for leaf_bits, chunk in work:
        if len(found) >= max_rows:
            truncated = True
            break
        ll, cl = run_both(
            legacy,
            leaf_sql(legacy.dialect, legacy.ranged(window), by, leaf_bits, chunk),
            ch,
            leaf_sql(ch.dialect, ch.ranged(window), by, leaf_bits, chunk),
        )
        lc = Counter((str(r[n]), int(r[n + 1])) for r in ll)
        cc = Counter((str(r[n]), int(r[n + 1])) for r in cl)
        for tid, _ in sorted((lc - cc) + (cc - lc)):
            found.setdefault(tid)
    ids = list(found)
    if len(ids) > max_rows:
        ids, truncated = ids[:max_rows], True
    return Candidates(ids, truncated)


def compare_rows(
    legacy: LegacySide,
    ch: ClickHouseSide,
    by: tuple[str, ...],
    ids: Sequence[str],
    *,
    forgive: Callable[[RowDiff, set[SegmentKey]], bool],
) -> RowFindings:
    """Fetch `ids` from both sides and classify them; `forgive(diff, its segments)` drops a tolerated one."""
    findings = RowFindings()
    for chunk in chunks(ids, ID_CHUNK):
        lr, cr = run_both(legacy, rows_sql(legacy.by_ids(chunk)), ch, rows_sql(ch.by_ids(chunk)))
        l_by: dict[str, list[DbRow]] = defaultdict(list)
        c_by: dict[str, list[DbRow]] = defaultdict(list)
        for r in lr:
            l_by[str(r[0])].append(r)
        for r in cr:
            c_by[str(r[0])].append(r)
        for tid in chunk:
            segs = {segment_of(by, r) for r in (*l_by[tid], *c_by[tid])}
            for diff in classify(tid, [row_values(r) for r in l_by[tid]], [row_values(r) for r in c_by[tid]]):
                if forgive(diff, segs):
                    continue
                findings.rows.append(diff)
                findings.segments |= segs
    findings.rows.sort(key=lambda r: (r.kind, r.transaction_id, r.column or ""))
    return findings


def row_values(row: DbRow) -> RowValues:
    """A normalised row by contract column name, the time as ISO UTC text."""
    out: RowValues = {}
    for col, value in zip(NORMALISED_COLUMNS, row, strict=True):
        name = CONTRACT_COLUMN[col]
        if col == "c_epoch":
            out[name] = datetime.fromtimestamp(int(value), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        elif col == "c_amount":
            out[name] = int(value)
        else:
            out[name] = str(value)
    return out


def segment_of(by: Sequence[str], row: DbRow) -> SegmentKey:
    """The segment a normalised row belongs to, keyed as the segment queries key it."""
    return tuple(int(row[_EPOCH]) // 86400 if dim == "day" else str(row[_DIMENSION_INDEX[dim]]) for dim in by)


def classify(tid: str, legacy_rows: list[RowValues], ch_rows: list[RowValues]) -> list[RowDiff]:
    """What differs for one id: a side missing it, copies on a side, or values per column."""
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
