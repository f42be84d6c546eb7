"""The Locust master's bookkeeping: samples in, percentiles per second and per step out, and the run's phases.

How produce→queryable is measured (the constraint: the embedded store serves one process, the
ingest worker's, so the load test cannot query it):

- every producer samples ~`loadtest.ack_samples_per_s` messages a second; a sample is the
  message's partition and offset, its intended send time (= its event time) and its ack time;
- the master reads the ingest group's committed offsets every `loadtest.commit_poll_s` and keeps a
  timeline of when each partition's commit first moved. An ingest worker commits a batch's
  offsets to Kafka only after the batch's insert returned (the rows are visible to a SELECT) and
  its ingest state is written, so the first poll that sees the commit pass a sample's offset is
  a moment when the sampled row was queryable;
- produce→queryable = that moment − the intended send time. It errs late, never early: by up to
  one poll interval plus the state write and the asynchronous commit (a few ms), so its
  resolution is the poll interval (100 ms by default) — a fiftieth of a 5 s SLO.

On the server backend probe SELECTs check it independently: a few sampled ids a second are
looked up by id until they are returned (`probe` percentiles; resolution the probe interval).
Samples not queryable when the drain ends count at the drain's end (a lower bound) and are
reported as unresolved, which fails the run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipelines.loadtest.latency import Latency, Percentiles
from pipelines.loadtest.plan import LoadPlan
from pipelines.loadtest.results import QueryStats, RunResult, SecondRow, StepResult
from pipelines.loadtest.shapes import Step
from pipelines.loadtest.stamping import transaction_id

WARMUP_TIMEOUT_S = 120.0  # producers build their pools (a few seconds) before the clock starts
FINAL_REPORT_TIMEOUT_S = 60.0
PROBES_PER_S = 5
MAX_ERRORS_KEPT = 10
NO_OFFSET = -1

METHOD = (
    "produce→queryable: sampled messages (partition, offset, intended send time) against the first "
    "poll that saw the ingest group's committed offset pass them (commits follow the insert); "
    "resolution {poll_ms:.0f} ms, errs late. produce→ack: sampled delivery reports. "
    "Intended times follow the rate schedule, so a producer that falls behind shows as latency."
)


class CommitTimeline:
    """When each committed offset of the ingest group was first seen, per partition (µs, offset)."""

    def __init__(self) -> None:
        self._times: dict[int, list[int]] = {}
        self._offsets: dict[int, list[int]] = {}

    def observe(self, at_us: int, committed: dict[int, int]) -> None:
        for partition, offset in committed.items():
            offsets = self._offsets.setdefault(partition, [])
            if offset >= 0 and (not offsets or offset > offsets[-1]):
                offsets.append(offset)
                self._times.setdefault(partition, []).append(at_us)

    def latest(self, partition: int) -> int:
        offsets = self._offsets.get(partition)
        return offsets[-1] if offsets else NO_OFFSET

    def visible_at(self, partition: int, offsets: np.ndarray) -> np.ndarray:
        """Per offset: when a commit past it was first seen (µs), or −1 if none was yet."""
        committed = np.asarray(self._offsets.get(partition, []), dtype=np.int64)
        times = np.asarray(self._times.get(partition, []), dtype=np.int64)
        # a committed offset c means c − 1 and everything before it is stored: first c > offset
        idx = np.searchsorted(committed, offsets, side="right")
        out = np.full(len(offsets), -1, dtype=np.int64)
        seen = idx < len(committed)
        out[seen] = times[idx[seen]]
        return out


@dataclass
class _Queries:
    latency: Latency = field(default_factory=Latency)
    count: int = 0
    failures: int = 0


@dataclass
class _Bucket:
    """What a step, a second or the whole run accumulates."""

    sent: int = 0
    bytes: int = 0
    failed: int = 0
    ack: Latency = field(default_factory=Latency)
    queryable: Latency = field(default_factory=Latency)
    probe: Latency = field(default_factory=Latency)
    unresolved: int = 0
    queries: dict[str, _Queries] = field(default_factory=dict)
    lag_max: int = 0
    lag_last: int | None = None

    def query(self, name: str) -> _Queries:
        q = self.queries.get(name)
        if q is None:
            q = self.queries[name] = _Queries()
        return q

    def all_queries(self) -> _Queries:
        total = _Queries()
        for q in self.queries.values():
            total.latency.add(q.latency)
            total.count += q.count
            total.failures += q.failures
        return total


@dataclass(frozen=True)
class Control:
    """What the master tells every producer: start the plan's clock at t0, or stop sending."""

    phase: str  # "run" | "drain"
    t0: float
    at: float

    def as_dict(self) -> dict[str, Any]:
        return {"phase": self.phase, "t0": self.t0, "at": self.at}


