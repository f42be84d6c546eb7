"""Latency histograms: HdrHistogram in microseconds, mergeable across processes and steps.

Percentiles come from histograms, never from averages or from a window of recent samples, so
p99.9 and max over a whole run are exact to the histogram's precision (3 significant digits)
however many samples there were, and histograms of seconds, steps or processes add up.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 3_600_000_000  # one hour: anything slower is recorded as an hour
SIGNIFICANT_DIGITS = 3
QUANTILES = (50.0, 95.0, 99.0, 99.9)


@dataclass(frozen=True)
class Percentiles:
    """p50 / p95 / p99 / p99.9 / max of a histogram, in milliseconds, and how many samples it holds."""

    count: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float


class Latency:
    """One histogram of latencies (µs); values below 1 µs count as 1 µs, above an hour as an hour."""

    def __init__(self) -> None:
        self._h = HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)

    def record(self, micros: int) -> None:
        self._h.record_value(min(max(int(micros), LOWEST_US), HIGHEST_US))

    def record_all(self, micros: Iterable[int]) -> None:
        for value in micros:
            self.record(value)

    def add(self, other: Latency) -> None:
        self._h.add(other._h)

    @property
    def count(self) -> int:
        return int(self._h.get_total_count())

    def mean_ms(self) -> float:
        return float(self._h.get_mean_value()) / 1000.0

    def percentile_ms(self, q: float) -> float:
        return float(self._h.get_value_at_percentile(q)) / 1000.0

    def summary(self) -> Percentiles | None:
        """The percentiles, or None for an empty histogram (nothing was measured)."""
        if not self.count:
            return None
        p50, p95, p99, p999 = (self.percentile_ms(q) for q in QUANTILES)
        return Percentiles(self.count, p50, p95, p99, p999, float(self._h.get_max_value()) / 1000.0)

    def encode(self) -> str:
        """The compressed, base64 HdrHistogram wire form (what other HdrHistogram tools read)."""
        return bytes(self._h.encode()).decode("ascii")

    @classmethod
    def decode(cls, text: str) -> Latency:
        out = cls()
        if text:
            out._h.decode_and_add(text.encode("ascii"))
        return out

    @classmethod
    def merged(cls, parts: Iterable[Latency]) -> Latency:
        out = cls()
        for part in parts:
            out.add(part)
        return out
