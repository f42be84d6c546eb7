"""`run_parity_check`: validate the request, open both sides, run the three stages, assemble the result."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from pipelines.dualrun.parity.bisect import bisect, differing_window
from pipelines.dualrun.parity.columns import DEFAULT_BY, SegmentKey
from pipelines.dualrun.parity.inputs import load_normalisation, parse_by
from pipelines.dualrun.parity.results import ParityResult, RowDiff, SegmentDiff
from pipelines.dualrun.parity.rows import compare_rows, leaf_candidates
from pipelines.dualrun.parity.segments import SegmentVerdicts, judge_segments, key_dict, scan_segments
from pipelines.dualrun.parity.sides import ClickHouseSide, LegacySide
from pipelines.errors import UsageError

if TYPE_CHECKING:
    from pipelines.clickhouse import Store
    from pipelines.config import Settings

DEFAULT_MAX_ROWS = 1000  # row-level differences collected before the search stops


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
    """Compare legacy and ClickHouse over [since, until) UTC; see the package docstring.

    Returns the result whether or not the sides agree (`result.ok`); raises UsageError for
    bad arguments, ConfigError for a broken legacy mapping, WarehouseError / StoreError when a
    database cannot be reached or queried.
    """
    since = since.replace(tzinfo=UTC) if since.tzinfo is None else since.astimezone(UTC)
    until = until.replace(tzinfo=UTC) if until.tzinfo is None else until.astimezone(UTC)
    if since >= until:
        raise UsageError(
            f"--since {since:%Y-%m-%d %H:%M:%S} is not before --until {until:%Y-%m-%d %H:%M:%S}",
            hint="the range is [since, until), e.g. --since 2024-03-01 --until 2024-03-02",
        )
    dims = parse_by(by)
    if tolerance_abs < 0 or tolerance_rel < 0:
        raise UsageError("tolerances cannot be negative")
    if max_rows < 1:
        raise UsageError("--max-rows must be at least 1")
    normalisation = load_normalisation(settings)
    own_store = store is None
    if store is None:
        from pipelines.clickhouse import open_store

        store = open_store(settings)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    legacy: LegacySide | None = None
    try:
        legacy = LegacySide(settings, normalisation, since, until)
        ch = ClickHouseSide(store, settings.clickhouse.database, settings.pipeline.table, since, until)
        timings["connect_s"] = time.perf_counter() - started
        result = compare(
            legacy,
            ch,
            since=since,
            until=until,
            by=dims,
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


def compare(
    legacy: LegacySide,
    ch: ClickHouseSide,
    *,
    since: datetime,
    until: datetime,
    by: tuple[str, ...],
    tolerance_abs: int,
    tolerance_rel: float,
    max_rows: int,
    timings: dict[str, float],
) -> ParityResult:
    """Segments, then bisection of the differing ones, then their rows; each stage timed in `timings`."""
    t0 = time.perf_counter()
    scan = scan_segments(legacy, ch, by, timings)
    verdicts = judge_segments(scan.changed, tolerance_abs=tolerance_abs, tolerance_rel=tolerance_rel)
    timings["segments_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    window = differing_window(by, verdicts.differing, since, until)
    sizes = {key: verdicts.largest(key) for key in verdicts.differing}
    leaves = bisect(legacy, ch, by, sizes, window, max_rows=max_rows)
    timings["bisect_s"] = time.perf_counter() - t0
    timings["bisect_rounds"] = float(leaves.rounds)

    t0 = time.perf_counter()
    candidates = leaf_candidates(legacy, ch, by, leaves, window, max_rows=max_rows)
    tolerant = tolerance_abs > 0 or tolerance_rel > 0

    def forgive(diff: RowDiff, segments: set[SegmentKey]) -> bool:
        # With a tolerance, an amount difference inside segments whose sums agree within it is
        # tolerated (the checksum saw it; the tolerance forgives it).
        return (
            tolerant
            and diff.kind == "value_mismatch"
            and diff.column == "amount_minor"
            and all(s in verdicts.amount_tolerated or "amount" not in verdicts.differing.get(s, ()) for s in segments)
        )

    findings = compare_rows(legacy, ch, by, candidates.ids, forgive=forgive)
    timings["rows_s"] = time.perf_counter() - t0

    segments = _reported_segments(by, verdicts, findings.segments, truncated=candidates.truncated)
    kept = {tuple(s.key.values()) for s in segments}
    tolerated = sum(1 for key in verdicts.amount_tolerated if tuple(key_dict(by, key).values()) not in kept)
    return ParityResult(
        since=since,
        until=until,
        by=by,
        tolerance_abs=tolerance_abs,
        tolerance_rel=tolerance_rel,
        legacy_source=legacy.source,
        clickhouse_source=ch.source,
        segments_compared=scan.compared,
        legacy_total=scan.legacy_total,
        clickhouse_total=scan.clickhouse_total,
        segments=segments,
        rows=findings.rows,
        rows_truncated=candidates.truncated,
        daily=scan.daily,
        tolerated_segments=tolerated,
        timings=timings,
    )


def _reported_segments(
    by: tuple[str, ...], verdicts: SegmentVerdicts, with_rows: set[SegmentKey], *, truncated: bool
) -> list[SegmentDiff]:
    """The differing segments; a checksum-only one whose rows all turned out tolerated is equal after all."""
    return [
        SegmentDiff(key_dict(by, key), *verdicts.pairs[key], reasons)
        for key, reasons in verdicts.differing.items()
        if reasons != ["checksum"] or key in with_rows or truncated
    ]
