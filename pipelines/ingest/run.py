"""`run_ingest`: the entry point of `nova ingest` (CLI, cron, tests), and its summary."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from pipelines.errors import UsageError
from pipelines.ingest.latency import PIPELINE_SAMPLE, STAGES, LatencyHistogram
from pipelines.ingest.models import IngestReport, LatencySummary, WorkerStatus
from pipelines.ingest.supervisor import supervise

if TYPE_CHECKING:
    from pipelines.config import Settings

EVENT_LATENCY = "event time → insert returned"
PIPELINE_LATENCY = f"Kafka message timestamp → insert returned, 1 message in {PIPELINE_SAMPLE} sampled"
ALERT_LATENCY = "Kafka message timestamp of the transaction → alert produced"
ALERT_INSERT_LATENCY = "insert of the transaction returned → alert produced"


def check_workers(settings: Settings, workers: int) -> None:
    """Refuse a worker count the configured store cannot serve, before anything starts."""
    if workers < 1:
        raise UsageError(f"--workers {workers}: must be at least 1")
    if workers > 1 and settings.clickhouse.url.startswith("chdb://"):
        raise UsageError(
            f"the embedded store ({settings.clickhouse.url}) serves one process; --workers {workers} needs a server",
            hint="use --workers 1, or point clickhouse.url at clickhouse:// (nova stack up --with clickhouse-server)",
        )


def run_ingest(
    *,
    settings: Settings,
    workers: int = 1,
    until_caught_up: bool = False,
    on_status: Callable[[list[WorkerStatus]], None] | None = None,
    stop_event: threading.Event | None = None,
) -> IngestReport:
    """Run `workers` ingest worker processes in one consumer group until stopped (or caught up).

    Workers are child processes of this one, restarted if they die. A killed worker's partitions
    move once its group session times out (pipeline.session_timeout_ms). Static membership would
    make restarts faster, but a static member never leaves the group on a clean exit, so every
    later run would wait out its session; plain membership is the better trade here.
    """
    check_workers(settings, workers)
    started = time.time()
    statuses = supervise(
        settings=settings,
        workers=workers,
        until_caught_up=until_caught_up,
        on_status=on_status,
        stop_event=stop_event or threading.Event(),
    )
    return build_report(statuses, started=started, workers=workers)


def build_report(statuses: list[WorkerStatus], *, started: float, workers: int) -> IngestReport:
    """The run's totals: counts added up, latency histograms merged (one distribution, all workers)."""
    elapsed = max(time.time() - started, 1e-9)
    events = sum(s.events for s in statuses)
    rejected: dict[str, int] = {}
    for s in statuses:
        for k, v in s.rejected.items():
            rejected[k] = rejected.get(k, 0) + v
    event = _summary(EVENT_LATENCY, [s.latency_event_hist for s in statuses])
    pipeline = _summary(PIPELINE_LATENCY, [s.latency_pipeline_hist for s in statuses])
    return IngestReport(
        events=events,
        rejected=rejected,
        batches=sum(s.batches for s in statuses),
        elapsed_s=elapsed,
        events_per_s=events / elapsed,
        latency_p50_ms=event.p50_ms if event else None,
        latency_p99_ms=event.p99_ms if event else None,
        workers=workers,
        recovered_partitions=sum(s.recovered_partitions for s in statuses),
        skipped_present=sum(s.skipped_present for s in statuses),
        fenced_partitions=sum(s.fenced_partitions for s in statuses),
        fenced_rows=sum(s.fenced_rows for s in statuses),
        duplicates_repaired=sum(s.duplicates_repaired for s in statuses),
        latency_event=event,
        latency_pipeline=pipeline,
        stages={
            name: summary
            for name, measures in STAGES.items()
            if (summary := _summary(measures, [s.stage_hists.get(name, "") for s in statuses])) is not None
        },
        stage_windows=[s.stage_windows for s in statuses if s.stage_windows],
        alerts=sum(s.alerts for s in statuses),
        detection_cpu_s=round(sum(s.detection_cpu_s for s in statuses), 3),
        latency_alert=_summary(ALERT_LATENCY, [s.latency_alert_hist for s in statuses]),
        latency_alert_insert=_summary(ALERT_INSERT_LATENCY, [s.latency_alert_insert_hist for s in statuses]),
    )


def _summary(measures: str, encoded: list[str]) -> LatencySummary | None:
    h = LatencyHistogram.merged(encoded)
    if not h.count:
        return None
    return LatencySummary(
        measures=measures,
        events=h.count,
        p50_ms=h.percentile_ms(50),
        p99_ms=h.percentile_ms(99),
        p999_ms=h.percentile_ms(99.9),
        max_ms=h.max_ms(),
    )
