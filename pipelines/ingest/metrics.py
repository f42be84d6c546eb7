"""Prometheus metrics for `nova ingest --metrics-port`, fed from worker status snapshots."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipelines.ingest.latency import LatencyHistogram

if TYPE_CHECKING:
    from pipelines.ingest.models import WorkerStatus


class Metrics:
    """Gauges per worker, set from its latest status snapshot (the workers are other processes)."""

    def __init__(self, port: int) -> None:
        from prometheus_client import CollectorRegistry, Gauge, start_http_server

        self.registry = CollectorRegistry()
        labels = ["worker"]
        self.events = Gauge(
            "nova_ingest_events_total", "Valid events inserted into ClickHouse", labels, registry=self.registry
        )
        self.rejected = Gauge(
            "nova_ingest_dead_letters_total",
            "Events sent to the dead-letter topic",
            ["worker", "reason"],
            registry=self.registry,
        )
        self.lag = Gauge(
            "nova_ingest_consumer_lag",
            "Messages behind the partition's high watermark",
            ["worker", "partition"],
            registry=self.registry,
        )
        self.batch_rows = Gauge(
            "nova_ingest_last_batch_rows", "Rows in the last inserted batch", labels, registry=self.registry
        )
        self.insert_s = Gauge(
            "nova_ingest_last_insert_seconds", "Duration of the last insert", labels, registry=self.registry
        )
        self.latency = Gauge(
            "nova_ingest_latency_ms",
            "End-to-end latency (event time → insert returned), whole run of the worker",
            ["worker", "quantile"],
            registry=self.registry,
        )
        self.fenced = Gauge(
            "nova_ingest_fenced_partitions_total",
            "Times a partition was found claimed by another worker (its rows left to that worker)",
            labels,
            registry=self.registry,
        )
        self.stage = Gauge(
            "nova_ingest_stage_latency_ms",
            "Time a row spends in each pipeline stage (pipelines.ingest.latency.STAGES), whole run of the worker",
            ["worker", "stage", "quantile"],
            registry=self.registry,
        )
        self._stage_seen: dict[tuple[str, str], str] = {}
        self.waiting = Gauge(
            "nova_ingest_waiting", "1 while the worker waits for an unavailable service", labels, registry=self.registry
        )
        start_http_server(port, addr="127.0.0.1", registry=self.registry)

    def update(self, statuses: list[WorkerStatus]) -> None:
        for s in statuses:
            w = s.worker
            self.events.labels(w).set(s.events)
            for reason, n in s.rejected.items():
                self.rejected.labels(w, reason).set(n)
            for p, lag in s.lag.items():
                if lag >= 0:
                    self.lag.labels(w, str(p)).set(lag)
            self.batch_rows.labels(w).set(s.last_batch_rows)
            self.insert_s.labels(w).set(s.last_insert_s)
            if s.latency_p50_ms is not None:
                self.latency.labels(w, "0.5").set(s.latency_p50_ms)
            if s.latency_p99_ms is not None:
                self.latency.labels(w, "0.99").set(s.latency_p99_ms)
            self.fenced.labels(w).set(s.fenced_partitions)
            for stage, encoded in s.stage_hists.items():
                if self._stage_seen.get((w, stage)) == encoded:
                    continue  # re-encoded every few seconds only: decode when it changed
                self._stage_seen[(w, stage)] = encoded
                h = LatencyHistogram.decode(encoded)
                for q in (50, 99):
                    value = h.percentile_ms(q)
                    if value is not None:
                        self.stage.labels(w, stage, str(q / 100)).set(value)
            self.waiting.labels(w).set(1 if s.state == "waiting" else 0)