class Collector:
    """Aggregates producer reports, query timings and offset polls; decides the phases.

    Phases: warmup (producers build their pools) → running (the plan's steps) → draining
    (producers stop and flush; the pipeline catches up) → done (the result is final).
    Single-threaded: the Locust glue calls it from one greenlet at a time.
    """

    def __init__(
        self,
        plan: LoadPlan,
        *,
        backend: str,
        commit_poll_s: float,
        drain_timeout_s: float,
        judge: Callable[[StepResult], str | None] | None = None,
        settle_s: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.plan = plan
        self.backend = backend
        self.commit_poll_s = commit_poll_s
        self.drain_timeout_s = drain_timeout_s
        self._judge = judge  # find-max: why a finished step broke an SLO, or None if it held
        self._settle_s = settle_s
        self._clock = clock
        self.created_at = clock()
        self.phase = "warmup"
        self.t0: float | None = None
        self.ended_at: float | None = None
        self.drain_started: float | None = None
        self.done_at: float | None = None
        self.drained = False
        self.stopped_early: str | None = None
        self._cut_at_s: float | None = None
        self._judged: set[int] = set()
        self.ready: dict[int, int] = {}  # producer (process) → its producer users
        self.finals: set[int] = set()
        self.notices: list[str] = []
        self.errors: list[str] = []
        self.behind: dict[int, int] = {}
        self._steps = [_Bucket() for _ in plan.steps]
        self._overall = _Bucket()
        self._seconds: dict[int, _Bucket] = {}
        self._timeline = CommitTimeline()
        self._pending: list[tuple[int, int, int, int]] = []  # partition, offset, intended µs, counter·producer
        self._probes: dict[str, int] = {}  # transaction id → intended µs
        self._next_probe_us = 0
        self._baseline: dict[int, int] | None = None  # end offsets when the clock started
        self._ends: dict[int, int] = {}
        self._drain_target: dict[int, int] | None = None
        self._finals_at: float | None = None

    def producer_ready(self, producer: int, users: int = 1) -> None:
        """A process's producer built its pool; `users` of the plan's producers run in it."""
        self.ready[producer] = max(users, self.ready.get(producer, 0))

    @property
    def ready_users(self) -> int:
        return sum(self.ready.values())

    def tick(self, now: float | None = None) -> Control | None:
        """Advance the phases; returns a control to broadcast when the producers must change course."""
        now = self._clock() if now is None else now
        if self.phase == "warmup":
            if self.ready_users >= self.plan.producers or now - self.created_at > WARMUP_TIMEOUT_S:
                if self.ready_users < self.plan.producers:
                    self.notices.append(
                        f"only {self.ready_users} of {self.plan.producers} producer(s) were ready after "
                        f"{WARMUP_TIMEOUT_S:.0f}s; the run started without the others"
                    )
                self.t0 = now + 0.5  # a moment for the control to reach every producer
                self.phase = "running"
                return Control("run", self.t0, self.t0)
            return None
        if self.phase == "running":
            assert self.t0 is not None
            elapsed = now - self.t0
            reason = self._find_max_break(now)
            if reason is not None or elapsed >= self.plan.duration_s:
                self.stopped_early = reason
                if reason is not None:
                    self._cut_at_s = elapsed
                self.phase = "draining"
                self.ended_at = now
                self.drain_started = now
                return Control("drain", self.t0, now)
            return None
        if self.phase == "draining":
            assert self.drain_started is not None
            waited = now - self.drain_started
            if self._finals_at is None:
                if len(self.finals) >= len(self.ready) or waited > FINAL_REPORT_TIMEOUT_S:
                    if len(self.finals) < len(self.ready):
                        missing = sorted(set(self.ready) - self.finals)
                        self.notices.append(f"producer(s) {missing} sent no final report; their last second is lost")
                    self._finals_at = now
            elif self._drain_target is not None and self._caught_up():
                self._finish(now, drained=True)
            if self.phase == "draining" and waited > self.drain_timeout_s:
                self._finish(now, drained=False)
        return None

    def _finish(self, now: float, *, drained: bool) -> None:
        self.resolve(now, final=True)
        self.drained = drained
        self.done_at = now
        self.phase = "done"

    def _caught_up(self) -> bool:
        assert self._drain_target is not None
        base = self._baseline or {}
        for partition, end in self._drain_target.items():
            committed = self._timeline.latest(partition)
            if committed == NO_OFFSET:
                committed = base.get(partition, 0)
            if committed < end:
                return False
        return True

    def _find_max_break(self, now: float) -> str | None:
        if self.plan.profile != "find-max" or self._judge is None:
            return None
        assert self.t0 is not None
        for step in self.plan.steps:
            if step.index in self._judged or now < self.t0 + step.end_s + self._settle_s:
                continue
            self._judged.add(step.index)
            self.resolve(now)
            provisional = self._step_result(step, self._steps[step.index], now=now, provisional=True)
            why = self._judge(provisional)
            if why is not None:
                return f"{step.label} broke: {why}"
        return None

    def add_report(self, report: dict[str, Any]) -> None:
        """A `ProducerReport` (as a dict, as it crossed the wire)."""
        producer = int(report["producer"])
        self.behind[producer] = int(report.get("behind", 0))
        for second, n in report["sent_by_second"].items():
            self._second(int(second)).sent += int(n)
        for index, n in report["sent_by_step"].items():
            self._steps[self._step_index(int(index))].sent += int(n)
        self._overall.sent += int(report["sent"])
        self._overall.bytes += int(report["bytes"])
        if report["sent"] and report["sent_by_step"]:
            # bytes per step in proportion to messages (the pool's sizes are the same in every step)
            per_msg = int(report["bytes"]) / int(report["sent"])
            for index, n in report["sent_by_step"].items():
                self._steps[self._step_index(int(index))].bytes += round(per_msg * int(n))
        self._overall.failed += int(report["failed"])
        for ms in report["failed_ms"]:
            bucket = self._step_bucket(ms / 1000.0)
            if bucket is not None:
                bucket.failed += 1
        unattributed = int(report["failed"]) - len(report["failed_ms"])  # undelivered at the end
        if unattributed > 0 and self._steps:
            self._steps[-1].failed += unattributed
        for error in report["errors"]:
            if len(self.errors) < MAX_ERRORS_KEPT:
                self.errors.append(f"producer {producer}: {error}")
        for partition, offset, intended_us, acked_us, counter in report["samples"]:
            self._sample(producer, int(partition), int(offset), int(intended_us), int(acked_us), int(counter))
        if report.get("final"):
            self.finals.add(producer)
            unsent = int(report.get("unsent", 0))
            if unsent:
                self.notices.append(
                    f"producer {producer} was {unsent:,} message(s) behind its schedule at the end; they were not sent"
                )

    def _sample(
        self, producer: int, partition: int, offset: int, intended_us: int, acked_us: int, counter: int
    ) -> None:
        ack = acked_us - intended_us
        for bucket in self._buckets(intended_us / 1e6):
            bucket.ack.record(ack)
        self._pending.append((partition, offset, intended_us, producer))
        if self.backend == "server" and intended_us >= self._next_probe_us:
            self._probes[transaction_id(self.plan.run_id, producer, counter)] = intended_us
            self._next_probe_us = intended_us + 1_000_000 // PROBES_PER_S

    def add_queries(self, rows: Iterable[tuple[str, int, int, bool]]) -> None:
        """(query name, start µs, duration µs, succeeded) of analyst queries."""
        for name, start_us, duration_us, ok in rows:
            for bucket in self._buckets(start_us / 1e6):
                q = bucket.query(name)
                q.count += 1
                if ok:
                    q.latency.record(duration_us)
                else:
                    q.failures += 1

    def add_commits(self, at_us: int, committed: dict[int, int]) -> None:
        self._timeline.observe(at_us, committed)

    def add_end_offsets(self, at_us: int, ends: dict[int, int]) -> None:
        """End offsets of the topic; they give the lag, the baseline at the start and the drain's target."""
        self._ends = dict(ends)
        if self._baseline is None:
            self._baseline = dict(ends)
        if self._finals_at is not None and self._drain_target is None and at_us / 1e6 >= self._finals_at:
            self._drain_target = dict(ends)
        lag = self.lag()
        if lag is None or self.t0 is None:
            return
        for bucket in self._buckets(at_us / 1e6, overall=True):
            bucket.lag_max = max(bucket.lag_max, lag)
            bucket.lag_last = lag

    def lag(self) -> int | None:
        """Messages written to the topic but not committed by the ingest group yet."""
        if not self._ends:
            return None
        base = self._baseline or {}
        total = 0
        for partition, end in self._ends.items():
            committed = self._timeline.latest(partition)
            total += max(0, end - (committed if committed != NO_OFFSET else base.get(partition, 0)))
        return total

    def probes(self, limit: int) -> tuple[list[str], float | None]:
        """Up to `limit` probe transaction ids not seen by a SELECT yet (oldest first), and the
        earliest of their event times (epoch s), so the probe query can prune by event time."""
        oldest = (self._clock() - self.drain_timeout_s) * 1e6
        for stale in [tid for tid, intended in self._probes.items() if intended < oldest]:
            del self._probes[stale]  # its message was never stored (or failed): stop asking
        ids = list(self._probes)[:limit]
        return ids, (min(self._probes[i] for i in ids) / 1e6 if ids else None)

    def probes_seen(self, ids: Iterable[str], at_us: int) -> None:
        for tid in ids:
            intended = self._probes.pop(tid, None)
            if intended is not None:
                for bucket in self._buckets(intended / 1e6):
                    bucket.probe.record(at_us - intended)

    def resolve(self, now: float | None = None, *, final: bool = False) -> None:
        """Turn samples whose commit was seen into produce→queryable latencies; at the end, the rest too."""
        if not self._pending:
            return
        now = self._clock() if now is None else now
        data = np.asarray(self._pending, dtype=np.int64)
        keep = np.ones(len(data), dtype=bool)
        for partition in np.unique(data[:, 0]).tolist():
            sel = np.nonzero(data[:, 0] == partition)[0]
            visible = self._timeline.visible_at(int(partition), data[sel, 1])
            for i, seen_us in zip(sel.tolist(), visible.tolist(), strict=True):
                if seen_us < 0 and not final:
                    continue
                keep[i] = False
                intended_us = int(data[i, 2])
                for bucket in self._buckets(intended_us / 1e6):
                    if seen_us < 0:
                        bucket.unresolved += 1
                        bucket.queryable.record(int(now * 1e6) - intended_us)
                    else:
                        bucket.queryable.record(seen_us - intended_us)
        self._pending = [self._pending[i] for i in np.nonzero(keep)[0].tolist()]

    def _step_index(self, index: int) -> int:
        """A producer's step index; −1 (sent after the end: the last step's backlog) is the last step."""
        return index if 0 <= index < len(self._steps) else len(self._steps) - 1

    def _second(self, second: int) -> _Bucket:
        bucket = self._seconds.get(second)
        if bucket is None:
            bucket = self._seconds[second] = _Bucket()
        return bucket

    def _step_bucket(self, at_s: float) -> _Bucket | None:
        if self.t0 is None:
            return None
        step = self.plan.step_at(at_s - self.t0)
        if step is None:
            # backlog sent after the end still belongs to the last step
            return self._steps[-1] if at_s >= self.t0 + self.plan.duration_s else None
        return self._steps[step.index]

    def _buckets(self, at_s: float, *, overall: bool = True) -> list[_Bucket]:
        out = [self._overall] if overall else []
        if self.t0 is None:
            return out
        step = self._step_bucket(at_s)
        if step is not None:
            out.append(step)
        out.append(self._second(int(at_s - self.t0)))
        return out

    def _step_result(self, step: Step | None, bucket: _Bucket, *, now: float, provisional: bool = False) -> StepResult:
        queryable = bucket.queryable
        unresolved = bucket.unresolved
        if provisional and self._pending and step is not None and self.t0 is not None:
            # samples of the step not queryable yet count as at least as slow as they are by now
            queryable = Latency.merged([bucket.queryable])
            lo, hi = (self.t0 + step.start_s) * 1e6, (self.t0 + step.end_s) * 1e6
            for _, _, intended_us, _ in self._pending:
                if lo <= intended_us < hi:
                    queryable.record(int(now * 1e6) - intended_us)
        if step is None:
            index, label, start, ran, status = -1, "whole run", 0.0, self._ran_s(now), "ran"
            rate = self._planned(ran) / ran if ran > 0 else self.plan.target_rate
        else:
            index, label, rate, start = step.index, step.label, step.rate, step.start_s
            ran, status = self._step_ran(step, now)
        queries = bucket.all_queries()
        return StepResult(
            index=index,
            label=label,
            target_rate=rate,
            start_s=start,
            duration_s=ran,
            status=status,
            sent=bucket.sent,
            bytes=bucket.bytes,
            failed=bucket.failed,
            ack=bucket.ack.summary(),
            queryable=queryable.summary(),
            probe=bucket.probe.summary(),
            unresolved=unresolved,
            queries=[
                QueryStats(name, q.count, q.failures, q.latency.summary(), q.latency.encode())
                for name, q in sorted(bucket.queries.items())
            ],
            query_latency=queries.latency.summary(),
            query_count=queries.count,
            query_failures=queries.failures,
            lag_max=bucket.lag_max,
            histograms={
                "ack": bucket.ack.encode(),
                "queryable": queryable.encode(),
                "probe": bucket.probe.encode(),
                "query": queries.latency.encode(),
            },
        )

    def _planned(self, until_s: float) -> float:
        """Messages the plan asks for in its first `until_s` seconds."""
        return sum(s.rate * max(0.0, min(s.end_s, until_s) - s.start_s) for s in self.plan.steps)

    def _ran_s(self, now: float) -> float:
        if self.t0 is None:
            return 0.0
        end = self.ended_at if self.ended_at is not None else now
        return max(0.0, min(end - self.t0, self.plan.duration_s))

    def _step_ran(self, step: Step, now: float) -> tuple[float, str]:
        ran = self._ran_s(now)
        if ran >= step.end_s - 1e-6:
            return step.duration_s, "ran"
        if ran <= step.start_s:
            return 0.0, "not run"
        return ran - step.start_s, "cut" if self._cut_at_s is not None else "ran"

    def live(self, now: float | None = None) -> dict[str, Any]:
        """A snapshot for the live view (written to a file every second)."""
        now = self._clock() if now is None else now
        self.resolve(now)
        elapsed = now - self.t0 if self.t0 is not None else 0.0
        step = self.plan.step_at(elapsed) if self.phase == "running" else None
        bucket = self._steps[step.index] if step is not None else self._overall
        second = self._seconds.get(int(elapsed) - 1)

        def pct(p: Percentiles | None) -> dict[str, float] | None:
            return None if p is None else {"p50_ms": p.p50_ms, "p99_ms": p.p99_ms}

        queries = bucket.all_queries()
        return {
            "phase": self.phase,
            "elapsed_s": round(elapsed, 1),
            "duration_s": self.plan.duration_s,
            "step": step.label if step is not None else None,
            "step_index": step.index if step is not None else None,
            "target_rate": step.rate if step is not None else 0.0,
            "achieved_rate": second.sent if second is not None else 0,
            "sent": self._overall.sent,
            "failed": self._overall.failed,
            "behind": sum(self.behind.values()),
            "lag": self.lag(),
            "ack": pct(bucket.ack.summary()),
            "queryable": pct(bucket.queryable.summary()),
            "query_p95_ms": queries.latency.percentile_ms(95) if queries.latency.count else None,
            "queries": queries.count,
            "producers_ready": self.ready_users,
            "stopped_early": self.stopped_early,
        }

    def result(self, now: float | None = None) -> RunResult:
        now = self._clock() if now is None else now
        steps = [self._step_result(step, self._steps[step.index], now=now) for step in self.plan.steps]
        last = max(self._seconds) if self._seconds else -1
        seconds = []
        for s in range(0, last + 1):
            b = self._seconds.get(s, _Bucket())
            step = self.plan.step_at(s + 0.5)
            ack, queryable = b.ack.summary(), b.queryable.summary()
            q = b.all_queries()
            seconds.append(
                SecondRow(
                    second=s,
                    target_rate=step.rate if step is not None and not self._cut(s) else 0.0,
                    sent=b.sent,
                    ack_p50_ms=ack.p50_ms if ack else None,
                    ack_p99_ms=ack.p99_ms if ack else None,
                    queryable_p50_ms=queryable.p50_ms if queryable else None,
                    queryable_p99_ms=queryable.p99_ms if queryable else None,
                    lag=b.lag_last,
                    queries=q.count,
                    query_p95_ms=q.latency.percentile_ms(95) if q.latency.count else None,
                )
            )
        end = self.ended_at if self.ended_at is not None else now
        return RunResult(
            plan=self.plan,
            backend=self.backend,
            started_at=self.t0 or self.created_at,
            ended_at=end,
            drained_s=(self.done_at or now) - end,
            drained=self.drained,
            steps=steps,
            overall=self._step_result(None, self._overall, now=now),
            seconds=seconds,
            producers=self.ready_users,
            errors=list(self.errors),
            notices=list(self.notices),
            stopped_early=self.stopped_early,
            method=METHOD.format(poll_ms=self.commit_poll_s * 1000),
        )

    def _cut(self, second: int) -> bool:
        return self._cut_at_s is not None and second >= self._cut_at_s
