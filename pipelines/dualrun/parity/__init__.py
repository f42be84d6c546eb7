"""Dual-run parity: prove the legacy PostgreSQL warehouse and ClickHouse hold the same transactions.

`run_parity_check` compares `legacy.card_txn` with ClickHouse's transactions table over a
half-open UTC range `[since, until)` in three stages, each computed *in the databases*:

1. `segments` — per UTC day × the `by` dimensions, counts, amount sums, distinct ids and a
   checksum of every row on both sides; the segments that differ go on.
2. `bisect` — checksum bisection of each differing segment by the leading bits of an id hash,
   down to buckets of at most `LEAF_ROWS` rows.
3. `rows` — the ids whose row hashes differ in those buckets, fetched by id from both sides and
   classified (missing on a side, duplicated, a value mismatch per column).

The other modules: `inputs` (`--by`, the code maps and exponents read from the legacy mapping
and the FX file), `columns` (the shared vocabulary), `dialects` (PostgreSQL vs ClickHouse
spelling, the row hash), `queries` (the SQL, normalisation rules), `sides` (the two databases),
`compare` (the entry point), `results` and `format` (what comes out). The HTML report is
`pipelines.dualrun.report`.

    result = run_parity_check(settings=settings, since=since, until=until, by=("day", "merchant"))
    print(format_timings(result)); raise_if_mismatch(result)
"""

from pipelines.dualrun.parity.bisect import LEAF_ROWS
from pipelines.dualrun.parity.columns import COMPARED_COLUMNS, DEFAULT_BY, DIMENSIONS, HASH_BITS
from pipelines.dualrun.parity.compare import DEFAULT_MAX_ROWS, run_parity_check
from pipelines.dualrun.parity.format import format_json, format_rows, format_summary, format_timings
from pipelines.dualrun.parity.inputs import Normalisation, load_normalisation, parse_by
from pipelines.dualrun.parity.results import (
    DailyDelta,
    ParityResult,
    RowDiff,
    SegmentDiff,
    SideAggregate,
    raise_if_mismatch,
)

__all__ = [
    "COMPARED_COLUMNS",
    "DEFAULT_BY",
    "DEFAULT_MAX_ROWS",
    "DIMENSIONS",
    "HASH_BITS",
    "LEAF_ROWS",
    "DailyDelta",
    "Normalisation",
    "ParityResult",
    "RowDiff",
    "SegmentDiff",
    "SideAggregate",
    "format_json",
    "format_rows",
    "format_summary",
    "format_timings",
    "load_normalisation",
    "parse_by",
    "raise_if_mismatch",
    "run_parity_check",
]
