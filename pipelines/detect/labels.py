"""Fraud labels: the `transactions.labels` topic → the `fraud_labels` table, inside the ingest process.

Confirmed fraud (chargebacks) arrives days after the transaction. The labels feed merchant risk
(`pipelines.detect.merchant_risk`) and the model's training data, never the score of the
transaction they label: that score was computed and stored when the transaction went by.

A consumer group of its own (`<pipeline.group_id>-labels`), so label partitions are spread over
the ingest processes independently of the transaction partitions. At-least-once: offsets are
committed after the insert, and `fraud_labels` is a ReplacingMergeTree by transaction_id (the
newest label_time wins), so a label read twice is stored once. On the embedded store this thread
writes through the worker's one Store (it serializes calls), since chdb serves one process.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from pipelines.errors import NovaError, StoreError

if TYPE_CHECKING:
    from pipelines.clickhouse import Store
    from pipelines.config import Settings
    from pipelines.contracts.codec import Decoder
    from pipelines.kafka import Consumer

LABELS_TABLE = "fraud_labels"
POLL_BATCH = 5_000
POLL_TIMEOUT_S = 0.05  # labels reach fraud_labels soon after they are produced (a replay waits for them)
RETRY_S = 1.0


def labels_table(records: list[dict[str, Any]]) -> pa.Table:
    """`fraud_labels` rows from decoded `Label` records (label_time in epoch ms)."""
    return pa.table(
        {
            "transaction_id": pa.array([r["transaction_id"] for r in records], pa.string()),
            "is_fraud": pa.array([1 if r["is_fraud"] else 0 for r in records], pa.uint8()),
            "label_time": pa.array([int(r["label_time"]) for r in records], pa.timestamp("ms", tz="UTC")),
            "scenario": pa.array([r.get("scenario") or "" for r in records], pa.string()),
        }
    )


class LabelConsumer:
    """A background thread: poll labels, insert them, commit; counts what it stored and skipped."""

    def __init__(
        self, settings: Settings, store: Store, *, database: str, topic: str, group_id: str, decoder: Decoder
    ) -> None:
        self.settings = settings
        self.store = store
        self.target = f"{database}.{LABELS_TABLE}"
        self.topic = topic
        self.group_id = group_id
        self.decoder = decoder
        self.stored = 0
        self.undecodable = 0
        self.error = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="nova-labels", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        from pipelines import kafka

        consumer = kafka.consumer(
            self.settings, group_id=self.group_id, **{"client.id": f"nova-labels-{self.group_id}"}
        )
        try:
            consumer.subscribe([self.topic])
            while not self._stop.is_set():
                msgs = consumer.consume(num_messages=POLL_BATCH, timeout=POLL_TIMEOUT_S)
                if msgs:
                    self._store(consumer, msgs)
        except NovaError as exc:  # the thread must not die silently: the status shows it
            self.error = exc.message
        finally:
            with contextlib.suppress(Exception):
                consumer.close()

    def _store(self, consumer: Consumer, msgs: list[Any]) -> None:
        from pipelines.contracts.codec import DecodeError

        records = []
        for m in msgs:
            if m.error() is not None:
                continue
            try:
                records.append(self.decoder.decode(m.value()))
            except DecodeError:
                self.undecodable += 1
        while records and not self._stop.is_set():
            try:
                self.store.insert_arrow(self.target, labels_table(records))
                break
            except StoreError as exc:
                if not exc.retryable:
                    raise
                self.error = exc.message
                time.sleep(RETRY_S)
        else:
            if records:
                return  # stopping before they were stored: the next run reads them again
        self.stored += len(records)
        self.error = ""
        with contextlib.suppress(Exception):
            consumer.commit(asynchronous=False)
