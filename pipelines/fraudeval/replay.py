"""The corpus to Kafka in event-time order, each label just before the first transaction it precedes.

A label with label_time L is produced before the first transaction whose event time is ≥ L, so
the pipeline learns of a fraud at the moment (in event time) it became known — never earlier,
which would leak the answer into the merchant risk, and never much later. Transactions go to the
evaluation's topic keyed by card id (the contract's key), labels to its labels topic keyed by
transaction id, both Confluent-framed Avro with their subject's latest schema.

Merchant risk is read from ClickHouse as of whole steps of event time (`MerchantRisk`), so what a
worker sees at step B depends on what is stored by then. To make a replay's alerts independent of
its speed, `barrier` is called at every step boundary once a fraud is known: everything produced
before it (the transactions of every partition before B, the labels known by B) is stored before
the first transaction of step B leaves. Without it a fast replay computes risk from a window other
partitions have not filled yet (measured: 70 alerts at 5,000/s against 1,359 at 500/s).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from pipelines import kafka
from pipelines.contracts.codec import Encoder
from pipelines.contracts.columnar_writer import ColumnarEncoder, Floats
from pipelines.contracts.registry import open_registry
from pipelines.errors import KafkaError
from pipelines.synth.labels import LABEL_SUBJECT

if TYPE_CHECKING:
    from pipelines.config import Settings
    from pipelines.fraudeval.corpus import Corpus

CHUNK_ROWS = 2_000  # rows encoded at once; small enough that pacing and label interleaving stay fine-grained

OnProduced = Callable[[int, int], None]  # (transactions produced so far, labels produced so far)
Barrier = Callable[[], None]  # returns once everything produced so far is stored


@dataclass
class Produced:
    transactions: int = 0
    labels: int = 0
    elapsed_s: float = 0.0
    barriers: int = 0
    barrier_s: float = 0.0


class _Sender:
    """One producer, every delivery checked; blocks (polling) while librdkafka's queue is full."""

    def __init__(self, settings: Settings) -> None:
        self.failed = 0
        self.first_error = ""
        self._producer = kafka.producer(settings, **{"delivery.report.only.error": True, "on_delivery": self._report})

    def _report(self, err: kafka.VendorError | None, _msg: kafka.Message) -> None:
        if err is not None:
            self.failed += 1
            self.first_error = self.first_error or str(err)

    def send(self, topic: str, keys: list[str], values: list[bytes]) -> None:
        produce, poll = self._producer.produce, self._producer.poll
        for key, value in zip(keys, values, strict=True):
            while True:
                try:
                    produce(topic, value, key)
                    break
                except BufferError:
                    poll(0.05)
        poll(0)

    def flush(self) -> None:
        while self._producer.flush(1.0) > 0:
            pass
        if self.failed:
            raise KafkaError(
                f"{self.failed} message(s) of the evaluation were not delivered: {self.first_error}",
                hint="check the broker (`nova stack status`) and re-run",
            )


class _Chunk:
    """Rows of the corpus in the shape `ColumnarEncoder` encodes (a `ColumnBatch`)."""

    def __init__(self, table: pa.Table) -> None:
        self._n = table.num_rows
        cols: dict[str, Any] = {}
        for name in table.column_names:
            column = table[name]
            if name == "event_time":
                cols[name] = column.cast(pa.int64()).to_numpy()
            elif pa.types.is_floating(column.type):
                cols[name] = Floats(column.to_numpy(zero_copy_only=False).astype(np.float64))
            elif pa.types.is_integer(column.type):
                cols[name] = column.to_numpy()
            else:
                cols[name] = np.array(column.to_pylist(), dtype=object)
        self.columns = cols

    def __len__(self) -> int:
        return int(self._n)


