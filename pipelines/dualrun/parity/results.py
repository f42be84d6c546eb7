"""What a parity check found: per-segment aggregates, row-level differences, daily deltas."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from pipelines.dualrun.parity.columns import CHECKSUM_MODULUS
from pipelines.errors import ParityMismatch

RowValues = dict[str, str | int]
"""A row by contract column name: event_time as ISO text, amount_minor as an int, the rest as text."""

Cell = str | int | RowValues | None
"""One side of a row difference: a column value, a whole row, or nothing."""


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
        self.checksum = (self.checksum + other.checksum) % CHECKSUM_MODULUS


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
    legacy: Cell = None
    clickhouse: Cell = None
    side: str | None = None
    copies: int | None = None


@dataclass
class DailyDelta:
    """Both sides' row count and amount sum for one UTC day: the report's chart and `--json`'s `daily`."""

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
    """Everything one check found; `ok` when no segment and no row differs."""

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
