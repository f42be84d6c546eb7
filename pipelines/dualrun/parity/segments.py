"""Stage 1, segments: per UTC day × the `by` dimensions, both sides' aggregates, joined in Arrow.

Both sides count rows, sum amounts in minor units, count distinct ids and add up a 60-bit
checksum of every row's canonical string — in the databases. A segment differs when a count or
a distinct count differs, when the amount sums differ by more than the tolerance, or when only
the checksum differs (a value changed in a column that is neither a dimension nor summed, e.g.
the time within a day). There may be hundreds of thousands of segments (day × 2000 merchants ×
7 currencies), hence Arrow rather than Python dicts for the join.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.dualrun.parity.columns import DIMENSION_COLUMN, SEGMENT_COLUMNS, SegmentKey
from pipelines.dualrun.parity.queries import aggregate_sql
from pipelines.dualrun.parity.results import DailyDelta, SideAggregate
from pipelines.dualrun.parity.sides import ClickHouseSide, LegacySide, run_both_arrow

AggregatePair = tuple[SideAggregate, SideAggregate]
"""(legacy, clickhouse) aggregates of one segment."""


@dataclass
class SegmentScan:
    """What the segment queries returned: totals, per-day sums and the segments whose aggregates differ."""

    compared: int
    legacy_total: SideAggregate
    clickhouse_total: SideAggregate
    daily: list[DailyDelta]
    changed: dict[SegmentKey, AggregatePair]  # any aggregate differs, checksum included; in key order


@dataclass
class SegmentVerdicts:
    """Why each changed segment differs, after the amount tolerance."""

    pairs: dict[SegmentKey, AggregatePair]
    differing: dict[SegmentKey, list[str]] = field(default_factory=dict)  # key → count, distinct, amount, checksum
    amount_tolerated: set[SegmentKey] = field(default_factory=set)  # sums differ, but within tolerance

    def largest(self, key: SegmentKey) -> int:
        """The larger side's row count: what bisection has to cut down."""
        a, b = self.pairs[key]
        return max(a.count, b.count)


def day_iso(day_number: int) -> str:
    return (date(1970, 1, 1) + timedelta(days=int(day_number))).isoformat()


def key_dict(by: Sequence[str], key: SegmentKey) -> dict[str, str]:
    """A segment key as the report shows it: dimension → value, days as ISO dates."""
    return {dim: day_iso(int(v)) if dim == "day" else str(v) for dim, v in zip(by, key, strict=True)}


def scan_segments(
    legacy: LegacySide, ch: ClickHouseSide, by: tuple[str, ...], timings: dict[str, float]
) -> SegmentScan:
    """Aggregate both sides by segment (and by day, when day is not a dimension) and compare."""
    lt, ct = run_both_arrow(
        legacy,
        aggregate_sql(legacy.dialect, legacy.ranged(), by, distinct=not legacy.ids_unique, checksum=True),
        ch,
        aggregate_sql(ch.dialect, ch.ranged(), by, distinct=True, checksum=True),
        _segment_schema(by),
        timings,
    )
    if "day" in by:
        daily_l, daily_c = _daily(lt), _daily(ct)
    else:
        dl, dc = run_both_arrow(
            legacy,
            aggregate_sql(legacy.dialect, legacy.ranged(), ("day",), distinct=False, checksum=False),
            ch,
            aggregate_sql(ch.dialect, ch.ranged(), ("day",), distinct=False, checksum=False),
            _segment_schema(("day",)),
            timings,
        )
        daily_l, daily_c = _daily(dl), _daily(dc)
    compared, changed = _differing_segments(by, lt, ct)
    return SegmentScan(compared, _total(lt), _total(ct), _daily_deltas(daily_l, daily_c), changed)


def judge_segments(
    changed: dict[SegmentKey, AggregatePair], *, tolerance_abs: int, tolerance_rel: float
) -> SegmentVerdicts:
    """The reasons each changed segment differs; a checksum counts only when nothing else does."""
    verdicts = SegmentVerdicts(pairs=changed)
    for key, (a, b) in changed.items():
        reasons = []
        if a.count != b.count:
            reasons.append("count")
        if a.distinct != b.distinct:
            reasons.append("distinct")
        if a.amount_minor != b.amount_minor:
            if _within(a.amount_minor, b.amount_minor, tolerance_abs, tolerance_rel):
                verdicts.amount_tolerated.add(key)
            else:
                reasons.append("amount")
        if a.checksum != b.checksum and not reasons:
            reasons.append("checksum")
        if reasons:
            verdicts.differing[key] = reasons
    return verdicts


def _within(legacy: int, clickhouse: int, tolerance_abs: int, tolerance_rel: float) -> bool:
    allowed = max(float(tolerance_abs), tolerance_rel * max(abs(legacy), abs(clickhouse)))
    return abs(clickhouse - legacy) <= allowed


def _segment_schema(by: Sequence[str]) -> pa.Schema:
    dims = [pa.field(DIMENSION_COLUMN[b], pa.int64() if b == "day" else pa.string()) for b in by]
    aggs = [pa.field(name, pa.uint64() if name == "checksum" else pa.int64()) for name in SEGMENT_COLUMNS]
    return pa.schema(dims + aggs)


def _total(table: pa.Table) -> SideAggregate:
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


def _daily_deltas(legacy: dict[int, SideAggregate], clickhouse: dict[int, SideAggregate]) -> list[DailyDelta]:
    empty = SideAggregate()
    return [
        DailyDelta(
            day_iso(d),
            legacy.get(d, empty).count,
            clickhouse.get(d, empty).count,
            legacy.get(d, empty).amount_minor,
            clickhouse.get(d, empty).amount_minor,
        )
        for d in sorted(set(legacy) | set(clickhouse))
    ]


def _differing_segments(by: Sequence[str], lt: pa.Table, ct: pa.Table) -> tuple[int, dict[SegmentKey, AggregatePair]]:
    """(segments on either side, {key: (legacy, clickhouse)} where any aggregate differs), in key order."""
    keys = [DIMENSION_COLUMN[b] for b in by]
    left = lt.rename_columns([*keys, *(f"l_{c}" for c in SEGMENT_COLUMNS)])
    right = ct.rename_columns([*keys, *(f"r_{c}" for c in SEGMENT_COLUMNS)])
    joined = left.join(right, keys=keys, join_type="full outer")
    cols = {c: pc.fill_null(joined[c], 0) for c in joined.column_names if c not in keys}
    mask = None
    for c in SEGMENT_COLUMNS:
        ne = pc.not_equal(cols[f"l_{c}"], cols[f"r_{c}"])
        mask = ne if mask is None else pc.or_(mask, ne)
    if mask is None or joined.num_rows == 0:
        return joined.num_rows, {}
    picked = {name: pc.filter(col, mask).to_pylist() for name, col in cols.items()}
    key_values = [pc.filter(joined[k], mask).to_pylist() for k in keys]
    out = []
    for i, key in enumerate(zip(*key_values, strict=True)):
        a = SideAggregate(*(int(picked[f"l_{c}"][i]) for c in SEGMENT_COLUMNS))
        b = SideAggregate(*(int(picked[f"r_{c}"][i]) for c in SEGMENT_COLUMNS))
        out.append((tuple(key), (a, b)))
    out.sort(key=lambda item: tuple(map(str, item[0])))
    return joined.num_rows, dict(out)
