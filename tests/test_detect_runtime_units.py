"""Pure pieces of the detection runtime: alerts → Avro records, labels → rows, rule columns, snapshot blobs."""

from __future__ import annotations

import base64
import json
import zlib

import pyarrow as pa
import pytest

from pipelines.contracts.codec import Decoder, Encoder
from pipelines.contracts.registry.file import FileRegistry
from pipelines.detect.alerts import ALERT_FIELDS, AlertSink, alert_records
from pipelines.detect.labels import labels_table
from pipelines.detect.snapshot import decode_blob, encode_blob
from pipelines.errors import StoreError
from pipelines.ingest.detection import ALERT_SUBJECT, _rules_column
from tests.conftest import REPO

MS = pa.timestamp("ms", tz="UTC")


def _alerts() -> pa.Table:
    return pa.table(
        {
            "event_time": pa.array([1_700_000_000_123, 1_700_000_060_000], MS),
            "transaction_id": ["6f1c1a52-3b7e-4a57-9a43-0d5b6b1f7a10", "0b0e7c57-2f3c-4f44-8d4c-3f3b0a7e2b11"],
            "card_id": ["c1", "c2"],
            "merchant_id": ["M1", "M2"],
            "amount_reporting_minor": pa.array([100, 250_000], pa.int64()),
            "risk_score": pa.array([0.1, 0.9], pa.float32()),
            "alerted_at": pa.array([1_700_000_001_000, 1_700_000_061_000], MS),
            "rules": pa.array([["card_testing"], []], pa.list_(pa.string())),
            "score": pa.array([0.9, 0.75], pa.float32()),
            "produced_at": pa.array([1_700_000_000_500, 1_700_000_060_100], MS),
            "model_version": ["", "lgbm-abc"],
        },
        schema=ALERT_FIELDS,
    )


def test_alert_records_round_trip_through_the_registered_alert_schema() -> None:
    registry = FileRegistry(REPO / "configs" / "schemas")
    latest = registry.latest(ALERT_SUBJECT)
    values = Encoder(latest.id, latest.schema.raw).encode_batch(alert_records(_alerts()))
    decoded = [Decoder(registry).decode(v) for v in values]
    assert [d["rules"] for d in decoded] == [["card_testing"], []]
    assert [d["model_version"] for d in decoded] == [None, "lgbm-abc"], "no model: null, not ''"
    assert decoded[0]["event_time"] == 1_700_000_000_123 and decoded[0]["produced_at"] == 1_700_000_000_500
    assert abs(decoded[1]["score"] - 0.75) < 1e-6
    json.dumps(decoded)  # plain values only (ms integers, strings)


def test_alert_values_written_column_wise_equal_the_codecs_byte_for_byte() -> None:
    registry = FileRegistry(REPO / "configs" / "schemas")
    latest = registry.latest(ALERT_SUBJECT)
    sink = AlertSink(None, database="d", producer=None, topic="t", encoder=None)  # type: ignore[arg-type]
    sink.connect(None, latest.id, latest.schema.raw)  # type: ignore[arg-type]
    assert sink.columnar is not None, "the Alert schema is one the columnar writer covers"
    base = _alerts()
    more = base.to_pylist() * 3
    more[2].update(merchant_id="Café Zürich ☕", rules=["velocity_burst", "amount_outlier", "new_device"])
    more[3].update(card_id="c" * 300, rules=None, model_version="m" * 130)
    more[5].update(score=1.0, event_time=0)
    for table in (base, pa.Table.from_pylist(more, schema=ALERT_FIELDS)):
        assert sink.encode(table) == sink.encoder.encode_batch(alert_records(table))  # type: ignore[union-attr]


def test_label_records_become_fraud_labels_rows() -> None:
    rows = labels_table(
        [
            {"transaction_id": "t1", "is_fraud": True, "label_time": 1_700_000_000_000, "scenario": "card_testing"},
            {"transaction_id": "t2", "is_fraud": False, "label_time": 1_700_000_000_001, "scenario": None},
        ]
    )
    assert rows["is_fraud"].to_pylist() == [1, 0]
    assert rows["scenario"].to_pylist() == ["card_testing", ""]
    assert rows["label_time"].type == MS


def test_rules_column_keeps_each_rows_rules_in_order() -> None:
    rules = [("a", "b"), (), ("c",), ("a", "b"), ()] * 3
    column = _rules_column(rules)
    assert column.to_pylist() == [list(r) for r in rules]
    assert column.type == pa.list_(pa.string())
    assert len(_rules_column([])) == 0


def test_snapshot_blobs_round_trip_read_the_zlib_format_and_refuse_corruption() -> None:
    data = bytes(range(256)) * 1000 + b"\x00" * 50_000
    blob = encode_blob(data)
    assert blob.isascii() and blob.startswith(f"zstd:{len(data)}:")
    assert decode_blob(blob) == data
    assert len(blob) < len(data) / 4  # compressed, even after base64
    assert decode_blob(base64.b64encode(zlib.compress(data, 1)).decode()) == data  # snapshots saved before zstd
    for corrupt in (blob[:-40], "zstd:12:AAAA", "not base64 at all!", base64.b64encode(b"not zlib").decode()):
        with pytest.raises(StoreError, match="snapshot is unreadable"):
            decode_blob(corrupt)
