"""What the ingest workers report: plain dataclasses, cheap to import (the CLI's live view, metrics).

`WorkerStatus` crosses the process boundary as `dataclasses.asdict(status)` and comes back with
`WorkerStatus.from_dict`; `IngestReport` goes to `--json` the same way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from typing import Any


@dataclass
class WorkerStatus:
    """A snapshot for the live view, metrics and the final report."""

    worker: str
    state: str = "starting"  # starting | running | waiting | stopping | stopped
    reason: str = ""
    events: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    last_batch_rows: int = 0
    last_insert_s: float = 0.0
    insert_s_total: float = 0.0
    lag: dict[int, int] = field(default_factory=dict)
    assigned: list[int] = field(default_factory=list)
    # Whole-run percentiles of this worker (event time → insert returned), for the live view and metrics.
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    # The same run's histograms in HdrHistogram's text form, merged across workers for the summary
    # (see pipelines.ingest.latency): from event_time, and from the Kafka message timestamp.
    latency_event_hist: str = ""
    latency_pipeline_hist: str = ""
    # Where the time goes (pipelines.ingest.latency.STAGES): per-stage histograms in the same text
    # form, and per-window row counts and sums for means over any interval (a load test's steps).
    stage_hists: dict[str, str] = field(default_factory=dict)
    stage_windows: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    newest_event_ms: int | None = None
    first_message_at: float | None = None  # wall clock of the first message consumed (for benchmarks)
    caught_up: bool = False  # --until-caught-up under a supervisor: every assigned partition at zero lag
    recovered_partitions: int = 0
    skipped_present: int = 0
    # Fencing (see pipelines.ingest.fencing): times this worker found a partition claimed by a
    # successor, and the rows of such partitions it dropped instead of writing.
    fenced_partitions: int = 0
    fenced_rows: int = 0
    duplicates_repaired: int = 0
    # Fraud detection (pipelines.ingest.detection): alerts written, and their latency histograms
    # (Kafka timestamp of the transaction → alert produced; insert returned → alert produced).
    alerts: int = 0
    detection_cpu_s: float = 0.0  # this worker's thread CPU in the detection stage's calls (numba load excluded)
    latency_alert_hist: str = ""
    latency_alert_insert_hist: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorkerStatus:
        """The inverse of `dataclasses.asdict`; JSON turned the partition keys of `lag` into strings."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["lag"] = {int(p): int(n) for p, n in dict(values.get("lag") or {}).items()}
        return cls(**values)


@dataclass
class LatencySummary:
    """Percentiles (ms) of one latency over every event of the run; see pipelines.ingest.latency."""

    measures: str
    events: int
    p50_ms: float | None
    p99_ms: float | None
    p999_ms: float | None
    max_ms: float | None


@dataclass
class IngestReport:
    events: int
    rejected: dict[str, int]
    batches: int
    elapsed_s: float
    events_per_s: float
    # event_time → insert returned, over the whole run (kept under these names for `--json` readers).
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    workers: int
    recovered_partitions: int = 0
    skipped_present: int = 0
    fenced_partitions: int = 0
    fenced_rows: int = 0
    duplicates_repaired: int = 0
    latency_event: LatencySummary | None = None
    latency_pipeline: LatencySummary | None = None
    # stage → percentiles over every row, merged across workers; and each worker's windows
    stages: dict[str, LatencySummary] = field(default_factory=dict)
    stage_windows: list[dict[str, dict[str, list[float]]]] = field(default_factory=list)
    alerts: int = 0
    detection_cpu_s: float = 0.0  # summed over workers: what scoring, alert writing and state restores cost
    latency_alert: LatencySummary | None = None
    latency_alert_insert: LatencySummary | None = None