def label_feed(corpus: Corpus, *, label_delay_ms: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(row indices, label times ms) of the labels to feed back, in label-time order.

    With a delay every fraud becomes known `label_delay_ms` after its event time (a legitimate
    transaction is never reported); without, every row with a label_time in the labels file is fed.
    """
    if label_delay_ms is not None:
        rows = np.flatnonzero(corpus.is_fraud)
        at = corpus.event_time_ms[rows] + label_delay_ms
    else:
        rows = np.flatnonzero(corpus.label_time_ms >= 0)
        at = corpus.label_time_ms[rows]
    order = np.argsort(at, kind="stable")
    return rows[order], at[order]


def produce_corpus(
    *,
    settings: Settings,
    corpus: Corpus,
    rows: tuple[int, int],
    feed_rows: np.ndarray,
    feed_at_ms: np.ndarray,
    labels_topic: str,
    rate: float | None,
    on_produced: OnProduced | None = None,
    barrier: Barrier | None = None,
    step_ms: int = 0,
    from_ms: int | None = None,
    until_ms: int | None = None,
) -> Produced:
    """Produce transactions [rows) of the corpus, each label just before its place; see the module docstring.

    `feed_rows`/`feed_at_ms` are the whole corpus's labels (`label_feed`): this part sends those
    whose place is inside it, and the last part also those known after the last transaction.
    Paced at `rate` transactions/s when given. With `barrier` and `step_ms`, see the module docstring;
    `Produced.barriers` counts the waits. A part that ends at an instant (`until_ms`, where a model
    is trained on what is known by then) also sends, after its last transaction, the labels known
    by that instant whose place is later; the part from that instant (`from_ms`) skips them.
    """
    registry = open_registry(settings)
    tx_id, _, tx_schema = registry.latest(settings.pipeline.subject)
    label_id, _, label_schema = registry.latest(LABEL_SUBJECT)
    encoder = ColumnarEncoder(tx_id, json.loads(tx_schema.raw))
    label_encoder = Encoder(label_id, label_schema.raw)
    table = corpus.transactions
    tx_ids = table["transaction_id"].to_pylist()
    topic = settings.pipeline.topic
    start, stop = rows
    # a label goes right before the first transaction whose event time is >= its label time
    place = np.searchsorted(corpus.event_time_ms, feed_at_ms, side="left")
    label = int(np.searchsorted(place, start, side="left"))
    if from_ms is not None:
        label = max(label, int(np.searchsorted(feed_at_ms, from_ms, side="right")))
    end_label = len(place) if stop >= table.num_rows else int(np.searchsorted(place, stop, side="left"))
    if until_ms is not None:
        end_label = max(end_label, int(np.searchsorted(feed_at_ms, until_ms, side="right")))
    sender = _Sender(settings)

    def send_labels(which: np.ndarray, at_ms: np.ndarray) -> None:
        _send_labels(sender, label_encoder, labels_topic, corpus, tx_ids, which, at_ms)

    done = Produced()
    started = time.perf_counter()
    event_ms = corpus.event_time_ms
    fraud_known = bool(corpus.is_fraud[feed_rows[:label]].any())  # an earlier part fed one
    step = int(event_ms[start] // step_ms) if step_ms and start < stop else 0
    row = start
    while row < stop:
        first = label
        while label < end_label and place[label] <= row:
            label += 1
        if label > first:
            _send_labels(
                sender, label_encoder, labels_topic, corpus, tx_ids, feed_rows[first:label], feed_at_ms[first:label]
            )
            done.labels += label - first
            fraud_known = fraud_known or bool(corpus.is_fraud[feed_rows[first:label]].any())
        end = min(row + CHUNK_ROWS, stop, int(place[label]) if label < end_label else stop)
        if barrier is not None and step_ms:
            row_step = int(event_ms[row] // step_ms)
            if row_step > step and fraud_known:
                sender.flush()
                waited = time.perf_counter()
                barrier()
                done.barriers += 1
                done.barrier_s += time.perf_counter() - waited
            step = row_step
            next_step = int(np.searchsorted(event_ms, (row_step + 1) * step_ms, side="left"))
            end = min(end, max(next_step, row + 1))
        if rate is not None:  # token bucket: transaction k may leave at started + k / rate
            wait = done.transactions / rate - (time.perf_counter() - started)
            if wait > 0:
                time.sleep(wait)
        chunk = table.slice(row, end - row)
        sender.send(topic, chunk["card_id"].to_pylist(), encoder.encode_chunk(_Chunk(chunk)))
        done.transactions += end - row
        row = end
        if on_produced is not None:
            on_produced(done.transactions, done.labels)
    if label < end_label:
        _send_labels(
            sender, label_encoder, labels_topic, corpus, tx_ids, feed_rows[label:end_label], feed_at_ms[label:end_label]
        )
        done.labels += end_label - label
    sender.flush()
    done.elapsed_s = time.perf_counter() - started
    if on_produced is not None:
        on_produced(done.transactions, done.labels)
    return done


def _send_labels(
    sender: _Sender,
    encoder: Encoder,
    topic: str,
    corpus: Corpus,
    tx_ids: list[str],
    rows: np.ndarray,
    at_ms: np.ndarray,
) -> None:
    records = [
        {
            "transaction_id": tx_ids[r],
            "is_fraud": bool(corpus.is_fraud[r]),
            "label_time": int(at),
            "scenario": str(corpus.scenario[r]) or None,
        }
        for r, at in zip(rows.tolist(), at_ms.tolist(), strict=True)
    ]
    sender.send(topic, [rec["transaction_id"] for rec in records], encoder.encode_batch(records))
