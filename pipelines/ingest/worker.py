"""One ingest worker: consume → transform → dead-letter → fenced exactly-once insert → commit.

The batch steps and the recovery after a crash are described in `pipelines.ingest`; how a worker
that lost its partitions is kept from writing them, in `pipelines.ingest.fencing`.
"""

from __future__ import annotations

import contextlib
import gc
import os
import socket
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, TypeVar, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.errors import KafkaError, NovaError, StoreError
from pipelines.ingest.detection import DetectionStage
from pipelines.ingest.fencing import Fence
from pipelines.ingest.latency import PIPELINE_SAMPLE, LatencyHistogram, StageLatency
from pipelines.ingest.models import WorkerStatus
from pipelines.ingest.state import COMMITTED, PENDING, STATE_COLUMNS, STATE_TABLE, Range, StateStore
from pipelines.ingest.transform import Enricher, transform_table

if TYPE_CHECKING:
    from pipelines.clickhouse import Store
    from pipelines.config import Settings
    from pipelines.kafka import Consumer, Message, Producer, TopicPartition, VendorError

T = TypeVar("T")

POLL_CHUNK = 10_000
BACKOFF_MAX_S = 10.0
# Big enough fetches for ~200k events/s, small enough that prefetched messages stay a few MiB.
FETCH_TUNING = {
    "fetch.max.bytes": 32 * 1024 * 1024,
    "max.partition.fetch.bytes": 4 * 1024 * 1024,
    "queued.max.messages.kbytes": 64 * 1024,
}
# Python's cyclic collector in a worker process (`run_worker(..., own_process=True)`). Measured over
# 3M events (100,000-row inserts, clickhouse-server, thread CPU inside gc callbacks, medians of 2):
# it took 2.0 of the main thread's 12.0 CPU-s with detection off and 3.4 of 16.8 with it on, since
# every gen-2 pass walks all the objects the imports made (pyarrow, numba, pydantic, the config...)
# and every gen-0 pass follows ~700 of the batch's Message objects. Freezing what exists once the
# worker is built (gc.freeze: never collected again) and collecting gen 0 every 10,000 allocations
# instead of 700 took it to 0.4 and 0.5 CPU-s, the main thread to 10.0 and 14.2.
GC_GEN0_THRESHOLD = 10_000
IDLE_GRACE_S = 1.0  # --until-caught-up: no message for this long, and zero lag, means caught up
IDLE_COMMIT_S = 2.0  # idle: commit positions that moved past transaction markers this often


