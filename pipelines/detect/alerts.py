"""Where alerts go: the `alerts` table and the `transactions.alerts` topic; every score to `fraud_scores`.

Exactly-once as seen by readers, at-least-once on the wire:

- `alerts` is a ReplacingMergeTree ordered by (card_id, transaction_id): a batch re-processed after
  a crash (its `pending` range re-read by the next owner) writes the same alert rows again, and the
  duplicates collapse on merge; readers (`nova fraud alerts`, evaluate) read with FINAL, so a copy
  is never visible before the merge either. A check-before-insert would need a query per batch
  and still race with a stalled predecessor's late insert (the fencing case), which FINAL absorbs.
- the topic is at-least-once: the same re-processing produces an alert again. Its key is the
  card_id (so a card's alerts stay in order) and its payload is deterministic except `alerted_at`:
  consumers dedupe on transaction_id.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from pipelines.errors import KafkaError

if TYPE_CHECKING:
    from pipelines.clickhouse import Store
    from pipelines.contracts.codec import Encoder
    from pipelines.contracts.columnar_writer import Column, ColumnarEncoder
    from pipelines.kafka import Message, Producer, VendorError

ALERTS_TABLE = "alerts"
SCORES_TABLE = "fraud_scores"
ALERT_SUBJECT_SUFFIX = "-value"
RULES_TYPE = pa.list_(pa.string())
MS = pa.timestamp("ms", tz="UTC")
# The columns of an alerts table handed to `AlertSink.write` (the design's `alerts` table).
ALERT_FIELDS = pa.schema(
    [
        ("event_time", MS),
        ("transaction_id", pa.string()),
        ("card_id", pa.string()),
        ("merchant_id", pa.string()),
        ("amount_reporting_minor", pa.int64()),
        ("risk_score", pa.float32()),
        ("alerted_at", MS),
        ("rules", RULES_TYPE),
        ("score", pa.float32()),
        ("produced_at", MS),
        ("model_version", pa.string()),
    ]
)
SCORE_FIELDS = pa.schema(
    [
        ("transaction_id", pa.string()),
        ("card_id", pa.string()),
        ("merchant_id", pa.string()),
        ("event_time", MS),
        ("score", pa.float32()),
        ("rules", RULES_TYPE),
        ("produced_at", MS),
        ("scored_at", MS),
    ]
)


class AlertSink:
    """Writes alert rows to ClickHouse, then to the alerts topic (Avro, Confluent framing)."""

    def __init__(
        self,
        store: Store,
        *,
        database: str,
        producer: Producer | None,
        topic: str,
        encoder: Encoder | None,
    ) -> None:
        self.store = store
        self.alerts = f"{database}.{ALERTS_TABLE}"
        self.scores = f"{database}.{SCORES_TABLE}"
        self.producer = producer
        self.topic = topic
        self.encoder = encoder
        self.columnar: ColumnarEncoder | None = None
        self._errors: list[str] = []

    def connect(self, producer: Producer, schema_id: int, schema_raw: str) -> None:
        """The topic's producer and the Alert schema registered under `schema_id`.

        Values are written column-wise (~1 µs an alert against ~10 µs through fastavro records)
        while the schema has only the types ColumnarEncoder covers; otherwise by the codec.
        """
        from pipelines.contracts.codec import Encoder
        from pipelines.contracts.columnar_writer import ColumnarEncoder

        self.producer = producer
        self.encoder = Encoder(schema_id, schema_raw)
        parsed = json.loads(schema_raw)
        self.columnar = ColumnarEncoder(schema_id, parsed) if ColumnarEncoder.supports(parsed) else None

    def encode(self, alerts: pa.Table) -> list[bytes]:
        """The alert rows as wire-format Alert values."""
        if self.columnar is not None:
            return self.columnar.encode_chunk(AlertColumns(alerts))
        assert self.encoder is not None
        return self.encoder.encode_batch(alert_records(alerts))

    def write(self, alerts: pa.Table) -> None:
        """Insert then produce (and wait for the broker): when this returns, the alerts are out."""
        if not alerts.num_rows:
            return
        self.store.insert_arrow(self.alerts, alerts)
        if self.producer is None or self.encoder is None:
            return
        for key, value in zip(alerts["card_id"].to_pylist(), self.encode(alerts), strict=True):
            while True:
                try:
                    self.producer.produce(self.topic, value=value, key=str(key).encode(), on_delivery=self._delivered)
                    break
                except BufferError:
                    self.producer.poll(0.1)
        remaining = self.producer.flush(30)
        if remaining or self._errors:
            errors, self._errors = self._errors, []
            raise KafkaError(f"{remaining} alert(s) undelivered to topic '{self.topic}' {errors[:3]}")

    def write_scores(self, scores: pa.Table) -> None:
        if scores.num_rows:
            self.store.insert_arrow(self.scores, scores)

    def _delivered(self, err: VendorError | None, msg: Message) -> None:
        if err is not None:
            self._errors.append(err.str())


class AlertColumns:
    """Alert rows as the Alert record's columns, what `ColumnarEncoder.encode_chunk` takes."""

    def __init__(self, alerts: pa.Table) -> None:
        self.n: int = alerts.num_rows
        version = alerts["model_version"].to_numpy(zero_copy_only=False)
        cols: dict[str, Column] = {
            name: alerts[name].to_numpy(zero_copy_only=False) for name in ("transaction_id", "card_id", "merchant_id")
        }
        for name in ("event_time", "alerted_at", "produced_at"):
            cols[name] = alerts[name].cast(pa.int64()).to_numpy()
        cols["score"] = alerts["score"].to_numpy().astype(np.float64)
        cols["rules"] = alerts["rules"].fill_null([]).to_numpy(zero_copy_only=False)
        cols["model_version"] = np.asarray(np.where(version == "", None, version))  # no model: null, not ''
        self.columns = cols

    def __len__(self) -> int:
        return self.n


