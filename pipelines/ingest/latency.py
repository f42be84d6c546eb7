"""Whole-run latency histograms: HdrHistogram, recorded a batch at a time, merged across workers.

The ingest summary reports two latencies per inserted event, both ending when the insert that
stored the event returned (the rows are visible to queries from then on):

- `event` — from the event's own `event_time`. The product's "insight latency". For a replay of
  history the events are months old, so this measures the data, not the pipeline.
- `pipeline` — from the Kafka message timestamp (the producer's create time, or the broker's
  log-append time). What the pipeline itself adds, true for live traffic and replays alike.
  Recorded for one valid message in PIPELINE_SAMPLE (each counted that many times): reading a
  message's timestamp costs ~0.3 µs, 4% of the worker's whole cost per event, for a figure a
  systematic sample gives as well.

A sliding window of recent samples would describe only the end of a long run; a histogram keeps
every event at 3 significant digits in fixed memory (~250 KiB), and histograms of several worker
processes (or restarts of one) add up exactly, so the summary of `--workers 8` is one
distribution, not the worst of eight. Values are milliseconds; negative ones (an event time
ahead of the clock) count as 0.
"""

from __future__ import annotations

import numpy as np
from hdrh.histogram import HdrHistogram

LOWEST_MS = 1
HIGHEST_MS = 20 * 365 * 86_400_000  # twenty years: a replay of old history still fits
SIGNIFICANT_DIGITS = 3
PIPELINE_SAMPLE = 8


class LatencyHistogram:
    """A millisecond HdrHistogram with a vectorised `record` and a text form for process boundaries."""

    def __init__(self, histogram: HdrHistogram | None = None) -> None:
        self._h = histogram or HdrHistogram(LOWEST_MS, HIGHEST_MS, SIGNIFICANT_DIGITS)
        self._counts = np.ctypeslib.as_array(self._h.counts)

    @property
    def count(self) -> int:
        return int(self._h.get_total_count())

    def record(self, values_ms: np.ndarray, *, weight: int = 1) -> None:
        """Add every value of an integer array, each counted `weight` times (a 1-in-`weight` sample).

        One numpy pass per batch: a per-value Python call (`HdrHistogram.record_value`) would cost
        ~1 µs per event on the ingest hot path."""
        if not len(values_ms):
            return
        v = np.clip(values_ms.astype(np.int64, copy=False), 0, HIGHEST_MS)
        h = self._h
        # HdrHistogram's index: bucket = bit length of (v | sub_bucket_mask) − unit − (half magnitude + 1).
        # The bit length is the float64 exponent + 1, exact for integers below 2**53 (HIGHEST_MS ≈ 2**39);
        # read from the exponent bits, it costs a tenth of np.frexp.
        exponent = ((v | h.sub_bucket_mask).astype(np.float64).view(np.int64) >> 52) - 1023
        bucket = exponent + 1 - h.unit_magnitude - (h.sub_bucket_half_count_magnitude + 1)
        sub_bucket = v >> (bucket + h.unit_magnitude)
        index = ((bucket + 1) << h.sub_bucket_half_count_magnitude) + sub_bucket - h.sub_bucket_half_count
        counts = np.bincount(index, minlength=len(self._counts))[: len(self._counts)].astype(np.uint64)
        self._counts += counts * np.uint64(weight) if weight != 1 else counts
        h.total_count += len(v) * weight
        h.min_value = min(h.min_value, int(v.min()))
        h.max_value = max(h.max_value, int(v.max()))

    def merge(self, other: LatencyHistogram) -> None:
        self._h.add(other._h)

    def percentile_ms(self, q: float) -> float | None:
        """The value at percentile q (0–100), None when nothing was recorded."""
        if not self.count:
            return None
        return float(self._h.get_value_at_percentile(q))

    def max_ms(self) -> float | None:
        return float(self._h.get_max_value()) if self.count else None

    def encode(self) -> str:
        """The standard compressed, base64 HdrHistogram form (readable by any HdrHistogram library)."""
        return self._h.encode().decode("ascii") if self.count else ""

    @classmethod
    def decode(cls, text: str) -> LatencyHistogram:
        if not text:
            return cls()
        merged = cls()
        merged._h.decode_and_add(text.encode("ascii"))
        return merged

    @classmethod
    def merged(cls, encoded: list[str]) -> LatencyHistogram:
        """One histogram of every encoded one (worker processes, restarts of a worker)."""
        total = cls()
        for text in encoded:
            if text:
                total._h.decode_and_add(text.encode("ascii"))
        return total


