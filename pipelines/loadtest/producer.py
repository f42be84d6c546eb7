"""A paced Kafka producer for one load-test process: sends on an intended schedule, never bursts to catch up silently.

Coordinated omission is the classic load-test lie: a client that waits for the system before
sending the next request sends less when the system is slow and so never sees the slowness. Here
the schedule, not the system, decides when each message is due: message k of a segment of rate r
that started at t0 is due at t0 + k / r, and that *intended* time is what the message carries —
as its event time (the field the pipeline measures latency from) and as its Kafka timestamp.
If the process falls behind, it sends the backlog with the original intended times, so every
latency measured from them includes the wait; the achieved rate drops below the target, which
the verdict calls generator-bound.

Per message the Python work is one `produce()` call: payloads come stamped from the pool
(`stamping`), one producer per process, `poll(0)` once per batch. Delivery reports: one default
callback counts failures exactly (a Python call per message, ~0.3 µs); every n-th message gets
its own callback that records partition, offset, intended and ack time — the sample the
produce→ack and produce→queryable percentiles are built from (`loadtest.ack_samples_per_s`).
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines import kafka

if TYPE_CHECKING:
    from pipelines.config import Settings
    from pipelines.loadtest.stamping import PayloadPool

MAX_BATCH = 20_000  # messages per send_due() call, so one call never hogs the process for long
MAX_ERRORS_KEPT = 5


@dataclass
class ProducerReport:
    """What one producer did since its previous report; the master adds these up."""

    producer: int
    sent: int = 0
    bytes: int = 0
    failed: int = 0
    failed_ms: list[int] = field(default_factory=list)  # intended times of the failed messages
    errors: list[str] = field(default_factory=list)
    sent_by_second: dict[int, int] = field(default_factory=dict)  # whole seconds since the run's start
    sent_by_step: dict[int, int] = field(default_factory=dict)
    # (partition, offset, intended µs, acked µs, counter) of the sampled messages
    samples: list[tuple[int, int, int, int, int]] = field(default_factory=list)
    behind: int = 0  # messages due but not sent yet when the report was taken
    unsent: int = 0  # due before the stop but never sent
    final: bool = False


class PacedProducer:
    """Sends the messages due by now, stamped with their intended time; see the module docstring."""

    def __init__(
        self,
        *,
        settings: Settings,
        pool: PayloadPool,
        topic: str,
        producer_index: int,
        samples_per_s: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.topic = topic
        self.index = producer_index
        self._pool = pool
        self._samples_per_s = samples_per_s
        self._clock = clock
        self._kafka = kafka.producer(
            settings, on_delivery=self._delivered, **{"client.id": f"nova-loadtest-{producer_index}"}
        )
        self.counter = 0  # messages sent; the next message's number
        self.total_failed = 0
        self.unsent = 0  # due before the stop but never sent (the producer was behind)
        # Rate segments: from message seg_k[j] on, message k is due at seg_t[j] + (k − seg_k[j]) / seg_r[j].
        self._seg_k: list[int] = []
        self._seg_t: list[float] = []
        self._seg_r: list[float] = []
        self._seg_step: list[int] = []
        self._started_at: float | None = None
        self._sample_every: list[int] = []
        self._report = ProducerReport(producer_index)

    def schedule(self, segments: list[tuple[float, float, int]], *, started_at: float) -> None:
        """Follow these (start epoch s, messages/s, step index) segments, in order, from the next message.

        A last segment of rate 0 (step −1) ends the run on time, whenever the stop arrives.
        """
        self._started_at = started_at
        k = float(self.counter)
        for at, rate, step in segments:
            if self._seg_t:
                k += max(0.0, at - self._seg_t[-1]) * self._seg_r[-1]
            self._seg_k.append(int(np.ceil(k - 1e-9)))
            self._seg_t.append(at)
            self._seg_r.append(rate)
            self._seg_step.append(step)
            self._sample_every.append(max(1, round(rate / self._samples_per_s)) if rate > 0 else 1)
            k = float(self._seg_k[-1])

    def stop(self, at: float) -> None:
        """Send nothing due after `at`; what was due before it and is not sent yet is dropped (`unsent`)."""
        self.unsent += self.behind(at)
        keep = bisect.bisect_right(self._seg_t, at)
        for seg in (self._seg_k, self._seg_t, self._seg_r, self._seg_step, self._sample_every):
            del seg[keep:]
        self._seg_k.append(self.counter)
        self._seg_t.append(at)
        self._seg_r.append(0.0)
        self._seg_step.append(-1)
        self._sample_every.append(1)

    def _segment(self, now: float) -> int:
        return bisect.bisect_right(self._seg_t, now) - 1

    def _due(self, now: float) -> float:
        """How many messages are due by `now` (a float: the next is due when it passes an integer)."""
        j = self._segment(now)
        if j < 0:
            return 0.0
        return self._seg_k[j] + (now - self._seg_t[j]) * self._seg_r[j]

    def behind(self, now: float | None = None) -> int:
        """Messages due but not sent."""
        return max(0, int(self._due(self._clock() if now is None else now)) - self.counter)

    def wait_s(self, now: float | None = None) -> float:
        """Seconds until the next message is due (0 when some are due already), at most 50 ms."""
        now = self._clock() if now is None else now
        j = self._segment(now)
        if j < 0:
            return min(0.05, max(0.0, self._seg_t[0] - now)) if self._seg_t else 0.05
        rate = self._seg_r[j]
        if rate <= 0:
            return 0.05
        return min(0.05, max(0.0, (self.counter + 1 - self._due(now)) / rate))

    def intended_times(self, first: int, n: int) -> np.ndarray:
        """Intended send times (epoch seconds) of messages first … first + n − 1."""
        ks = np.arange(first, first + n, dtype=np.float64)
        seg_k = np.asarray(self._seg_k, dtype=np.float64)
        j = np.maximum(np.searchsorted(seg_k, ks, side="right") - 1, 0)
        rates = np.asarray(self._seg_r)[j]
        safe = np.where(rates > 0, rates, 1.0)
        times: np.ndarray = np.asarray(self._seg_t)[j] + (ks - seg_k[j]) / safe
        return times

    def send_due(self, now: float | None = None) -> tuple[int, int]:
        """Send what is due by `now` (at most MAX_BATCH); returns (messages, bytes)."""
        now = self._clock() if now is None else now
        n = min(MAX_BATCH, int(self._due(now)) - self.counter)
        if n <= 0:
            return 0, 0
        first = self.counter
        intended = self.intended_times(first, n)
        times_ms = np.floor(intended * 1000.0).astype(np.int64)
        values, keys = self._pool.stamp(first, times_ms)
        stamps = times_ms.tolist()
        intended_us = (intended * 1e6).astype(np.int64).tolist()
        j = self._segment(now)
        every = self._sample_every[j]
        next_sample = (-first) % every  # messages whose number is a multiple of `every` are sampled
        produce, topic, sampled = self._kafka.produce, self.topic, self._sampled
        i = 0
        while i < n:
            try:
                while i < n:
                    if i == next_sample:
                        cb = partial(sampled, intended_us[i], first + i)
                        produce(topic, values[i], keys[i], timestamp=stamps[i], on_delivery=cb)
                        next_sample += every
                    else:
                        produce(topic, values[i], keys[i], timestamp=stamps[i])
                    i += 1
            except BufferError:  # librdkafka's queue is full: let it drain, then go on where we were
                self._kafka.poll(0.005)
        self.counter += n
        size = sum(map(len, values))
        report = self._report
        report.sent += n
        report.bytes += size
        if self._started_at is not None:
            second = int(now - self._started_at)
            report.sent_by_second[second] = report.sent_by_second.get(second, 0) + n
        step = self._seg_step[j]
        report.sent_by_step[step] = report.sent_by_step.get(step, 0) + n
        return n, size

    def poll(self) -> None:
        """Serve delivery callbacks; never blocks."""
        self._kafka.poll(0)

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._failure(err, msg)

    def _sampled(self, intended_us: int, counter: int, err: Any, msg: Any) -> None:
        if err is not None:
            self._failure(err, msg)
            return
        acked_us = time.time_ns() // 1000
        self._report.samples.append((msg.partition(), msg.offset(), intended_us, acked_us, counter))

    def _failure(self, err: Any, msg: Any) -> None:
        self.total_failed += 1
        report = self._report
        report.failed += 1
        report.failed_ms.append(int(msg.timestamp()[1]))
        if len(report.errors) < MAX_ERRORS_KEPT:
            report.errors.append(str(err.str()))

    def take_report(self, *, final: bool = False) -> ProducerReport:
        """What happened since the last report (counters restart from zero)."""
        report, self._report = self._report, ProducerReport(self.index)
        report.behind = self.behind()
        report.unsent = self.unsent
        report.final = final
        return report

    def finish(self, timeout_s: float) -> int:
        """Wait up to `timeout_s` for every delivery report (after `stop()`); the undelivered count as failed."""
        left = int(self._kafka.flush(timeout_s))
        if left:
            self.total_failed += left
            self._report.failed += left
            self._report.errors.append(f"{left} message(s) not acknowledged within {timeout_s:g}s of the end")
        return left
