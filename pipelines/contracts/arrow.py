"""The Avro contract's columns in Arrow: the shape every decoder hands to the transform."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

# Avro field → column, in the order of configs/clickhouse/tables.yaml.
STRING_FIELDS = (
    "transaction_id",
    "card_id",
    "account_id",
    "merchant_id",
    "merchant_category",
    "currency",
    "country",
    "channel",
    "status",
)
NULLABLE_FIELDS = {
    "device_id": pa.string(),
    "ip_address": pa.string(),
    "latitude": pa.float64(),
    "longitude": pa.float64(),
}
# The Avro contract's columns as ``transform`` consumes them, in the contract's field order.
CONTRACT_SCHEMA: pa.Schema = pa.schema(
    [
        ("transaction_id", pa.string()),
        ("event_time", pa.timestamp("ms", tz="UTC")),
        ("card_id", pa.string()),
        ("account_id", pa.string()),
        ("merchant_id", pa.string()),
        ("merchant_category", pa.string()),
        ("amount_minor", pa.int64()),
        ("currency", pa.string()),
        ("country", pa.string()),
        ("channel", pa.string()),
        ("status", pa.string()),
        ("device_id", pa.string()),
        ("ip_address", pa.string()),
        ("latitude", pa.float64()),
        ("longitude", pa.float64()),
    ]
)


def _event_time_ms(values: list[Any]) -> np.ndarray:
    if values and not isinstance(values[0], int):  # a datetime, if logical types were decoded
        return np.array([int(v.timestamp() * 1000) for v in values], dtype=np.int64)
    return np.fromiter(values, dtype=np.int64, count=len(values))


def column_array(table: pa.Table, name: str) -> pa.Array:
    """A table's column as one Array: its only chunk as is, since ``combine_chunks`` would copy it."""
    column = table[name]
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def records_table(records: Sequence[dict[str, Any]]) -> pa.Table:
    """Decoded records → the contract columns, converted exactly as ``transform`` converts them."""
    n = len(records)
    columns: dict[str, Any] = {f: pa.array([r[f] for r in records], pa.string()) for f in STRING_FIELDS}
    columns["amount_minor"] = pa.array(
        np.fromiter((r["amount_minor"] for r in records), dtype=np.int64, count=n), pa.int64()
    )
    columns["event_time"] = pa.array(
        _event_time_ms([r["event_time"] for r in records]), CONTRACT_SCHEMA.field("event_time").type
    )
    for f, t in NULLABLE_FIELDS.items():
        columns[f] = pa.array([r.get(f) for r in records], t)
    return pa.table({f.name: columns[f.name] for f in CONTRACT_SCHEMA}, schema=CONTRACT_SCHEMA)
