"""Stage 2, checksum bisection (the reladiff / data-diff technique) down to leaf buckets.

Each differing segment is cut into buckets by the leading bits of a 60-bit hash of
`transaction_id` — 16 or more, as many as bring the largest segment near `LEAF_ROWS / 2` rows a
bucket, so one round usually does; both sides return per-bucket count, amount sum and checksum;
only differing buckets are cut again, until a bucket holds at most `LEAF_ROWS` rows. One query
per side per round covers every differing segment, and only the days that hold them are scanned.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pipelines.dualrun.parity.columns import CHECKSUM_MODULUS, HASH_BITS, Bucket, SegmentKey
from pipelines.dualrun.parity.queries import LEAF_CHUNK, bucket_sql, chunks
from pipelines.dualrun.parity.sides import ClickHouseSide, DbRow, LegacySide, Window, run_both

LEAF_ROWS = 1000  # a bucket this small is compared row by row
FANOUT_BITS = 4  # a bisection round cuts a bucket into at least 2**4 = 16…
_MAX_STEP_BITS = 16  # …and at most 2**16

BucketAggregate = tuple[int, int, int]
"""(rows, amount sum, checksum mod 2**64) of one bucket on one side."""


@dataclass
class Leaves:
    """The differing buckets small enough to compare row by row, grouped by their depth in bits."""

    by_bits: dict[int, list[Bucket]]
    rounds: int


def differing_window(by: Sequence[str], differing: Iterable[SegmentKey], since: datetime, until: datetime) -> Window:
    """The part of [since, until) holding the differing segments (their days, when day is a dimension)."""
    keys = list(differing)
    if "day" not in by or not keys:
        return since, until
    i = list(by).index("day")
    days = [int(key[i]) for key in keys]
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    lo = epoch + timedelta(days=min(days))
    hi = epoch + timedelta(days=max(days) + 1)
    return max(since, lo), min(until, hi)


def bisect(
    legacy: LegacySide,
    ch: ClickHouseSide,
    by: tuple[str, ...],
    sizes: dict[SegmentKey, int],
    window: Window,
    *,
    max_rows: int,
) -> Leaves:
    """Cut the differing segments (`sizes`: key → larger side's rows) down to differing leaf buckets.

    Each round cuts deep enough (2^step buckets) that the largest parent falls to about
    LEAF_ROWS / 2; it stops looking once the differing buckets would fill the row budget.
    """
    leaves: dict[int, list[Bucket]] = defaultdict(list)
    bucket_sizes: dict[Bucket, int] = {(key, 0): n for key, n in sizes.items()}
    pending: list[Bucket] = list(bucket_sizes)
    bits = rounds = 0
    while pending:
        descend = []
        for item in pending:
            if bucket_sizes[item] <= LEAF_ROWS or bits >= HASH_BITS:
                leaves[bits].append(item)
            else:
                descend.append(item)
        if not descend:
            break
        child_bits = bits + _step_bits(max(bucket_sizes[item] for item in descend), bits)
        next_pending: list[Bucket] = []
        for chunk in chunks(descend, LEAF_CHUNK):
            lb, cb = run_both(
                legacy,
                bucket_sql(legacy.dialect, legacy.ranged(window), by, bits, child_bits, chunk),
                ch,
                bucket_sql(ch.dialect, ch.ranged(window), by, bits, child_bits, chunk),
            )
            lbk, cbk = _buckets(lb, len(by)), _buckets(cb, len(by))
            for bkey in sorted(set(lbk) | set(cbk), key=lambda k: tuple(map(str, k))):
                x, y = lbk.get(bkey, (0, 0, 0)), cbk.get(bkey, (0, 0, 0))
                if x != y:
                    next_pending.append(bkey)
                    bucket_sizes[bkey] = max(x[0], y[0])
        bits, rounds = child_bits, rounds + 1
        # Enough differing buckets to fill the row budget: stop looking for more.
        pending = next_pending[: max(max_rows, 1)]
    return Leaves(dict(leaves), rounds)


def _step_bits(largest: int, bits: int) -> int:
    """How many bits deeper the next round cuts, so its largest bucket lands near LEAF_ROWS / 2."""
    return min(max(FANOUT_BITS, math.ceil(math.log2(largest / LEAF_ROWS)) + 1), _MAX_STEP_BITS, HASH_BITS - bits)


def _buckets(rows: Iterable[DbRow], ndims: int) -> dict[Bucket, BucketAggregate]:
    out: dict[Bucket, BucketAggregate] = {}
    for r in rows:
        key: SegmentKey = tuple(int(v) if isinstance(v, int) else str(v) for v in r[:ndims])
        out[(key, int(r[ndims]))] = (
            int(r[ndims + 1]),
            int(r[ndims + 2] or 0),
            int(r[ndims + 3] or 0) % CHECKSUM_MODULUS,
        )
    return out
