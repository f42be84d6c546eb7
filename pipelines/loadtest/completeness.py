"""After the run: every acknowledged event of it is in ClickHouse exactly once, and none was dead-lettered.

The run's events are the rows whose transaction id starts with the run id (`stamping`), within
the run's event-time window (so the check prunes partitions on a large table): `count()` and
`uniqExact(transaction_id)` must both equal the acknowledged sends. The dead-letter topic is read
from its end offsets before the run to its end after it, counting the messages that carry the
run id: the load test sends only valid events, so none is expected.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from pipelines.kafka.offsets import count_containing, end_offsets
from pipelines.loadtest.results import Completeness

if TYPE_CHECKING:
    from pipelines.clickhouse import Store
    from pipelines.config import Settings
    from pipelines.loadtest.results import RunResult

WINDOW_MARGIN_S = 120  # event times are intended send times: within the run, give or take clock skew


def stored_counts(store: Store, settings: Settings, result: RunResult) -> tuple[int, int]:
    """(count(), uniqExact(transaction_id)) of the run's rows in the transactions table."""
    since = datetime.fromtimestamp(int(result.started_at) - WINDOW_MARGIN_S, UTC)
    until = datetime.fromtimestamp(int(result.ended_at) + WINDOW_MARGIN_S, UTC)
    rows = store.query_rows(
        f"SELECT count(), uniqExact(transaction_id) FROM {settings.pipeline.table} "
        "WHERE transaction_id LIKE %(prefix)s AND event_time >= %(since)s AND event_time < %(until)s",
        {"prefix": f"{result.plan.run_id}-%", "since": since, "until": until},
    )
    return int(rows[0][0]), int(rows[0][1])


def dead_letters(settings: Settings, result: RunResult, *, start: dict[int, int]) -> int:
    """Messages of this run on the dead-letter topic since `start` (its end offsets before the run)."""
    topic = settings.pipeline.dlq_topic
    return count_containing(
        settings, topic, start=start, end=end_offsets(settings, topic), needle=f"{result.plan.run_id}-".encode()
    )


def check_completeness(
    *, settings: Settings, result: RunResult, store: Store | None, dlq_start: dict[int, int] | None, reason: str = ""
) -> Completeness:
    """The completeness of `result`; without a store (`reason` says why) it is reported as not checked."""
    acked = result.overall.sent - result.overall.failed
    if store is None:
        return Completeness(checked=False, reason=reason, acked=acked)
    stored, distinct = stored_counts(store, settings, result)
    found = None if dlq_start is None else dead_letters(settings, result, start=dlq_start)
    return Completeness(checked=True, acked=acked, stored=stored, distinct=distinct, dlq_expected=0, dlq_found=found)
