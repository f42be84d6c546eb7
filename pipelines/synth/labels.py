"""Ground truth to the labels topic: confirmed fraud, each message stamped with when it became known.

Only fraud is "confirmed" (a chargeback); legit transactions never produce a label message, as
in a bank, and stay legit in the labels file. Messages are Avro ``Label`` records with the
registry's framing (subject ``transactions.labels-value``), key = transaction id, in label-time
order, with the Kafka timestamp set to the label time, so a consumer that replays in event time
can feed each one back when it was known. A label whose time is still in the future when the run
ends is not known yet and is not produced (the broker would refuse its timestamp anyway: Kafka 4
rejects timestamps more than `log.message.timestamp.after.max.ms`, 1 h, ahead); it stays in the
labels file.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines import kafka
from pipelines.contracts.codec import Encoder
from pipelines.contracts.registry import open_registry
from pipelines.errors import KafkaError

if TYPE_CHECKING:
    from pipelines.config import Settings

LABEL_SUBJECT: Final = "transactions.labels-value"


@dataclass(frozen=True)
class LabelsProduced:
    """How many fraud labels went to the topic, and how many were not known yet at `cutoff_ms`."""

    produced: int
    pending: int
    cutoff_ms: int


def label_messages(
    labels: pa.Table, encoder: Encoder, *, cutoff_ms: int | None = None
) -> tuple[list[str], list[bytes], list[int]]:
    """(keys, values, timestamps) of the fraud rows of a labels table (``corpus.LABELS_SCHEMA``), by label time.

    `cutoff_ms`: only the labels known by then (label_time ≤ cutoff).
    """
    fraud = labels.filter(pc.equal(labels["is_fraud"], True))
    if cutoff_ms is not None:
        known = pc.less_equal(pc.cast(fraud["label_time"], pa.int64()), pa.scalar(cutoff_ms, pa.int64()))
        fraud = fraud.filter(known)
    times = pc.cast(fraud["label_time"], pa.int64()).to_numpy(zero_copy_only=False)
    order = np.argsort(times, kind="stable")
    ids = fraud["transaction_id"].to_pylist()
    scenarios = fraud["scenario"].to_pylist()
    keys = [ids[i] for i in order.tolist()]
    stamps = times[order].tolist()
    records = [
        {"transaction_id": ids[i], "is_fraud": True, "label_time": int(times[i]), "scenario": scenarios[i]}
        for i in order.tolist()
    ]
    return keys, encoder.encode_batch(records), stamps


def produce_labels(*, settings: Settings, labels: pa.Table, topic: str) -> LabelsProduced:
    """Produce the fraud labels of `labels` known by now to `topic`; every message acknowledged.

    Raises KafkaError when the topic does not exist or a message is not delivered.
    """
    registry = open_registry(settings)
    schema_id, _version, schema = registry.latest(LABEL_SUBJECT)
    encoder = Encoder(schema_id, json.loads(schema.raw))
    cutoff_ms = int(time.time() * 1000)
    keys, values, stamps = label_messages(labels, encoder, cutoff_ms=cutoff_ms)
    fraud = int(pc.sum(labels["is_fraud"]).as_py() or 0)
    kafka.check_reachable(settings)
    if topic not in kafka.describe_topics(settings, [topic]):
        raise KafkaError(
            f"labels topic '{topic}' does not exist on {settings.kafka.bootstrap_servers}",
            hint="create it with `nova provision --yes`, or pass an existing topic",
        )
    failed: list[str] = []

    def delivered(err: kafka.VendorError | None, _msg: kafka.Message) -> None:
        if err is not None:
            failed.append(err.str())

    producer = kafka.producer(settings, **{"delivery.report.only.error": True, "on_delivery": delivered})
    for key, value, stamp in zip(keys, values, stamps, strict=True):
        while True:
            try:
                producer.produce(topic, value, key, timestamp=stamp)
                break
            except BufferError:
                producer.poll(0.05)
    while producer.flush(1.0) > 0:
        pass
    if failed:
        raise KafkaError(
            f"{len(failed)} of {len(values)} label(s) to topic '{topic}' were not delivered: {failed[0]}",
            hint="check the broker (`nova stack status`) and re-run",
        )
    return LabelsProduced(produced=len(values), pending=fraud - len(values), cutoff_ms=cutoff_ms)
