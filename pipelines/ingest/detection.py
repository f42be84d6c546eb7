"""The fraud detector inside an ingest worker: what `pipelines.ingest.worker` calls, and nothing else.

Why in the worker: the batch is already decoded and enriched there; a card's state follows the
worker's partition assignment (topic key = card_id); on the embedded store only this process may
open the database; and an alert can go out right after the insert of its row commits.

One `Detector` per assigned partition, fed that partition's valid rows in offset order:

- **score** (per polled chunk, before the insert): rows at or below the partition's position (the
  last offset the detector reflects) are skipped, so a row reaches the detector once whatever the
  worker re-reads. Alert rows wait in memory for their batch.
- **after_insert** (the batch is stored and the ownership check after the insert passed; before
  the worker records `committed`): the batch's alerts go to the `alerts` table and topic
  (`pipelines.detect.alerts`), its scores to `fraud_scores` when `detection.record_scores`. The
  worker may already be scoring the next batch while this one is inserted, so held rows carry
  their last offset and only those the batch's ranges cover go out.
- **snapshots** (`pipelines.detect.snapshot`): every SNAPSHOT_INTERVAL_S, once the partition has
  scored SNAPSHOT_ROWS_PER_CARD rows per card of its state since the last, the state is captured
  between two chunks (it then reflects exactly the rows up to the partition's position) and saved
  once that offset is stored, so a snapshot never reflects a row that is not in the table.
- **assign**: restore the newest snapshot (or start empty, and rebuild from the partition's rows
  within the detector's longest window) and replay, with emit=False, the stored rows after its
  offset and before the worker's resume offset: those are committed, so their alerts are out (the
  worker records `committed` only after `after_insert`). Rows from the resume offset on belong to
  a `pending` range that may be visible only in part (a stalled previous owner's insert can land
  while this worker reads): they are never taken from the table. Kafka redelivers them, and the
  worker passes the ones already stored to score() too, without inserting them again; their
  alerts go out in after_insert (the alerts table collapses copies, the topic is at-least-once).
- **revoke**: snapshot the partitions whose state is exactly their stored rows, drop the detectors.

So a kill -9 or a stall anywhere leaves the alerts of a run without them: each row is scored
once by a detector whose state is the same deterministic function of the partition's earlier
rows. "The same rows" means the rows as stored: a table whose event_time keeps whole seconds
(DateTime, ClickHouse before 20.1) has the stream's rows scored with event_time truncated like it.

Merchant risk (`pipelines.detect.merchant_risk`) changes at whole steps of event time, at the
first row whose watermark reaches the step, so where a partition's stream sees new risk does not
depend on batches; a wall-clock refresh every `detection.merchant_risk_refresh_s` re-reads the
current step for labels that arrived since (live traffic). Labels are consumed by
`pipelines.detect.labels` in a thread of this process.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.errors import StoreError
from pipelines.ingest.latency import LatencyHistogram

if TYPE_CHECKING:
    from pipelines.clickhouse import Store
    from pipelines.config import Settings
    from pipelines.detect.alerts import AlertSink
    from pipelines.detect.engine import Detector
    from pipelines.detect.labels import LabelConsumer
    from pipelines.detect.merchant_risk import MerchantRisk, Risk
    from pipelines.detect.snapshot import SnapshotStore
    from pipelines.ingest.models import WorkerStatus
    from pipelines.ingest.state import Range
    from pipelines.kafka import Message, Producer

SNAPSHOT_INTERVAL_S = 10.0
# ...and at least this many rows per card in the state since the last one: a snapshot costs ~2 µs a
# card (serialise, zstd, insert), so with millions of cards a clock alone would make it the worker's
# largest cost. This bounds it to ~0.5 µs a row, and a successor's replay to 4 rows a card.
SNAPSHOT_ROWS_PER_CARD = 4
ALERT_SUBJECT = "transactions.alerts-value"
LONGEST_WINDOW_MS = 30 * 86_400_000  # the detector's longest window (features: 1 min … 30 d)
STATUS_INTERVAL_S = 0.5
MS = pa.timestamp("ms", tz="UTC")
# The batch columns of the design (pipelines.detect.engine.Detector.process), in ClickHouse order.
BATCH_TYPES: dict[str, pa.DataType] = {
    "transaction_id": pa.string(),
    "event_time": MS,
    "card_id": pa.string(),
    "merchant_id": pa.string(),
    "merchant_category": pa.string(),
    "amount_minor": pa.int64(),
    "amount_reporting_minor": pa.int64(),
    "currency": pa.string(),
    "country": pa.string(),
    "channel": pa.string(),
    "status": pa.string(),
    "device_id": pa.string(),
    "ip_address": pa.string(),
    "latitude": pa.float64(),
    "longitude": pa.float64(),
}


_F = TypeVar("_F", bound=Callable[..., None])


def _cpu_timed(method: _F) -> _F:
    """Adds the calling thread's CPU time in `method` to the stage's `cpu_s` (what detection costs a worker)."""

    @functools.wraps(method)
    def timed(self: DetectionStage, *args: Any, **kwargs: Any) -> None:
        start = time.thread_time()
        try:
            method(self, *args, **kwargs)
        finally:
            self.cpu_s += time.thread_time() - start

    return cast("_F", timed)


class _Scores:
    """One partition's outputs for some rows, concatenated over merchant-risk steps."""

    def __init__(self) -> None:
        self.score: list[np.ndarray] = []
        self.alert: list[np.ndarray] = []
        self.rules: list[tuple[str, ...]] = []

    def add(self, score: np.ndarray, alert: np.ndarray, rules: Sequence[tuple[str, ...]]) -> None:
        self.score.append(np.asarray(score, dtype=np.float32))
        self.alert.append(np.asarray(alert, dtype=bool))
        self.rules.extend(rules)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, list[tuple[str, ...]]]:
        if not self.score:
            return np.zeros(0, np.float32), np.zeros(0, bool), []
        return np.concatenate(self.score), np.concatenate(self.alert), self.rules