# Where a row's time goes inside the pipeline, in the order it passes the stages. Each is recorded
# per row (a chunk's or a batch's duration counted once for every valid row in it):
STAGES: dict[str, str] = {
    "fetch": "Kafka timestamp → the worker's consume returned (producer linger, broker, fetch wait; sampled)",
    "decode": "decode, validate, enrich of the consumed chunk",
    "detect": "fraud detection's scoring of the chunk (pipelines.ingest.detection)",
    "accumulate": "chunk decoded → its batch started flushing (batch_max_seconds / batch_max_rows)",
    "queue": "flush started → insert started (previous insert still running, dead letters, ownership, pending)",
    "insert": "the INSERT itself (rows visible to SELECT when it returns)",
    "alerts": "fraud detection writes the batch's alerts (after the insert, before the commit)",
    "commit": "insert returned → offsets committed, alerts aside (ownership check, ingest state, Kafka commit)",
}
WINDOW_S = 5  # resolution of the per-window means a load test cuts per step
MAX_WINDOWS = 240  # 20 minutes of windows (a load test's length); older ones are dropped, the histograms stay


class StageLatency:
    """Per-stage histograms over the whole run, and per-`WINDOW_S` sums for means over any interval.

    Percentiles of stages do not add up; means do, so a breakdown of one row's latency into
    stages (a stacked bar) uses the windows' means, and the histograms give each stage's tail.
    """

    def __init__(self) -> None:
        self.histograms = {name: LatencyHistogram() for name in STAGES}
        # window start (epoch s) → stage → [rows, sum of ms over those rows]
        self.windows: dict[int, dict[str, list[float]]] = {}

    def record(self, stage: str, value_ms: float, rows: int, *, at: float) -> None:
        """One duration that `rows` rows each spent in `stage`, ending at wall-clock time `at`."""
        if rows <= 0:
            return
        self.histograms[stage].record(np.array([int(value_ms)], dtype=np.int64), weight=rows)
        self._window(stage, at, rows, max(0.0, value_ms) * rows)

    def record_many(self, stage: str, values_ms: np.ndarray, *, weight: int, at: float) -> None:
        """Per-row durations of a sample, each standing for `weight` rows."""
        if not len(values_ms):
            return
        self.histograms[stage].record(values_ms, weight=weight)
        total = float(np.clip(values_ms, 0, None).sum()) * weight
        self._window(stage, at, len(values_ms) * weight, total)

    def _window(self, stage: str, at: float, rows: int, total_ms: float) -> None:
        start = int(at) // WINDOW_S * WINDOW_S
        window = self.windows.get(start)
        if window is None:
            window = self.windows[start] = {}
            if len(self.windows) > MAX_WINDOWS:
                del self.windows[min(self.windows)]
        acc = window.setdefault(stage, [0.0, 0.0])
        acc[0] += rows
        acc[1] += total_ms

    def encode(self) -> dict[str, str]:
        return {name: h.encode() for name, h in self.histograms.items() if h.count}

    def encoded_windows(self) -> dict[str, dict[str, list[float]]]:
        """The windows with string keys (they cross process boundaries as JSON)."""
        return {str(k): {s: list(v) for s, v in w.items()} for k, w in self.windows.items()}


def stage_means(
    windows: list[dict[str, dict[str, list[float]]]], *, start: float | None = None, end: float | None = None
) -> dict[str, float]:
    """Mean ms per row of each stage over the windows (of any number of workers) in [start, end)."""
    rows: dict[str, float] = {}
    total: dict[str, float] = {}
    for per_worker in windows:
        for key, stages in per_worker.items():
            at = int(key)
            if (start is not None and at + WINDOW_S <= start) or (end is not None and at >= end):
                continue
            for stage, (n, ms) in stages.items():
                rows[stage] = rows.get(stage, 0.0) + n
                total[stage] = total.get(stage, 0.0) + ms
    return {s: total[s] / rows[s] for s in STAGES if rows.get(s)}