def alert_records(alerts: pa.Table) -> list[dict[str, Any]]:
    """The `Alert` Avro records of alert rows (timestamps as epoch milliseconds, raw logical types)."""
    cols = {name: alerts[name] for name in ("transaction_id", "card_id", "merchant_id", "rules", "model_version")}
    ms = {name: alerts[name].cast(pa.int64()).to_pylist() for name in ("event_time", "alerted_at", "produced_at")}
    scores = alerts["score"].to_pylist()
    out = []
    for i, (tx, card, merchant, rules, version) in enumerate(zip(*(c.to_pylist() for c in cols.values()), strict=True)):
        out.append(
            {
                "transaction_id": tx,
                "card_id": card,
                "merchant_id": merchant,
                "event_time": ms["event_time"][i],
                "score": float(scores[i]),
                "rules": list(rules or ()),
                "alerted_at": ms["alerted_at"][i],
                "produced_at": ms["produced_at"][i],
                "model_version": version or None,
            }
        )
    return out


def recent_alerts(
    store: Store, *, database: str, since_ms: int, limit: int, card_id: str | None = None
) -> list[dict[str, Any]]:
    """Alerts produced at or after `since_ms` (wall clock), newest first, one per transaction (FINAL)."""
    from datetime import UTC, datetime

    from pipelines.clickhouse.sql import quote_identifier

    where = "alerted_at >= %(since)s" + (" AND card_id = %(card)s" if card_id is not None else "")
    rows = store.query_dicts(
        "SELECT transaction_id, card_id, merchant_id, event_time, amount_reporting_minor, score, rules, "
        f"alerted_at, produced_at, model_version FROM {quote_identifier(database)}.{ALERTS_TABLE} FINAL "
        f"WHERE {where} ORDER BY alerted_at DESC, transaction_id LIMIT %(limit)s",
        {"since": datetime.fromtimestamp(since_ms / 1000, UTC), "card": card_id, "limit": limit},
    )
    for row in rows:
        row["rules"] = list(row["rules"] or ())
        row["score"] = round(float(row["score"]), 4)
    return rows
