"""One ingest worker process: consume → transform → dead-letter → exactly-once insert → commit."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.errors import KafkaError, NovaError, StoreError, UsageError
from pipelines.ingest.state import COMMITTED, PENDING, Range, StateStore
from pipelines.ingest.transform import Enricher, transform_table

if TYPE_CHECKING:
    from pipelines.clickhouse import Store
    from pipelines.config import Settings
    from pipelines.kafka import Consumer, Message, Producer, TopicPartition

POLL_CHUNK = 10_000
LATENCY_WINDOW = 200_000  # latency samples kept for percentiles
BACKOFF_MAX_S = 10.0
# Big enough fetches for ~200k events/s, small enough that prefetched messages stay a few MiB.
FETCH_TUNING = {
    "fetch.max.bytes": 32 * 1024 * 1024,
    "max.partition.fetch.bytes": 4 * 1024 * 1024,
    "queued.max.messages.kbytes": 64 * 1024,
}
IDLE_GRACE_S = 1.0  # --until-caught-up: no message for this long, and zero lag, means caught up


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
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    started_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    newest_event_ms: int | None = None
    first_message_at: float | None = None  # wall clock of the first message consumed (for benchmarks)
    caught_up: bool = False  # --until-caught-up under a supervisor: every assigned partition at zero lag
    recovered_partitions: int = 0
    skipped_present: int = 0


@dataclass
class IngestReport:
    events: int
    rejected: dict[str, int]
    batches: int
    elapsed_s: float
    events_per_s: float
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    workers: int
    recovered_partitions: int = 0
    skipped_present: int = 0


class _Batch:
    def __init__(self) -> None:
        self.tables: list[pa.Table] = []
        self.ranges: dict[int, Range] = {}
        self.rows = 0
        self.opened_at: float | None = None
        self.phase = "dlq"

    def empty(self) -> bool:
        return not self.ranges

    def add_offsets(self, partition: int, first: int, last: int, rows: int, dlq: int) -> None:
        r = self.ranges.get(partition)
        if r is None:
            self.ranges[partition] = Range(first, last, rows, dlq)
        else:
            r.begin, r.end = min(r.begin, first), max(r.end, last)
            r.rows += rows
            r.dlq += dlq

    def drop_partitions(self, partitions: set[int]) -> None:
        for p in partitions:
            self.ranges.pop(p, None)
        kept = []
        for t in self.tables:
            mask = pc.invert(pc.is_in(t["_partition"], value_set=pa.array(sorted(partitions), pa.uint32())))
            kept.append(t.filter(mask))
        self.tables = [t for t in kept if t.num_rows]
        self.rows = sum(t.num_rows for t in self.tables)


class Worker:
    def __init__(
        self,
        *,
        settings: Settings,
        store: Store,
        worker_id: str,
        until_caught_up: bool,
        on_status: Callable[[WorkerStatus], None] | None = None,
        stop_event: threading.Event | None = None,
        status_interval_s: float = 0.5,
        coordinated: bool = False,
    ) -> None:
        from pipelines.contracts.columnar import FastDecoder
        from pipelines.contracts.reference import load_reference
        from pipelines.contracts.registry import open_registry

        self.settings = settings
        self.p = settings.pipeline
        self.store = store
        self.worker_id = worker_id
        self.until_caught_up = until_caught_up
        # Under a supervisor a caught-up worker reports it and keeps its partitions until told to
        # stop: a worker that left on its own would hand partitions to peers that may be leaving
        # too, and partitions in flight between owners would be caught up by nobody.
        self.coordinated = coordinated
        self.on_status = on_status
        self.stop_event = stop_event or threading.Event()
        self.status_interval_s = status_interval_s
        self.decoder = FastDecoder(open_registry(settings))
        self.enricher = Enricher(load_reference(settings))
        db = settings.clickhouse.database
        self.table = f"{db}.{self.p.table}"
        self.state = StateStore(
            store, database=db, group_id=self.p.group_id, topic=self.p.topic, table=self.p.table, worker=worker_id
        )
        self.status = WorkerStatus(worker=worker_id)
        self.batch = _Batch()
        self.skip: dict[int, tuple[int, set[int]]] = {}  # partition → (recovery end, offsets already stored)
        self.latencies: deque[np.ndarray] = deque()
        self.latency_count = 0
        self.dlq_errors: list[str] = []
        self.assigned: set[int] = set()
        self.ever_assigned = False
        self._last_status = 0.0
        self._last_lag = 0.0
        self.start_offsets: dict[int, int] = {}
        self.closing = False
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None

    # --- lifecycle -----------------------------------------------------------------------

    def run(self) -> WorkerStatus:
        from pipelines import kafka

        self._check_table()
        self._consumer = kafka.consumer(
            self.settings,
            group_id=self.p.group_id,
            **{
                "partition.assignment.strategy": "cooperative-sticky",
                "client.id": f"nova-ingest-{self.worker_id}",
                "max.poll.interval.ms": 600_000,
                "session.timeout.ms": self.p.session_timeout_ms,
                "heartbeat.interval.ms": max(300, self.p.session_timeout_ms // 10),
                **FETCH_TUNING,
                "isolation.level": "read_committed",
            },
        )
        self._producer = kafka.producer(self.settings, **{"client.id": f"nova-dlq-{self.worker_id}"})
        consumer = self._consumer
        consumer.subscribe([self.p.topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost)
        self._set_state("running")
        idle_since: float | None = None
        try:
            while not self.stop_event.is_set():
                want = max(1, min(POLL_CHUNK, self.p.batch_max_rows - self.batch.rows))
                msgs = consumer.consume(num_messages=want, timeout=0.1)
                if msgs:
                    idle_since = None
                    self.status.caught_up = False
                    self._process(msgs)
                elif idle_since is None:
                    idle_since = time.monotonic()
                if self._batch_due():
                    self._flush()
                self._tick()
                if self.until_caught_up and idle_since is not None and time.monotonic() - idle_since >= IDLE_GRACE_S:
                    caught_up = self._caught_up(time.monotonic() - idle_since)
                    if not self.coordinated and caught_up:
                        break
                    if caught_up != self.status.caught_up:
                        self.status.caught_up = caught_up
                        self._tick(force=True)
        finally:
            self._set_state("stopping")
            try:
                if not self.batch.empty():
                    self._flush()
            except _StopDuringOutage:
                self.batch = _Batch()  # the ingest state lets the next worker finish it
                raise
            finally:
                self.closing = True
                consumer.close()  # leaves the group; offsets were committed per batch
                self._producer.flush(10)
                self._set_state("stopped")
        return self.status

    def _check_table(self) -> None:
        from pipelines.ingest.state import STATE_TABLE

        db = self.settings.clickhouse.database
        found = {
            r[0]
            for r in self.store.query_rows(
                "SELECT name FROM system.tables WHERE database = %(db)s AND name IN %(names)s",
                {"db": db, "names": (self.p.table, STATE_TABLE)},
            )
        }
        missing = {self.p.table, STATE_TABLE} - found
        if missing:
            raise StoreError(
                f"ClickHouse table(s) {', '.join(sorted(missing))} missing in database {db}",
                hint="run `nova provision --yes` first",
            )

    # --- rebalance callbacks -------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        from pipelines.kafka import OFFSET_STORED

        mine = [tp.partition for tp in partitions]
        states = self._retry("reading ingest state", lambda: self.state.read(mine))
        for tp in partitions:
            self.start_offsets.pop(tp.partition, None)
            st = states.get(tp.partition)
            if st is None:
                tp.offset = OFFSET_STORED
            elif st.state == COMMITTED:
                tp.offset = st.end_offset + 1
            else:  # a batch was in flight when its worker died: re-read it, insert only what's missing
                present = self._retry(
                    "checking stored offsets",
                    partial(self.state.present_offsets, st.partition, st.begin_offset, st.end_offset),
                )
                self.skip[tp.partition] = (st.end_offset, present)
                tp.offset = st.begin_offset
                self.status.recovered_partitions += 1
            if tp.offset >= 0:
                self.start_offsets[tp.partition] = tp.offset
        consumer.incremental_assign(partitions)
        self.assigned.update(mine)
        self.ever_assigned = True
        self.status.caught_up = False
        self.status.assigned = sorted(self.assigned)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        gone = {tp.partition for tp in partitions}
        self.status.caught_up = False
        if not self.batch.empty():
            if self.status.state == "waiting" or self.closing:
                # ClickHouse is down: hand the rows back, the next owner re-reads them from the state.
                self.batch.drop_partitions(gone)
            else:
                self._flush()
        for p in gone:
            self.skip.pop(p, None)
        self.assigned -= gone
        self.status.assigned = sorted(self.assigned)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Someone else may own them already: never write their rows.
        gone = {tp.partition for tp in partitions}
        self.batch.drop_partitions(gone)
        for p in gone:
            self.skip.pop(p, None)
        self.assigned -= gone

    # --- per chunk -----------------------------------------------------------------------

    def _process(self, msgs: list[Message]) -> None:
        from pipelines.kafka import VendorError as CKafkaError

        good: list[Message] = []
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() == CKafkaError._PARTITION_EOF:
                    continue
                if err.fatal():
                    raise KafkaError(f"consumer failed: {err.str()}")
                self.status.reason = f"kafka: {err.str()}"
                continue
            p = cast(int, m.partition())
            if p not in self.assigned:
                # Fetched before a rebalance took the partition away: its new owner reads it from the state.
                continue
            skip = self.skip.get(p)
            if skip is not None:
                end, present = skip
                off = cast(int, m.offset())
                if off > end:
                    del self.skip[p]
                elif off in present:
                    self.batch.add_offsets(p, off, off, 0, 0)
                    self.status.skipped_present += 1
                    continue
            good.append(m)
        if self.batch.opened_at is None:
            self.batch.opened_at = time.monotonic()
        if self.status.first_message_at is None:
            self.status.first_message_at = time.time()
        if not good:
            return
        values = [m.value() for m in good]
        decoded, positions, errors = self.decoder.decode(values)
        chunk = transform_table(
            decoded, positions, rules=self.p.rules, enricher=self.enricher, now_ms=int(time.time() * 1000)
        )
        dlq_by_pos: dict[int, tuple[str, str, str]] = {i: (reason, detail, "") for i, reason, detail in errors}
        for r in chunk.rejected:
            dlq_by_pos[r.index] = (r.reason, r.detail, r.rule)
        for pos, (reason, detail, rule) in dlq_by_pos.items():
            self._dead_letter(good[pos], reason, detail, rule)

        parts = np.fromiter((m.partition() for m in good), dtype=np.int64, count=len(good))
        offs = np.fromiter((m.offset() for m in good), dtype=np.int64, count=len(good))
        if chunk.table is not None and chunk.table.num_rows:
            idx = chunk.rows_index
            table = chunk.table.append_column("_topic", pa.array([self.p.topic] * len(idx), pa.string()))
            table = table.append_column("_partition", pa.array(parts[idx], pa.uint32()))
            table = table.append_column("_offset", pa.array(offs[idx], pa.uint64()))
            self.batch.tables.append(table)
            self.batch.rows += table.num_rows
        valid_mask = np.zeros(len(good), dtype=bool)
        valid_mask[chunk.rows_index] = True
        for p in np.unique(parts):
            sel = parts == p
            po = offs[sel]
            rows = int(valid_mask[sel].sum())
            self.batch.add_offsets(int(p), int(po.min()), int(po.max()), rows, int(sel.sum()) - rows)

    def _dead_letter(self, msg: Message, reason: str, detail: str, rule: str) -> None:
        assert self._producer is not None
        headers: list[tuple[str, str | bytes | None]] = [
            ("nova.reason", reason.encode()),
            ("nova.detail", detail.encode()[:1000]),
            ("nova.source.topic", (msg.topic() or "").encode()),
            ("nova.source.partition", str(msg.partition()).encode()),
            ("nova.source.offset", str(msg.offset()).encode()),
            ("nova.worker", self.worker_id.encode()),
            ("nova.failed_at", str(int(time.time() * 1000)).encode()),
        ]
        if rule:
            headers.append(("nova.rule", rule.encode()))
        self.status.rejected[reason] = self.status.rejected.get(reason, 0) + 1
        while True:
            try:
                self._producer.produce(
                    self.p.dlq_topic, value=msg.value(), key=msg.key(), headers=headers, on_delivery=self._dlq_delivered
                )
                return
            except BufferError:
                self._producer.poll(0.1)

    def _dlq_delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.dlq_errors.append(err.str())

    # --- per batch -----------------------------------------------------------------------

    def _batch_due(self) -> bool:
        b = self.batch
        if b.empty():
            return False
        if b.rows >= self.p.batch_max_rows:
            return True
        return b.opened_at is not None and time.monotonic() - b.opened_at >= self.p.batch_max_seconds

    def _flush(self) -> None:
        """Steps 1–5 of the module docstring; resumes at the failed step after an outage."""
        b = self.batch
        if b.empty():
            return
        attempt = 0
        while True:
            try:
                self._flush_steps(b, retry=attempt > 0)
                break
            except StoreError as exc:
                if not getattr(exc, "retryable", False):
                    raise
                attempt += 1
                self._wait_out(f"ClickHouse unavailable: {exc.message}", attempt)
                if b.empty():  # all its partitions were revoked meanwhile; their new owner re-reads them
                    break
            except KafkaError as exc:
                attempt += 1
                self._wait_out(f"dead-letter topic unavailable: {exc.message}", attempt)
        self._resume_all()
        self.batch = _Batch()

    def _flush_steps(self, b: _Batch, *, retry: bool) -> None:
        if b.phase == "dlq":
            assert self._producer is not None
            remaining = self._producer.flush(30)
            if remaining or self.dlq_errors:
                errors, self.dlq_errors = self.dlq_errors, []
                raise KafkaError(f"{remaining} dead-letter message(s) undelivered {errors[:3]}")
            b.phase = PENDING
        if b.phase == PENDING:
            self.state.write(b.ranges, PENDING)
            b.phase = "insert"
        if b.phase == "insert":
            started = time.perf_counter()
            if b.tables:
                table = pa.concat_tables(b.tables) if len(b.tables) > 1 else b.tables[0]
                if retry:
                    table = self._without_stored(table, b.ranges)
                now_ms = int(time.time() * 1000)
                if table.num_rows:
                    table = table.append_column(
                        "_ingested_at", pa.array(np.full(table.num_rows, now_ms), pa.timestamp("ms", tz="UTC"))
                    )
                    self.store.insert_arrow(self.table, table)
                self._record_latency(table, now_ms)
            self.status.last_insert_s = time.perf_counter() - started
            self.status.insert_s_total += self.status.last_insert_s
            b.phase = COMMITTED
        if b.phase == COMMITTED:
            self.state.write(b.ranges, COMMITTED)
            b.phase = "commit"
        if b.phase == "commit":
            self._commit_offsets(b)
        self.status.events += b.rows
        self.status.batches += 1
        self.status.last_batch_rows = b.rows

    def _without_stored(self, table: pa.Table, ranges: dict[int, Range]) -> pa.Table:
        """After a failed insert whose outcome is unknown: keep only offsets not stored yet."""
        keep = np.ones(table.num_rows, dtype=bool)
        parts = table["_partition"].to_numpy()
        offs = table["_offset"].to_numpy()
        for p, r in ranges.items():
            present = self.state.present_offsets(p, r.begin, r.end)
            if present:
                sel = parts == p
                keep &= ~(sel & np.isin(offs, np.fromiter(present, dtype=np.uint64)))
                self.status.skipped_present += len(present)
        return table.filter(pa.array(keep))

    def _commit_offsets(self, b: _Batch) -> None:
        from pipelines.kafka import TopicPartition

        assert self._consumer is not None
        offsets = [TopicPartition(self.p.topic, p, r.end + 1) for p, r in b.ranges.items() if p in self.assigned]
        if offsets:
            try:
                self._consumer.commit(offsets=offsets, asynchronous=True)
            except Exception as exc:  # informational only: ClickHouse's state decides where to resume
                self.status.reason = f"offset commit failed: {exc}"

    def _record_latency(self, table: pa.Table, now_ms: int) -> None:
        if not table.num_rows:
            return
        ev = table["event_time"].cast(pa.int64()).to_numpy()
        lat = now_ms - ev
        self.latencies.append(lat)
        self.latency_count += len(lat)
        while self.latency_count - len(self.latencies[0]) >= LATENCY_WINDOW:
            self.latency_count -= len(self.latencies.popleft())
        newest = int(ev.max())
        self.status.newest_event_ms = max(newest, self.status.newest_event_ms or newest)

    # --- waiting, status -----------------------------------------------------------------

    def _wait_out(self, reason: str, attempt: int) -> None:
        """Pause consumption, keep the group membership alive, back off, and let the caller retry."""
        assert self._consumer is not None
        self._set_state("waiting", reason)
        try:
            assignment = self._consumer.assignment()
            if assignment:
                self._consumer.pause(assignment)
        except Exception:
            pass
        deadline = time.monotonic() + min(BACKOFF_MAX_S, 0.5 * 2 ** min(attempt, 5))
        while time.monotonic() < deadline:
            if self.stop_event.is_set():
                # Asked to stop during an outage: leave; the state lets the next worker finish the batch.
                raise _StopDuringOutage(reason)
            self._consumer.poll(0.2)  # serves rebalance callbacks and heartbeats; paused: no messages
            self._tick(force=True)

    def _resume_all(self) -> None:
        if self.status.state == "waiting":
            assert self._consumer is not None
            assignment = self._consumer.assignment()
            if assignment:
                self._consumer.resume(assignment)
            self._set_state("running")

    def _retry(self, what: str, fn: Callable[[], Any]) -> Any:
        attempt = 0
        while True:
            try:
                return fn()
            except StoreError as exc:
                if not getattr(exc, "retryable", False):
                    raise
                attempt += 1
                self._set_state("waiting", f"ClickHouse unavailable while {what}: {exc.message}")
                time.sleep(min(BACKOFF_MAX_S, 0.5 * 2 ** min(attempt, 5)))
                if self.stop_event.is_set():
                    raise _StopDuringOutage(what) from None

    def _set_state(self, state: str, reason: str = "") -> None:
        self.status.state = state
        self.status.reason = reason
        self._tick(force=True)

    def _caught_up(self, idle_s: float) -> bool:
        if not self.assigned:
            # Coordinated: nothing to catch up on (the supervisor checks every partition has an owner).
            # Alone: more workers than partitions, or never assigned: give the group time to form.
            return self.coordinated or (self.ever_assigned and idle_s > 15.0) or idle_s > 30.0
        self._flush()
        lag = self._lag()
        # Every assigned partition must have a known lag of zero; unknown (no fetch yet) is not zero.
        return set(lag) >= self.assigned and all(v == 0 for v in lag.values())

    def _lag(self) -> dict[int, int]:
        """Messages behind the high watermark per assigned partition; -1 where not known yet."""
        from pipelines.kafka import TopicPartition

        assert self._consumer is not None
        lag: dict[int, int] = {}
        positions = self._consumer.position([TopicPartition(self.p.topic, p) for p in sorted(self.assigned)])
        for tp in positions:
            # The high watermark arrives with every fetch response: read librdkafka's copy. Asking
            # the broker would queue behind the pending fetch (up to fetch.wait.max.ms each).
            _, high = self._consumer.get_watermark_offsets(tp, cached=True)
            if high < 0:  # no fetch response for this partition yet
                lag[tp.partition] = -1
                continue
            pos = tp.offset if tp.offset >= 0 else self._start_position(tp)
            lag[tp.partition] = max(0, high - pos)
        self.status.lag = lag
        return lag

    def _start_position(self, tp: TopicPartition) -> int:
        """Where a partition that has not fetched yet will start."""
        assert self._consumer is not None
        if tp.partition in self.start_offsets:
            return self.start_offsets[tp.partition]
        committed = self._consumer.committed([tp], timeout=5)[0].offset
        if committed >= 0:
            return committed
        low, _ = self._consumer.get_watermark_offsets(tp, timeout=2, cached=False)
        return low

    def _tick(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_status < self.status_interval_s:
            return
        self._last_status = now
        if self.latencies:
            lat = np.concatenate(list(self.latencies))
            p50, p99 = np.percentile(lat, [50, 99])
            self.status.latency_p50_ms, self.status.latency_p99_ms = float(p50), float(p99)
        if self._consumer is not None and self.assigned and now - self._last_lag > 2.0 and not force:
            self._last_lag = now
            with contextlib.suppress(Exception):  # lag is for display only
                self._lag()
        self.status.updated_at = time.time()
        if self.on_status:
            self.on_status(self.status)


class _StopDuringOutage(NovaError):
    """Stopped while waiting for a service; the ingest state makes the next run finish the batch."""


def _worker_id(index: int) -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{index}"


def run_worker(
    *,
    settings: Settings,
    until_caught_up: bool,
    index: int = 0,
    on_status: Callable[[WorkerStatus], None] | None = None,
    stop_event: threading.Event | None = None,
    coordinated: bool = False,
) -> WorkerStatus:
    """Run one worker in this process until stopped (or caught up)."""
    from pipelines.clickhouse import open_store

    stop_event = stop_event or threading.Event()
    with open_store(settings) as store:
        worker = Worker(
            settings=settings,
            store=store,
            worker_id=_worker_id(index),
            until_caught_up=until_caught_up,
            on_status=on_status,
            stop_event=stop_event,
            coordinated=coordinated,
        )
        try:
            return worker.run()
        except _StopDuringOutage:
            return worker.status


def install_stop_handlers(stop_event: threading.Event) -> None:
    """SIGTERM/SIGINT: finish the current batch, commit, leave the group."""

    def handler(signum: int, frame: Any) -> None:
        stop_event.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def check_workers(settings: Settings, workers: int) -> None:
    if workers < 1:
        raise UsageError("--workers must be at least 1")
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
    from pipelines.ingest.supervisor import supervise

    check_workers(settings, workers)
    started = time.time()
    statuses = supervise(
        settings=settings,
        workers=workers,
        until_caught_up=until_caught_up,
        on_status=on_status,
        stop_event=stop_event or threading.Event(),
    )
    return _report(statuses, started, workers)


def _report(statuses: list[WorkerStatus], started: float, workers: int) -> IngestReport:
    elapsed = max(time.time() - started, 1e-9)
    events = sum(s.events for s in statuses)
    rejected: dict[str, int] = {}
    for s in statuses:
        for k, v in s.rejected.items():
            rejected[k] = rejected.get(k, 0) + v
    p50 = [s.latency_p50_ms for s in statuses if s.latency_p50_ms is not None]
    p99 = [s.latency_p99_ms for s in statuses if s.latency_p99_ms is not None]
    return IngestReport(
        events=events,
        rejected=rejected,
        batches=sum(s.batches for s in statuses),
        elapsed_s=elapsed,
        events_per_s=events / elapsed,
        latency_p50_ms=max(p50) if p50 else None,
        latency_p99_ms=max(p99) if p99 else None,
        workers=workers,
        recovered_partitions=sum(s.recovered_partitions for s in statuses),
        skipped_present=sum(s.skipped_present for s in statuses),
    )
