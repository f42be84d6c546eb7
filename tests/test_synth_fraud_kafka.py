"""Labelled traffic on the real Kafka: the labels topic round trip; a labelled corpus produced in event-time order."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import kafka
from pipelines.config import Settings, load_settings
from pipelines.contracts.codec import Decoder
from pipelines.contracts.registry import open_registry
from pipelines.synth.fraud import SCENARIOS, FraudSpec
from pipelines.synth.labelled import generate_labelled
from pipelines.synth.labels import LABEL_SUBJECT
from tests.conftest import unique

pytestmark = pytest.mark.integration


@pytest.fixture
def settings() -> Iterator[tuple[Settings, list[str]]]:
    made: list[str] = []
    yield load_settings(None, environ={}), made
    with contextlib.suppress(Exception):
        kafka.delete_topics(load_settings(None, environ={}), made, missing_ok=True)


def _topic(settings: Settings, made: list[str], suffix: str, partitions: int) -> str:
    name = f"{unique('synthfraud')}.{suffix}"
    kafka.create_topic(settings, name, partitions=partitions, replication_factor=1, config={})
    made.append(name)
    return name


def _read(settings: Settings, topic: str, expected: int, partitions: int) -> list[Any]:
    """Every message of `topic` (expected: how many), in partition then offset order."""
    consumer = kafka.consumer(settings, group_id=unique("synthread"))
    consumer.assign([kafka.TopicPartition(topic, p, kafka.OFFSET_BEGINNING) for p in range(partitions)])
    out: list[Any] = []
    deadline = time.monotonic() + 60
    try:
        while len(out) < expected and time.monotonic() < deadline:
            out += [m for m in consumer.consume(num_messages=5000, timeout=0.5) if m.error() is None]
        time.sleep(0.5)  # anything beyond the expected count would be a bug: give it a moment to show
        out += [m for m in consumer.consume(num_messages=5000, timeout=0.5) if m.error() is None]
    finally:
        consumer.close()
    return sorted(out, key=lambda m: (m.partition(), m.offset()))


def test_fraud_labels_round_trip_through_the_labels_topic(settings: tuple[Settings, list[str]], tmp_path: Path) -> None:
    s, made = settings
    topic = _topic(s, made, "labels", 1)
    labels_out = tmp_path / "labels.parquet"
    report = generate_labelled(
        settings=s, count=4000, seed=21, fraud=FraudSpec(rate=0.05, label_delay_ms=(2 * 3_600_000, 30 * 3_600_000)),
        spread_days=3, out=tmp_path / "tx.parquet",
        labels_out=labels_out, labels_topic=topic,
    )  # fmt: skip
    labels = pq.read_table(labels_out)
    everything = labels.filter(labels["is_fraud"]).to_pylist()
    assert report.labels_cutoff_ms is not None and len(everything) == 200
    cutoff = report.labels_cutoff_ms
    fraud = [r for r in everything if r["label_time"].timestamp() * 1000 <= cutoff]
    assert report.labels_produced == len(fraud) > 100  # those not known yet (label time after the run) stay out
    assert report.labels_pending == 200 - len(fraud) > 0
    messages = _read(s, topic, len(fraud), 1)
    assert len(messages) == len(fraud)
    registry = open_registry(s)
    label_id = registry.latest(LABEL_SUBJECT)[0]
    decoder = Decoder(registry)
    got = []
    for m in messages:
        assert int.from_bytes(m.value()[1:5], "big") == label_id  # registry framing, the Label subject
        record = decoder.decode(m.value())
        assert m.key().decode() == record["transaction_id"]
        assert m.timestamp()[1] == record["label_time"]  # Kafka time = when the fraud became known
        got.append((record["transaction_id"], record["is_fraud"], record["label_time"], record["scenario"]))
    want = [(r["transaction_id"], True, int(r["label_time"].timestamp() * 1000), r["scenario"]) for r in fraud]
    assert sorted(got) == sorted(want)
    assert [g[2] for g in got] == sorted(g[2] for g in got), "labels go out in label-time order"


def test_labelled_corpus_goes_to_kafka_in_event_time_order_without_its_labels(
    settings: tuple[Settings, list[str]], tmp_path: Path
) -> None:
    s, made = settings
    topic = _topic(s, made, "tx", 3)
    labels_out = tmp_path / "labels.parquet"
    report = generate_labelled(
        settings=s, count=3000, seed=22, fraud=FraudSpec(rate=0.04), spread_days=3, topic=topic, labels_out=labels_out
    )
    assert report.kafka is not None and report.kafka.produced == report.kafka.valid == 3000
    messages = _read(s, topic, 3000, 3)
    assert len(messages) == 3000
    decoder = Decoder(open_registry(s))
    records = [decoder.decode(m.value()) for m in messages]
    labels = pq.read_table(labels_out)
    assert sorted(r["transaction_id"] for r in records) == sorted(labels["transaction_id"].to_pylist())
    for p in range(3):
        times = [r["event_time"] for m, r in zip(messages, records, strict=True) if m.partition() == p]
        assert times == sorted(times), f"partition {p} is not in event-time order"
    text = json.dumps(records, default=str)
    assert not any(name in text for name in SCENARIOS)
    fraud_ids = set(labels.filter(pa.compute.equal(labels["is_fraud"], True))["transaction_id"].to_pylist())
    assert len(fraud_ids) == 120 and fraud_ids <= {r["transaction_id"] for r in records}