class DetectionStage:
    """The detectors of one worker's partitions; every method is a no-op when detection is off."""

    def __init__(self, *, settings: Settings, store: Store, worker_id: str, status: WorkerStatus) -> None:
        ds = settings.detection
        self.enabled = ds.enabled
        self.status = status
        self.cpu_s = 0.0  # thread CPU in assign/revoke/score/after_insert (see _cpu_timed)
        if not self.enabled:
            return
        from pipelines.detect.alerts import AlertSink
        from pipelines.detect.config import load_detection_config
        from pipelines.detect.features import STATE_VERSION
        from pipelines.detect.merchant_risk import MerchantRisk
        from pipelines.detect.model import FraudModel
        from pipelines.detect.snapshot import SnapshotStore

        self.settings = settings
        self.store = store
        self.worker_id = worker_id
        self.ds = ds
        self.config = load_detection_config(settings.resolve(ds.config))
        self.model = FraudModel.load(settings.resolve(ds.model)) if ds.model else None
        self.model_version = self.model.version if self.model is not None else ""
        p = settings.pipeline
        db = settings.clickhouse.database
        self.topic = p.topic
        self.transactions = f"{db}.{p.table}"
        # The card state does not depend on the rules or the model (configs/detection.yaml may change
        # freely): only its format version decides which snapshots this code can restore.
        self.snapshots: SnapshotStore = SnapshotStore(
            store, database=db, group_id=p.group_id, topic=p.topic, config_hash=f"state-v{STATE_VERSION}"
        )
        self.risk: MerchantRisk = MerchantRisk.for_settings(settings, store)
        self.sink: AlertSink = AlertSink(store, database=db, producer=None, topic=ds.alerts_topic, encoder=None)
        self.detectors: dict[int, Detector] = {}
        self.position: dict[int, int] = {}  # partition → last offset the detector reflects
        self.stored: dict[int, int] = {}  # partition → last offset of a batch after_insert has seen
        self.snapshot_offset: dict[int, int] = {}
        self.snapshot_at: dict[int, float] = {}  # monotonic time of the last candidate (0: none yet)
        self.rows_since: dict[int, int] = {}  # rows scored since that candidate
        self.risk_step: dict[int, int] = {}  # partition → the merchant-risk step its detector is at
        self.risk_map: dict[int, Risk] = {}  # partition → the risk its detector has
        # Per partition, (last offset of the chunk, rows) awaiting their batch's insert. The worker
        # may score the next batch while this one is inserted: after_insert takes only the chunks
        # its ranges cover.
        self.pending: dict[int, list[tuple[int, pa.Table]]] = {}  # alert rows
        self.pending_scores: dict[int, list[tuple[int, pa.Table]]] = {}
        # A snapshot taken between chunks, (offset it reflects, bytes), saved once that offset is stored.
        self.candidate: dict[int, tuple[int, bytes]] = {}
        self.latency_alert = LatencyHistogram()
        self.latency_alert_insert = LatencyHistogram()
        self.labels: LabelConsumer | None = None
        self._producer: Producer | None = None
        self._last_refresh = time.monotonic()
        self._last_status = 0.0
        self.alerts = 0
        self.event_digits = 3  # decimal digits of a second the table keeps of event_time (see _start)

    def _start(self) -> None:
        """Kafka clients and the table's event-time precision, once the worker is running (the first assignment)."""
        if self._producer is not None:
            return
        from pipelines.clickhouse.chtypes import datetime_parts

        db, table = self.transactions.split(".", 1)
        found = self.store.query_rows(
            "SELECT type FROM system.columns WHERE database = %(db)s AND table = %(t)s AND name = 'event_time'",
            {"db": db, "t": table},
        )
        parts = datetime_parts(str(found[0][0])) if found else None
        # A server before 20.1 stores DateTime (seconds): the detector must see the row as stored,
        # or a successor replaying it from the table would build a different state than Kafka's rows did.
        self.event_digits = min(3, parts[0]) if parts is not None else 3
        from pipelines import kafka
        from pipelines.contracts.codec import Decoder
        from pipelines.contracts.registry import open_registry
        from pipelines.detect.labels import LabelConsumer

        registry = open_registry(self.settings)
        latest = registry.latest(ALERT_SUBJECT)  # one record schema, whatever the topic is called
        self._producer = kafka.producer(self.settings, **{"client.id": f"nova-alerts-{self.worker_id}"})
        self.sink.connect(self._producer, latest.id, latest.schema.raw)
        self.labels = LabelConsumer(
            self.settings,
            self.store,
            database=self.settings.clickhouse.database,
            topic=self.ds.labels_topic,
            group_id=f"{self.settings.pipeline.group_id}-labels",
            decoder=Decoder(registry),
        )
        self.labels.start()

    @_cpu_timed
    def assign(self, resume: Mapping[int, int]) -> None:
        """Partitions this worker now owns, each with the first offset Kafka will deliver (< 0: unknown)."""
        if not self.enabled:
            return
        self._start()
        for partition, offset in resume.items():
            self._restore(partition, offset)

    @_cpu_timed
    def revoke(self, partitions: set[int]) -> None:
        """Partitions this worker no longer owns: snapshot the ones whose state is all stored rows."""
        if not self.enabled:
            return
        for p in partitions:
            if p not in self.detectors:
                continue
            with contextlib.suppress(StoreError):  # a snapshot saves replay work; its loss costs only that
                if self.stored.get(p, -1) == self.position.get(p):
                    self._save(p, self.position[p], self.detectors[p].snapshot())
                elif p in self.candidate and self.candidate[p][0] <= self.stored.get(p, -1):
                    self._save(p, *self.candidate[p])
            for d in (
                self.detectors,
                self.position,
                self.stored,
                self.snapshot_offset,
                self.snapshot_at,
                self.rows_since,
            ):
                d.pop(p, None)
            self.candidate.pop(p, None)
            self.risk_step.pop(p, None)
            self.risk_map.pop(p, None)
            self.pending.pop(p, None)
            self.pending_scores.pop(p, None)

    @_cpu_timed
    def score(self, table: pa.Table, messages: Sequence[Message], rows_index: np.ndarray) -> None:
        """Score a polled chunk's valid rows (the `transactions` columns, _partition, _offset).

        `messages[rows_index[i]]` is the Kafka message of row i (for the alert's produced_at).
        """
        if not self.enabled or not table.num_rows:
            return
        if self.event_digits < 3:
            table = _event_time_as_stored(table, self.event_digits)
        parts = table["_partition"].to_numpy()
        offsets = table["_offset"].to_numpy().astype(np.int64)
        for p in np.unique(parts).tolist():
            det = self.detectors.get(p)
            if det is None:
                continue
            rows = np.flatnonzero((parts == p) & (offsets > self.position[p]))
            if not len(rows):
                continue
            if len(rows) == table.num_rows:
                sub = table
            elif rows[-1] - rows[0] + 1 == len(rows):  # a consumed chunk comes in runs per partition: no copy
                sub = table.slice(int(rows[0]), len(rows))
            else:
                sub = table.take(pa.array(rows))
            if p not in self.candidate and self._snapshot_due(p, det):
                # Between chunks the state is exactly the rows up to `position`: keep it until they are stored.
                self.candidate[p] = (self.position[p], det.snapshot())
                self.snapshot_at[p] = time.monotonic()
                self.rows_since[p] = 0
            scores = self._process(p, det, sub, emit=True)
            self.rows_since[p] += len(rows)
            self.position[p] = int(offsets[rows[-1]])
            stamps = _kafka_ms(messages, rows_index, rows, scores[1] if not self.ds.record_scores else None)
            self._queue(p, self.position[p], sub, scores, stamps)
        self._refresh_risk()

    @_cpu_timed
    def after_insert(self, ranges: Mapping[int, Range]) -> None:
        """The batch of `ranges` is stored and still this worker's: write its alerts and scores."""
        if not self.enabled:
            return
        inserted_ms = int(time.time() * 1000)
        ours = [p for p in ranges if p in self.detectors]
        alerts = [t for p in ours for last, t in self.pending.get(p, ()) if last <= ranges[p].end]
        scores = [t for p in ours for last, t in self.pending_scores.get(p, ()) if last <= ranges[p].end]
        if alerts:
            table = pa.concat_tables(alerts)
            alerted_ms = int(time.time() * 1000)
            table = table.set_column(
                table.schema.get_field_index("alerted_at"),
                "alerted_at",
                pa.array(np.full(table.num_rows, alerted_ms), MS),
            )
            self.sink.write(table)
            # Measured to when the alerts are out (table insert and topic acknowledged), not to alerted_at.
            out_ms = int(time.time() * 1000)
            produced = table["produced_at"].cast(pa.int64()).to_numpy()
            self.latency_alert.record(out_ms - produced)
            self.latency_alert_insert.record(np.full(table.num_rows, out_ms - inserted_ms))
            self.alerts += table.num_rows
        if scores:
            self.sink.write_scores(pa.concat_tables(scores))
        for p in ours:
            end = ranges[p].end
            for held in (self.pending, self.pending_scores):
                if p in held:
                    held[p] = [(last, t) for last, t in held[p] if last > end]
            # Every row of the batch up to its end went through score(); offsets past the last valid
            # row (dead letters) have no row: the state reflects the whole range.
            if self.position[p] < end:
                self.position[p] = end
            self.stored[p] = max(end, self.stored.get(p, -1))
            candidate = self.candidate.get(p)
            if candidate is not None and candidate[0] <= self.stored[p]:
                del self.candidate[p]
                self._save(p, *candidate)
        self._report()

    def close(self) -> None:
        """The worker stops (its partitions were revoked, and snapshotted, by the consumer's close)."""
        if not self.enabled:
            return
        if self.labels is not None:
            self.labels.stop()
        if self._producer is not None:
            self._producer.flush(10)
        self._report(force=True)

    def _restore(self, p: int, resume: int) -> None:
        from pipelines.detect.engine import Detector

        det: Detector | None = None
        snap = None
        try:
            snap = self.snapshots.load(p)
            if snap is not None:
                det = Detector.restore(self.config, snap.data, model=self.model)
        except StoreError:  # unreadable, or of another state version; a store outage fails the rebuild below
            det = None
        if det is None:
            snap = None
            det = Detector(self.config, model=self.model)
        position = snap.offset if snap is not None else -1
        self.detectors[p] = det
        self.position[p] = position
        self.stored[p] = position
        self.snapshot_offset[p] = position
        self.snapshot_at[p] = 0.0  # due at the first stored batch: the next owner then replays little
        self.rows_since[p] = 0
        self.risk_step[p] = -1
        # Only rows before `resume` (committed: their alerts are out). A `pending` range may be visible
        # in part, its previous owner's insert still landing: Kafka redelivers it and score() takes it.
        replay = self._stored_rows(p, position, resume, rebuild=snap is None)
        if replay.num_rows:
            self._process(p, det, replay, emit=False)
            self.position[p] = int(replay["_offset"][-1].as_py())
            self.stored[p] = self.position[p]
        self._set_risk(p, det, self.risk.step_of(det.watermark_ms) if det.watermark_ms else 0)

    def _stored_rows(self, p: int, after: int, before: int, *, rebuild: bool) -> pa.Table:
        """The partition's stored rows in (`after`, `before`) (`before` < 0: no bound), in offset order.

        A rebuild reads only the rows within the detector's longest window.
        """
        cols = ", ".join(BATCH_TYPES)
        where = "_topic = %(t)s AND _partition = %(p)s AND _offset > %(after)s"
        if before >= 0:
            where += " AND _offset < %(before)s"
        if rebuild:
            where += (
                f" AND event_time >= (SELECT max(event_time) FROM {self.transactions} "
                f"WHERE _topic = %(t)s AND _partition = %(p)s) - INTERVAL {LONGEST_WINDOW_MS // 1000} SECOND"
            )
        table = self.store.query_arrow(
            f"SELECT {cols}, _offset FROM {self.transactions} WHERE {where} ORDER BY _offset LIMIT 1 BY _offset",
            {"t": self.topic, "p": p, "after": after, "before": before},
        )
        return _conform(table)

    def _process(
        self, p: int, det: Detector, rows: pa.Table, *, emit: bool
    ) -> tuple[np.ndarray, np.ndarray, list[tuple[str, ...]]]:
        """`det.process` over `rows`, switching merchant risk at each event-time step the watermark reaches."""
        from pipelines.detect.merchant_risk import NO_RISK

        out = _Scores()
        if not emit:  # warm-up: no score is kept, so risk only matters from the end on
            det.process(rows, emit=False)
            return out.arrays()
        event = rows["event_time"].cast(pa.int64()).to_numpy()
        watermark = np.maximum.accumulate(np.maximum(event, det.watermark_ms or np.iinfo(np.int64).min))
        steps = (watermark // self.risk.step_ms) * self.risk.step_ms
        starts = [0, *(np.flatnonzero(np.diff(steps)) + 1).tolist()]
        # Cut the rows only where the risk itself changes: a step with the same risk (no labels
        # known yet, or a batch within one step, the usual case live) costs no extra process() call.
        segments: list[tuple[int, int, Risk]] = []
        current = self.risk_map.get(p)
        for a in starts:
            step = int(steps[a])
            risk = self.risk.as_of(step) if step != self.risk_step[p] else current
            self.risk_step[p] = step
            if risk != current or not segments:
                segments.append((a, step, risk if risk is not None else NO_RISK))
                current = risk
        bounds = [a for a, _, _ in segments[1:]] + [len(steps)]
        for (a, step, risk), b in zip(segments, bounds, strict=True):
            if risk is not self.risk_map.get(p):
                risk.apply(det, step)
                self.risk_map[p] = risk
            part = rows.slice(a, b - a) if (a, b) != (0, len(steps)) else rows
            scored = det.process(part, emit=True)
            out.add(scored.score, scored.alert, scored.rules)
        return out.arrays()

    def _set_risk(self, p: int, det: Detector, step: int, *, refresh: bool = False) -> None:
        risk = self.risk.as_of(step, refresh=refresh)
        if risk != self.risk_map.get(p):
            risk.apply(det, step)
        self.risk_map[p] = risk
        self.risk_step[p] = step

    def _refresh_risk(self) -> None:
        """Every merchant_risk_refresh_s: the labels that arrived since, for each detector's current step."""
        now = time.monotonic()
        if now - self._last_refresh < self.ds.merchant_risk_refresh_s:
            return
        self._last_refresh = now
        refreshed: set[int] = set()
        for p, det in self.detectors.items():
            step = self.risk_step.get(p, -1)
            if step >= 0:
                self._set_risk(p, det, step, refresh=step not in refreshed)
                refreshed.add(step)

    def _queue(
        self,
        p: int,
        last: int,
        rows: pa.Table,
        scores: tuple[np.ndarray, np.ndarray, list[tuple[str, ...]]],
        stamps: np.ndarray,
    ) -> None:
        """Hold the chunk's alert rows (and every score, if recorded) until its batch is stored."""
        score, alert, rules = scores
        if self.ds.record_scores:
            self.pending_scores.setdefault(p, []).append((last, _score_rows(rows, score, rules, stamps)))
        if alert.any():
            picked = np.flatnonzero(alert)
            found = rows.take(pa.array(picked))
            alerts = _alert_rows(found, score[picked], [rules[i] for i in picked], stamps[picked], self.model_version)
            self.pending.setdefault(p, []).append((last, alerts))

    def _snapshot_due(self, p: int, det: Detector) -> bool:
        at = self.snapshot_at[p]
        if not at:
            return True
        return time.monotonic() - at >= SNAPSHOT_INTERVAL_S and self.rows_since[p] >= SNAPSHOT_ROWS_PER_CARD * det.cards

    def _save(self, p: int, offset: int, data: bytes) -> None:
        if offset > self.snapshot_offset.get(p, -1):
            self.snapshots.save(p, offset, data, self.worker_id)
            self.snapshot_offset[p] = offset

    def _report(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_status < STATUS_INTERVAL_S:
            return
        self._last_status = now
        self.status.alerts = self.alerts
        self.status.detection_cpu_s = self.cpu_s
        self.status.latency_alert_hist = self.latency_alert.encode()
        self.status.latency_alert_insert_hist = self.latency_alert_insert.encode()


def _kafka_ms(
    messages: Sequence[Message], rows_index: np.ndarray, rows: np.ndarray, only: np.ndarray | None
) -> np.ndarray:
    """Kafka timestamps (ms) of `rows` of the chunk; with `only`, of just those rows (zeros elsewhere)."""
    picked = rows_index[rows]
    out = np.zeros(len(rows), dtype=np.int64)
    which = np.flatnonzero(only) if only is not None else np.arange(len(rows))
    for i in which.tolist():
        out[i] = messages[int(picked[i])].timestamp()[1]
    return out


def _event_time_as_stored(table: pa.Table, digits: int) -> pa.Table:
    """`event_time` truncated to 10**-digits s, as a DateTime/DateTime64(digits) column stores it."""
    from pipelines.clickhouse.chtypes import ticks

    scale = 10 ** (3 - digits)
    ms = pc.multiply(ticks(table["event_time"].cast(MS), digits), scale).cast(MS)
    return table.set_column(table.schema.get_field_index("event_time"), "event_time", ms)


def _conform(table: pa.Table) -> pa.Table:
    """Stored rows with the batch types (ClickHouse may return dictionaries, seconds, other widths)."""
    cols = {}
    for name in table.column_names:
        column = table[name]
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        want = BATCH_TYPES.get(name)
        if want is not None and column.type != want:
            column = column.cast(want)
        cols[name] = column
    return pa.table(cols)


def _rules_column(rules: list[tuple[str, ...]]) -> pa.Array:
    """The rules of each row as a list<string> column, built from the few distinct combinations."""
    distinct: dict[tuple[str, ...], int] = {}
    index = np.fromiter((distinct.setdefault(r, len(distinct)) for r in rules), dtype=np.int32, count=len(rules))
    return pa.array(list(distinct), pa.list_(pa.string())).take(pa.array(index))


def _alert_rows(
    rows: pa.Table, score: np.ndarray, rules: list[tuple[str, ...]], produced_ms: np.ndarray, model_version: str
) -> pa.Table:
    n = rows.num_rows
    return pa.table(
        {
            "event_time": rows["event_time"],
            "transaction_id": rows["transaction_id"],
            "card_id": rows["card_id"],
            "merchant_id": rows["merchant_id"],
            "amount_reporting_minor": rows["amount_reporting_minor"],
            "risk_score": rows["risk_score"],
            "alerted_at": pa.array(np.zeros(n, np.int64), MS),
            "rules": _rules_column(rules),
            "score": pa.array(score, pa.float32()),
            "produced_at": pa.array(produced_ms, MS),
            "model_version": pa.array([model_version] * n, pa.string()),
        }
    )


def _score_rows(rows: pa.Table, score: np.ndarray, rules: list[tuple[str, ...]], produced_ms: np.ndarray) -> pa.Table:
    n = rows.num_rows
    return pa.table(
        {
            "transaction_id": rows["transaction_id"],
            "card_id": rows["card_id"],
            "merchant_id": rows["merchant_id"],
            "event_time": rows["event_time"],
            "score": pa.array(score, pa.float32()),
            "rules": _rules_column(rules),
            "produced_at": pa.array(produced_ms, MS),
            "scored_at": pa.array(np.full(n, int(time.time() * 1000)), MS),
        }
    )