class _Batch:
    def __init__(self) -> None:
        self.tables: list[pa.Table] = []
        self.ranges: dict[int, Range] = {}
        self.rows = 0
        self.opened_at: float | None = None
        self.phase = "dlq"
        # (partition, Kafka timestamp) of one valid row in PIPELINE_SAMPLE, for the pipeline latency.
        self.samples: list[tuple[np.ndarray, np.ndarray]] = []
        # After the insert: latencies by partition (event: every row; pipeline: the samples),
        # recorded once the ownership check after the insert has said which partitions were ours.
        self.latency: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
        # For the stage breakdown (wall clock, epoch s): when each chunk was decoded and its valid
        # rows; when the flush, the insert and its return happened (the last flush attempt's).
        self.chunks: list[tuple[float, int]] = []
        self.flush_started: float | None = None
        self.insert_started = 0.0
        self.insert_done = 0.0
        self.alerts_s = 0.0  # in the detection stage's after_insert (alerts written before the commit)

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

    def drop_partitions(self, partitions: set[int]) -> int:
        """Forget these partitions' rows and offsets; returns the valid rows dropped."""
        dropped = sum(self.ranges[p].rows for p in partitions if p in self.ranges)
        for p in partitions:
            self.ranges.pop(p, None)
        if not partitions or not self.tables:
            return dropped
        gone = pa.array(sorted(partitions), pa.uint32())
        kept = [t.filter(pc.invert(pc.is_in(t["_partition"], value_set=gone))) for t in self.tables]
        self.tables = [t for t in kept if t.num_rows]
        self.rows = sum(t.num_rows for t in self.tables)
        lost = np.fromiter(partitions, dtype=np.int64)
        samples = []
        for parts, stamps in self.samples:
            keep = ~np.isin(parts, lost)
            samples.append((parts[keep], stamps[keep]))
        self.samples = samples
        return dropped


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
        self.fence = Fence(store, self.state, database=db, table=self.p.table, worker=worker_id)
        self.status = WorkerStatus(worker=worker_id)
        self.detection = DetectionStage(settings=settings, store=store, worker_id=worker_id, status=self.status)
        self.batch = _Batch()
        # The batch whose insert runs on a thread while the next one is consumed (see `_flush`),
        # and the one the flush steps are working on (a revoke during an outage drops from both).
        self._inflight: _Batch | None = None
        self._insert_thread: threading.Thread | None = None
        self._insert_error: BaseException | None = None
        self._flushing: _Batch | None = None
        self.skip: dict[int, tuple[int, set[int]]] = {}  # partition → (recovery end, offsets already stored)
        self.epochs: dict[int, int] = {}  # partition → the claim this worker holds on it
        self.fenced: set[int] = set()  # assigned by Kafka, but claimed by another worker: not ours to write
        self.verify: dict[int, tuple[int, int]] = {}  # recovered ranges to check for copies after the insert
        self.latency_event = LatencyHistogram()
        self.latency_pipeline = LatencyHistogram()
        self.stages = StageLatency()
        self._last_stage_encode = 0.0
        self.dlq_errors: list[str] = []
        self.assigned: set[int] = set()
        self.ever_assigned = False
        self._last_status = 0.0
        self._last_lag = 0.0
        self._last_idle_commit = 0.0
        self._committed: dict[int, int] = {}  # partition → the offset last committed to Kafka
        self._rejoin_wanted = False
        self.start_offsets: dict[int, int] = {}
        self.closing = False
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None

    def run(self) -> WorkerStatus:
        from pipelines import kafka

        self._check_table()
        self.fence.prepare()
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
        self._subscribe()
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
                if self._inflight is not None and not self._insert_running():
                    self._finish_inflight()  # commit it now: its rows are queryable already
                if self._batch_due() or (not msgs and not self.batch.empty()):
                    # full, old enough, or nothing more to read (a 0.1 s fetch came back empty):
                    # waiting out batch_max_seconds then would only add latency
                    self._flush(overlap=self.p.overlap_insert)
                if self._rejoin_wanted:
                    self._rejoin()
                if idle_since is not None and self.batch.empty() and self._inflight is None:
                    self._commit_idle_positions()
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
                self._flush()  # the insert in flight too
            except _StopDuringOutage:
                self.batch = _Batch()  # the ingest state lets the next worker finish it
                raise
            finally:
                self.closing = True
                consumer.close()  # leaves the group; offsets were committed per batch
                self._producer.flush(10)
                self.fence.close()
                self.detection.close()
                self._set_state("stopped")
        return self.status

    def _subscribe(self) -> None:
        assert self._consumer is not None
        self._consumer.subscribe(
            [self.p.topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )

    def _check_table(self) -> None:
        db = self.settings.clickhouse.database
        needed = {self.p.table: ("_epoch",), STATE_TABLE: STATE_COLUMNS}
        found: dict[str, set[str]] = {}
        for table, column in self.store.query_rows(
            "SELECT table, name FROM system.columns WHERE database = %(db)s AND table IN %(names)s",
            {"db": db, "names": tuple(needed)},
        ):
            found.setdefault(str(table), set()).add(str(column))
        missing = sorted(set(needed) - set(found))
        if missing:
            raise StoreError(
                f"ClickHouse table(s) {', '.join(missing)} missing in database {db}",
                hint="run `nova provision --yes` first",
            )
        lacking = [f"{t}.{c}" for t, cols in needed.items() for c in cols if c not in found[t]]
        if lacking:
            raise StoreError(
                f"ClickHouse column(s) {', '.join(lacking)} missing in database {db}: the tables predate "
                "ownership claims (fencing of stalled workers)",
                hint="run `nova provision --yes`: it adds the columns and keeps the data",
            )

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        from pipelines.kafka import OFFSET_STORED

        self._join_insert()  # the claim below uses the store, which serves one statement at a time
        mine = [tp.partition for tp in partitions]
        claims = self._retry("claiming partitions in the ingest state", lambda: self.state.claim(mine))
        recovering = [p for p, st in claims.inherited.items() if st.state == PENDING and p not in claims.lost]
        drained = True
        if recovering:
            drained = self._retry("waiting for inserts of the previous owner", self.fence.wait_for_inflight)
        for tp in partitions:
            p = tp.partition
            self.start_offsets.pop(p, None)
            self.epochs[p] = claims.epochs[p]
            st = claims.inherited.get(p)
            if p in claims.lost:  # a concurrent claim beat ours: let Kafka assign it afresh
                tp.offset = OFFSET_STORED
                self._fence_assigned({p})
            elif st is None:
                tp.offset = OFFSET_STORED
            elif st.state == COMMITTED:
                tp.offset = st.end_offset + 1
            else:  # a batch was in flight when its worker died or stalled: re-read it, insert only what's missing
                copies = self._retry(
                    "checking stored offsets",
                    partial(self.fence.copies, self.p.topic, p, st.begin_offset, st.end_offset),
                )
                self._repair(p, copies)
                self.skip[p] = (st.end_offset, set(copies))
                if not drained:
                    self.verify[p] = (st.begin_offset, st.end_offset)
                tp.offset = st.begin_offset
                self.status.recovered_partitions += 1
            if tp.offset >= 0:
                self.start_offsets[p] = tp.offset
        self.detection.assign({tp.partition: tp.offset for tp in partitions if tp.partition not in self.fenced})
        consumer.incremental_assign(partitions)
        self.assigned.update(mine)
        self.ever_assigned = True
        self.status.caught_up = False
        self.status.assigned = sorted(self.assigned)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        gone = {tp.partition for tp in partitions}
        self.status.caught_up = False
        if self.status.state == "waiting" or self.closing:
            # ClickHouse is down: hand the rows back, the next owner re-reads them from the state.
            for b in self._open_batches():
                b.drop_partitions(gone)
        else:
            self._flush()  # the insert in flight, then the batch being filled
        self._forget(gone)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Someone else may own them already: never write their rows.
        gone = {tp.partition for tp in partitions}
        self._join_insert()  # an insert already running writes them under our claim: fencing step 5 covers it
        for b in self._open_batches():
            b.drop_partitions(gone)
        self._forget(gone)

    def _open_batches(self) -> list[_Batch]:
        """Every batch not committed yet: in flight, in the flush steps, being filled."""
        found: list[_Batch] = []
        for b in (self._inflight, self._flushing, self.batch):
            if b is not None and all(b is not f for f in found):
                found.append(b)
        return found

    def _forget(self, gone: set[int]) -> None:
        self.detection.revoke(gone)
        for p in gone:
            self.skip.pop(p, None)
            self.epochs.pop(p, None)
            self.verify.pop(p, None)
            self._committed.pop(p, None)
        self.fenced -= gone
        if not self.fenced:  # Kafka took them away by itself: no rejoin needed
            self._rejoin_wanted = False
        self.assigned -= gone
        self.status.assigned = sorted(self.assigned)

    def _fence_assigned(self, partitions: set[int]) -> None:
        """Kafka still gives us partitions another worker has claimed since: write nothing of them,
        and rejoin the group so that Kafka assigns them afresh (to us with a new claim, or to another)."""
        self.fenced |= partitions
        self.status.fenced_partitions += len(partitions)
        self._rejoin_wanted = True

    def _rejoin(self) -> None:
        """Leave the group and join again; the revoke flushes what is ours, the assignment claims anew."""
        assert self._consumer is not None
        self._finish_inflight()
        self._rejoin_wanted = False
        self.status.reason = f"partition(s) {sorted(self.fenced)} claimed by another worker: rejoining the group"
        self._consumer.unsubscribe()
        deadline = time.monotonic() + self.p.session_timeout_ms / 1000
        while self.assigned and time.monotonic() < deadline:
            self._consumer.consume(num_messages=POLL_CHUNK, timeout=0.1)  # serves the revoke; messages re-read later
        self._forget(set(self.assigned))
        self.batch.drop_partitions(set(self.batch.ranges))
        self._subscribe()

    def _process(self, msgs: list[Message]) -> None:
        from pipelines.kafka import Message
        from pipelines.kafka import VendorError as CKafkaError

        consumed_at = time.time()
        good: list[Message] = []
        present: list[int] = []  # positions in `good` of rows already stored (a recovered range)
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
            if p not in self.assigned or p in self.fenced:
                # Fetched before a rebalance took the partition away, or claimed by a successor:
                # its owner reads it from the state.
                continue
            skip = self.skip.get(p)
            if skip is not None:
                end, present_offsets = skip
                off = cast(int, m.offset())
                if off > end:
                    del self.skip[p]
                elif off in present_offsets:
                    # Stored already, not inserted again; still scored, in offset order (the detector
                    # takes a recovered range from Kafka: the table may hold it only in part yet).
                    self.status.skipped_present += 1
                    present.append(len(good))
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
        stored = np.zeros(len(good), dtype=bool)
        stored[present] = True
        for pos, (reason, detail, rule) in dlq_by_pos.items():
            if not stored[pos]:
                self._dead_letter(good[pos], reason, detail, rule)

        # map over the unbound methods: a third cheaper than a generator, per message.
        parts = np.fromiter(map(Message.partition, good), dtype=np.int64, count=len(good))
        offs = np.fromiter(map(Message.offset, good), dtype=np.int64, count=len(good))
        if chunk.table is not None and chunk.table.num_rows:
            idx = chunk.rows_index
            table = chunk.table.append_column("_topic", pa.array([self.p.topic] * len(idx), pa.string()))
            table = table.append_column("_partition", pa.array(parts[idx], pa.uint32()))
            table = table.append_column("_offset", pa.array(offs[idx], pa.uint64()))
            scoring = time.time()
            self.detection.score(table, good, idx)
            scored = time.time()
            if present:
                new = ~stored[idx]
                table, idx = table.filter(pa.array(new)), idx[new]
            if table.num_rows:
                self.batch.tables.append(table)
            self.batch.rows += table.num_rows
            picked = idx[::PIPELINE_SAMPLE]
            stamps = np.fromiter((good[i].timestamp()[1] for i in picked), dtype=np.int64, count=len(picked))
            self.batch.samples.append((parts[picked], stamps))
            done = time.time()
            self.stages.record_many("fetch", int(consumed_at * 1000) - stamps, weight=PIPELINE_SAMPLE, at=done)
            self.stages.record("decode", (done - consumed_at - (scored - scoring)) * 1000, table.num_rows, at=done)
            self.stages.record("detect", (scored - scoring) * 1000, table.num_rows, at=done)
            self.batch.chunks.append((done, table.num_rows))
        valid_mask = np.zeros(len(good), dtype=bool)
        valid_mask[chunk.rows_index] = True
        valid_mask &= ~stored
        for p in np.unique(parts):
            sel = parts == p
            po = offs[sel]
            rows = int(valid_mask[sel].sum())
            dlq = int((sel & ~stored).sum()) - rows
            self.batch.add_offsets(int(p), int(po.min()), int(po.max()), rows, dlq)

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

    def _dlq_delivered(self, err: VendorError | None, msg: object) -> None:
        if err is not None:
            self.dlq_errors.append(err.str())

    def _batch_due(self) -> bool:
        b = self.batch
        if b.empty():
            return False
        if b.rows >= self.p.batch_max_rows:
            return True
        return b.opened_at is not None and time.monotonic() - b.opened_at >= self.p.batch_max_seconds

    def _flush(self, *, overlap: bool = False) -> None:
        """Finish the insert in flight, then take the batch being filled through the batch steps.

        With `overlap` (the main loop), the steps stop once the new batch's insert has started on a
        thread; the loop goes on consuming and decoding the next batch meanwhile, and the steps after
        the insert run on this thread once it returned (`_finish_inflight`). The order per partition
        stays pending → insert → committed → commit, one batch at a time: the next batch's steps
        begin only after the previous batch's commit. Only the insert leaves this thread, so the
        store (one statement at a time), the consumer and the detection stage are used from here.
        """
        if self.batch.flush_started is None and not self.batch.empty():
            self.batch.flush_started = time.time()  # waiting for the insert in flight is its `queue` stage
        self._finish_inflight()
        b = self.batch
        if b.empty():
            return
        self.batch = _Batch()
        self._flush_batch(b, overlap=overlap)

    def _flush_batch(self, b: _Batch, *, overlap: bool = False, failed: BaseException | None = None) -> None:
        """The batch steps of `pipelines.ingest`; resumes at the failed step after an outage."""
        attempt = 0
        self._flushing = b
        try:
            while not b.empty():
                try:
                    if failed is not None:  # the insert on the thread failed: handled as if here
                        error, failed = failed, None
                        raise error
                    self._flush_steps(b, retry=attempt > 0, overlap=overlap)
                    break
                except StoreError as exc:
                    if not exc.retryable:
                        raise
                    attempt += 1
                    self._wait_out(f"ClickHouse unavailable: {exc.message}", attempt)
                    # if all its partitions were revoked meanwhile, their new owner re-reads them
                except KafkaError as exc:
                    attempt += 1
                    self._wait_out(f"dead-letter topic unavailable: {exc.message}", attempt)
        finally:
            self._flushing = None
        self._resume_all()

    def _start_insert(self, b: _Batch) -> None:
        def insert() -> None:
            try:
                self._insert(b, retry=False)
            except BaseException as exc:  # handed to this thread by _finish_inflight
                self._insert_error = exc

        b.phase = "inserting"
        self._inflight = b
        self._insert_error = None
        self._insert_thread = threading.Thread(target=insert, name=f"nova-insert-{self.worker_id}", daemon=True)
        self._insert_thread.start()

    def _insert_running(self) -> bool:
        return self._insert_thread is not None and self._insert_thread.is_alive()

    def _join_insert(self) -> None:
        """Wait for the insert running on its thread, if any (its batch stays in flight)."""
        if self._insert_thread is not None:
            self._insert_thread.join()
            self._insert_thread = None

    def _finish_inflight(self) -> None:
        """The steps after the insert for the batch in flight; after a failed insert, its retries."""
        b = self._inflight
        if b is None:
            return
        self._join_insert()
        self._inflight = None
        error, self._insert_error = self._insert_error, None
        b.phase = "insert" if error is not None else "verify"
        self._flush_batch(b, failed=error)

    def _flush_steps(self, b: _Batch, *, retry: bool, overlap: bool = False) -> None:
        if b.flush_started is None:
            b.flush_started = time.time()
        if b.phase == "dlq":
            assert self._producer is not None
            remaining = self._producer.flush(30)
            if remaining or self.dlq_errors:
                errors, self.dlq_errors = self.dlq_errors, []
                raise KafkaError(f"{remaining} dead-letter message(s) undelivered {errors[:3]}")
            b.phase = "check"
        if b.phase == "check":  # before recording `pending`: are these partitions still ours?
            self._fenced_out(b, set(b.ranges) - self.fence.owned(self._epochs_of(b)))
            if b.empty():
                return
            b.phase = PENDING
        if b.phase == PENDING:
            self.state.write(b.ranges, PENDING, self.epochs)
            b.phase = "insert"
        if b.phase == "insert":
            if overlap and not retry:
                self._start_insert(b)
                return
            self._insert(b, retry=retry)
            b.phase = "verify"
        if b.phase == "verify":  # after the insert, before recording `committed`: still ours?
            lost = set(b.ranges) - self.fence.owned(self._epochs_of(b))
            for p in lost:  # we may have written them just before the successor claimed
                r = b.ranges[p]
                self._repair(p, self.fence.copies(self.p.topic, p, r.begin, r.end))
            self._fenced_out(b, lost)
            self._record_latency(b)
            alerting = time.time()
            self.detection.after_insert(b.ranges)
            b.alerts_s += time.time() - alerting
            self._verify_recovered(b)
            b.phase = COMMITTED
        if b.phase == COMMITTED:
            self.state.write(b.ranges, COMMITTED, self.epochs)
            b.phase = "commit"
        if b.phase == "commit":
            self._commit_offsets(b)
        rows = sum(r.rows for r in b.ranges.values())
        self.status.events += rows
        self.status.batches += 1
        self.status.last_batch_rows = rows
        self._record_stages(b, rows)

    def _record_stages(self, b: _Batch, rows: int) -> None:
        """The batch's share of the stage breakdown (pipelines.ingest.latency.STAGES)."""
        if not rows or b.flush_started is None or not b.insert_done:
            return
        now = time.time()
        for consumed_at, n in b.chunks:
            self.stages.record("accumulate", (b.flush_started - consumed_at) * 1000, n, at=now)
        self.stages.record("queue", (b.insert_started - b.flush_started) * 1000, rows, at=now)
        self.stages.record("insert", (b.insert_done - b.insert_started) * 1000, rows, at=now)
        self.stages.record("alerts", b.alerts_s * 1000, rows, at=now)
        self.stages.record("commit", (now - b.insert_done - b.alerts_s) * 1000, rows, at=now)

    def _epochs_of(self, b: _Batch) -> dict[int, int]:
        return {p: self.epochs[p] for p in b.ranges}

    def _fenced_out(self, b: _Batch, lost: set[int]) -> None:
        if not lost:
            return
        self.status.fenced_rows += b.drop_partitions(lost)
        if lost & self.assigned:
            self._fence_assigned(lost & self.assigned)
        self.status.fenced_partitions += len(lost - self.assigned)
        self.status.reason = f"partition(s) {sorted(lost)} claimed by another worker: their rows dropped"

    def _insert(self, b: _Batch, *, retry: bool) -> None:
        started = time.perf_counter()
        b.latency = None
        if b.tables:
            table = pa.concat_tables(b.tables) if len(b.tables) > 1 else b.tables[0]
            if retry:
                table = self._without_stored(table, b.ranges)
            if table.num_rows:
                b.insert_started = time.time()
                now_ms = int(b.insert_started * 1000)
                epochs = self._epochs_of(b)
                lut = np.zeros(max(epochs) + 1, dtype=np.uint64)
                lut[list(epochs)] = list(epochs.values())
                parts = table["_partition"].to_numpy()
                table = table.append_column(
                    "_ingested_at", pa.array(np.full(table.num_rows, now_ms), pa.timestamp("ms", tz="UTC"))
                )
                table = table.append_column("_epoch", pa.array(lut[parts], pa.uint64()))
                if not self.fence.insert(table, epochs):
                    raise StoreError(
                        f"ClickHouse restarted during the insert into {self.table}; outcome unknown",
                        hint="retrying with the offsets already stored left out",
                        retryable=True,
                    )
                b.insert_done = time.time()
                done_ms = int(b.insert_done * 1000)
                event = table["event_time"].cast(pa.int64()).to_numpy()
                sampled = np.concatenate([p for p, _ in b.samples]) if b.samples else np.zeros(0, np.int64)
                stamps = np.concatenate([ts for _, ts in b.samples]) if b.samples else np.zeros(0, np.int64)
                b.latency = (parts, done_ms - event, sampled, done_ms - stamps)
                newest = int(event.max())
                self.status.newest_event_ms = max(newest, self.status.newest_event_ms or newest)
        self.status.last_insert_s = time.perf_counter() - started
        self.status.insert_s_total += self.status.last_insert_s

    def _record_latency(self, b: _Batch) -> None:
        if b.latency is None:
            return
        parts, event, sampled, pipeline = b.latency
        if len(b.ranges) < len(np.unique(parts)):  # fenced after the insert: count only what was ours
            ours = np.fromiter(b.ranges, dtype=np.int64)
            event = event[np.isin(parts, ours)]
            pipeline = pipeline[np.isin(sampled, ours)]
        self.latency_event.record(event)
        self.latency_pipeline.record(pipeline, weight=PIPELINE_SAMPLE)

    def _without_stored(self, table: pa.Table, ranges: dict[int, Range]) -> pa.Table:
        """After a failed insert whose outcome is unknown: keep only offsets not stored yet."""
        keep = np.ones(table.num_rows, dtype=bool)
        parts = table["_partition"].to_numpy()
        offs = table["_offset"].to_numpy()
        for p, r in ranges.items():
            present = self.fence.copies(self.p.topic, p, r.begin, r.end)
            if present:
                sel = parts == p
                keep &= ~(sel & np.isin(offs, np.fromiter(present, dtype=np.uint64)))
                self.status.skipped_present += len(present)
        return table.filter(pa.array(keep))

    def _repair(self, partition: int, copies: dict[int, list[int]]) -> None:
        if any(len(epochs) > 1 for epochs in copies.values()):
            self.status.duplicates_repaired += self.fence.repair(self.p.topic, partition, copies)

    def _verify_recovered(self, b: _Batch) -> None:
        """A recovery whose wait for the previous owner's inserts timed out: once our rows of the
        range are in, look for offsets stored twice (fencing step 5)."""
        for p, (begin, end) in list(self.verify.items()):
            r = b.ranges.get(p)
            if r is not None and r.end >= end:
                self._repair(p, self.fence.copies(self.p.topic, p, begin, end))
                del self.verify[p]

    def _commit_offsets(self, b: _Batch) -> None:
        ours = sorted(p for p in b.ranges if p in self.assigned and p not in self.fenced)
        if not ours:
            return
        # The consumer's position is past transaction markers (control records, never delivered);
        # committing it rather than last offset + 1 leaves no phantom lag of 1 after a transaction.
        positions = self._positions(ours)
        # A partition with messages in the batch being filled: its position is past them, not ours to commit.
        filling = self.batch.ranges if self.batch is not b else {}
        offsets = {
            p: b.ranges[p].end + 1 if p in filling else max(b.ranges[p].end + 1, positions.get(p, -1)) for p in ours
        }
        self._commit(offsets)

    def _commit_idle_positions(self) -> None:
        """Nothing in the batch and nothing arriving: commit positions that moved past markers only."""
        now = time.monotonic()
        if now - self._last_idle_commit < IDLE_COMMIT_S or not self.epochs:
            return
        self._last_idle_commit = now
        ours = sorted(p for p in self.assigned if p not in self.fenced and p in self.epochs)
        with contextlib.suppress(Exception):  # informational, like every offset commit here
            ahead = {p: o for p, o in self._positions(ours).items() if o > self._committed.get(p, -1)}
            if ahead:
                self._commit(ahead)

    def _positions(self, partitions: list[int]) -> dict[int, int]:
        from pipelines.kafka import TopicPartition

        assert self._consumer is not None
        if not partitions:
            return {}
        tps = self._consumer.position([TopicPartition(self.p.topic, p) for p in partitions])
        return {tp.partition: tp.offset for tp in tps if tp.offset >= 0}

    def _commit(self, offsets: dict[int, int]) -> None:
        from pipelines.kafka import TopicPartition

        assert self._consumer is not None
        try:
            self._consumer.commit(
                offsets=[TopicPartition(self.p.topic, p, o) for p, o in offsets.items()], asynchronous=True
            )
            self._committed.update(offsets)
        except Exception as exc:  # informational only: ClickHouse's state decides where to resume
            self.status.reason = f"offset commit failed: {exc}"

    def _wait_out(self, reason: str, attempt: int) -> None:
        """Pause consumption, keep the group membership alive, back off, and let the caller retry."""
        assert self._consumer is not None
        self._set_state("waiting", reason)
        with contextlib.suppress(Exception):
            assignment = self._consumer.assignment()
            if assignment:
                self._consumer.pause(assignment)
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

    def _retry(self, what: str, fn: Callable[[], T]) -> T:
        attempt = 0
        while True:
            try:
                return fn()
            except StoreError as exc:
                if not exc.retryable:
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
        if self.fenced:  # someone else's claim on a partition Kafka gives us: not settled yet
            return False
        self._flush()
        lag = self._lag()
        # Every assigned partition must have a known lag of zero; unknown (no fetch yet) is not zero.
        return set(lag) >= self.assigned and all(v == 0 for v in lag.values())

    def _lag(self) -> dict[int, int]:
        """Messages behind the high watermark per assigned partition; -1 where not known yet.

        Measured from the consumer's position, which librdkafka moves past transaction markers:
        after a transactional producer, the marker behind the last message is no lag.
        """
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
            return int(committed)
        low, _ = self._consumer.get_watermark_offsets(tp, timeout=2, cached=False)
        return int(low)

    def _tick(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_status < self.status_interval_s:
            return
        self._last_status = now
        s = self.status
        s.latency_p50_ms = self.latency_event.percentile_ms(50)
        s.latency_p99_ms = self.latency_event.percentile_ms(99)
        s.latency_event_hist = self.latency_event.encode()
        s.latency_pipeline_hist = self.latency_pipeline.encode()
        if force or now - self._last_stage_encode >= 5.0:  # six more histograms: not every tick
            self._last_stage_encode = now
            s.stage_hists = self.stages.encode()
            s.stage_windows = self.stages.encoded_windows()
        if self._consumer is not None and self.assigned and now - self._last_lag > 2.0 and not force:
            self._last_lag = now
            with contextlib.suppress(Exception):  # lag is for display only
                self._lag()
        s.updated_at = time.time()
        if self.on_status:
            self.on_status(s)


class _StopDuringOutage(NovaError):
    """Stopped while waiting for a service; the ingest state makes the next run finish the batch."""


def worker_id(index: int) -> str:
    """Unique among live workers: host, process id, index in the process."""
    return f"{socket.gethostname()}-{os.getpid()}-{index}"


def run_worker(
    *,
    settings: Settings,
    until_caught_up: bool,
    index: int = 0,
    on_status: Callable[[WorkerStatus], None] | None = None,
    stop_event: threading.Event | None = None,
    coordinated: bool = False,
    own_process: bool = False,
) -> WorkerStatus:
    """Run one worker in this process until stopped (or caught up).

    `own_process`: the process is the worker's alone (the supervisor's child), so the worker may
    tune the process's garbage collector (GC_GEN0_THRESHOLD).
    """
    from pipelines.clickhouse import open_store

    stop_event = stop_event or threading.Event()
    with open_store(settings) as store:
        worker = Worker(
            settings=settings,
            store=store,
            worker_id=worker_id(index),
            until_caught_up=until_caught_up,
            on_status=on_status,
            stop_event=stop_event,
            coordinated=coordinated,
        )
        if own_process:
            gc.collect()
            gc.freeze()
            gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])
        try:
            return worker.run()
        except _StopDuringOutage:
            return worker.status
