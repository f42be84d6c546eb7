"""ClickHouse types ↔ Arrow: one canonical Arrow schema for results, conversions for inserts.

Both backends return the same Arrow types for the same ClickHouse types:

| ClickHouse | Arrow |
|---|---|
| Int*/UInt*/Float* | int*/uint*/float* |
| String, LowCardinality(String), Enum8/16 | string |
| FixedString(n) | fixed_size_binary(n) |
| Date, Date32 | date32 |
| DateTime[(tz)] | timestamp[s, tz] (no tz: naive) |
| DateTime64(p[, tz]) | timestamp[s/ms/us/ns, tz] (p 0 / 1–3 / 4–6 / 7–9) |
| UUID | arrow.uuid extension (values as uuid.UUID) |
| Decimal(P, S) | decimal128(P, S) (decimal256 above 38 digits) |
| Bool | bool |
| Array(T), Map(K, V) | list<T>, map<K, V> |
| Nullable(T) | T, field nullable; other fields are non-nullable |

Types outside the table (Tuple, IPv4, Int128, …) come back as the engine or pyarrow makes them.
This module imports pyarrow; import it only where Arrow is used.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.clickhouse.capabilities import split_type, unquote
from pipelines.errors import StoreError

_INTS = {
    "Int8": pa.int8(),
    "Int16": pa.int16(),
    "Int32": pa.int32(),
    "Int64": pa.int64(),
    "UInt8": pa.uint8(),
    "UInt16": pa.uint16(),
    "UInt32": pa.uint32(),
    "UInt64": pa.uint64(),
    "Float32": pa.float32(),
    "Float64": pa.float64(),
}
_UNIT_DIGITS = {"s": 0, "ms": 3, "us": 6, "ns": 9}


def base_type(t: str) -> str:
    """The type without Nullable / LowCardinality wrappers: `LowCardinality(Nullable(String))` → `String`."""
    t = t.strip()
    while True:
        name, args = split_type(t)
        if name not in ("Nullable", "LowCardinality") or not args:
            return t
        t = args[0]


def is_nullable(t: str) -> bool:
    name, args = split_type(t)
    if name == "LowCardinality" and args:
        name, args = split_type(args[0])
    return name == "Nullable"


def unit_for_precision(p: int) -> str:
    return "s" if p == 0 else "ms" if p <= 3 else "us" if p <= 6 else "ns"


def datetime_parts(t: str) -> tuple[int, str | None] | None:
    """(precision, time zone) of a DateTime/DateTime64 base type; None for other types."""
    name, args = split_type(base_type(t))
    if name == "DateTime":
        return 0, unquote(args[0]) if args else None
    if name == "DateTime64":
        return int(args[0]) if args else 3, unquote(args[1]) if len(args) > 1 else None
    return None


def arrow_type(t: str) -> pa.DataType | None:
    """The canonical Arrow type of ClickHouse type `t`, or None when there is no canonical one."""
    name, args = split_type(t)
    if name in ("Nullable", "LowCardinality"):
        return arrow_type(args[0])
    if name in _INTS:
        return _INTS[name]
    if name in ("String", "Enum8", "Enum16", "Enum"):
        return pa.string()
    if name == "FixedString":
        return pa.binary(int(args[0]))
    if name in ("Date", "Date32"):
        return pa.date32()
    if name in ("DateTime", "DateTime64"):
        parts = datetime_parts(t)
        assert parts is not None
        precision, tz = parts
        return pa.timestamp(unit_for_precision(precision), tz)
    if name == "UUID":
        return pa.uuid()
    if name == "Bool":
        return pa.bool_()
    if name == "Nothing":
        return pa.null()
    if name.startswith("Decimal"):
        if name == "Decimal":
            precision, scale = int(args[0]), int(args[1]) if len(args) > 1 else 0
        else:
            precision = {"Decimal32": 9, "Decimal64": 18, "Decimal128": 38, "Decimal256": 76}[name]
            scale = int(args[0])
        return pa.decimal128(precision, scale) if precision <= 38 else pa.decimal256(precision, scale)
    if name == "Array":
        inner = arrow_type(args[0])
        return pa.list_(pa.field("item", inner, nullable=is_nullable(args[0]))) if inner is not None else None
    if name == "Map":
        key, value = arrow_type(args[0]), arrow_type(args[1])
        if key is None or value is None:
            return None
        return pa.map_(key, pa.field("value", value, nullable=is_nullable(args[1])))
    return None


def enum_values(t: str) -> dict[int, str]:
    """`Enum8('a' = 1, 'b' = 2)` → {1: 'a', 2: 'b'}."""
    _, args = split_type(base_type(t))
    out = {}
    for arg in args:
        m = re.match(r"^('(?:[^'\\]|\\.)*')\s*=\s*(-?\d+)$", arg.strip())
        if m:
            out[int(m.group(2))] = unquote(m.group(1))
    return out


def _decode_enum(column: pa.ChunkedArray | pa.Array, t: str) -> pa.Array:
    import numpy as np

    mapping = enum_values(t)
    codes = pa.chunked_array([column]) if isinstance(column, pa.Array) else column
    codes = codes.combine_chunks() if codes.num_chunks != 1 else codes.chunk(0)
    lo = min(mapping) if mapping else 0
    names = [""] * ((max(mapping) - lo + 1) if mapping else 1)
    for code, name in mapping.items():
        names[code - lo] = name
    index = np.asarray(codes.cast(pa.int32()).fill_null(lo).to_numpy(zero_copy_only=False)) - lo
    out = pc.take(pa.array(names, pa.string()), pa.array(index))
    if codes.null_count:
        out = pc.if_else(pc.is_null(codes), pa.nulls(len(out), pa.string()), out)
    return out


def conform_table(table: pa.Table, types: Sequence[str]) -> pa.Table:
    """`table` (as an engine returned it) converted to the canonical schema of `types`."""
    arrays, fields = [], []
    for i, t in enumerate(types):
        column = table.column(i)
        target = arrow_type(t)
        name = table.schema.field(i).name
        nullable = is_nullable(t) or target is None or pa.types.is_null(target)
        if target is None or column.type == target:
            arrays.append(column)
            fields.append(pa.field(name, column.type, nullable=nullable))
            continue
        base_name = split_type(base_type(t))[0]
        try:
            if base_name in ("Enum8", "Enum16") and pa.types.is_integer(column.type):
                column = _decode_enum(column, t)
            elif pa.types.is_timestamp(target) and pa.types.is_integer(column.type):
                column = column.cast(pa.int64()).cast(target)
            elif isinstance(target, pa.UuidType) and pa.types.is_string(column.type):
                column = pa.array([None if v is None else uuid.UUID(v) for v in column.to_pylist()], target)
            elif pa.types.is_fixed_size_binary(target) and pa.types.is_string(column.type):
                width = target.byte_width
                values = [None if v is None else v.encode().ljust(width, b"\0") for v in column.to_pylist()]
                column = pa.array(values, target)
            else:
                column = column.cast(target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, ValueError):
            target = column.type  # keep what the engine gave rather than fail a read
        arrays.append(column)
        fields.append(pa.field(name, target, nullable=nullable))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def empty_table(names: Sequence[str], types: Sequence[str]) -> pa.Table:
    fields = [
        pa.field(n, arrow_type(t) or pa.null(), nullable=is_nullable(t)) for n, t in zip(names, types, strict=True)
    ]
    return pa.schema(fields).empty_table()


def table_from_columns(names: Sequence[str], types: Sequence[str], columns: Sequence[Sequence[Any]]) -> pa.Table:
    """Python column values (as clickhouse-driver returns them) → a canonical Arrow table."""
    arrays, fields = [], []
    for name, t, values in zip(names, types, columns, strict=True):
        target = arrow_type(t)
        values = list(values)
        if target is not None and pa.types.is_fixed_size_binary(target):
            width = target.byte_width
            values = [
                None if v is None else (v.encode() if isinstance(v, str) else bytes(v)).ljust(width, b"\0")
                for v in values
            ]
        try:
            array = pa.array(values, type=target)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError):
            array = pa.array(values)
        arrays.append(array)
        fields.append(pa.field(name, array.type, nullable=is_nullable(t) or target is None))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


# Inserts


def ticks(column: pa.Array | pa.ChunkedArray, digits: int) -> pa.Array | pa.ChunkedArray:
    """Timestamp column → int64 ticks at 10**-digits seconds (truncating finer units)."""
    unit_digits = _UNIT_DIGITS[column.type.unit]
    ints = column.cast(pa.int64())
    if unit_digits > digits:
        return pc.divide(ints, 10 ** (unit_digits - digits))
    if unit_digits < digits:
        return pc.multiply(ints, 10 ** (digits - unit_digits))
    return ints


def driver_column(column: pa.Array | pa.ChunkedArray, t: str) -> list[Any]:
    """An Arrow column as the Python list clickhouse-driver writes into a column of type `t`.

    Timestamps become integers (seconds for DateTime, ticks for DateTime64), which the driver
    takes as is: no per-row timezone work, and sub-second parts are truncated for DateTime.
    """
    parts = datetime_parts(t)
    if parts is not None and pa.types.is_timestamp(column.type):
        return list(ticks(column, parts[0]).to_pylist())
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    return list(column.to_pylist())


def _first_value(values: Sequence[Any]) -> Any:
    for v in values:
        if v is not None:
            return v
    return None


def arrow_column(values: Sequence[Any] | pa.Array | pa.ChunkedArray, t: str) -> pa.Array | pa.ChunkedArray:
    """Python / numpy values for a column of type `t` → an Arrow array the embedded engine inserts."""
    if isinstance(values, pa.Array | pa.ChunkedArray):
        return values
    base_name = split_type(base_type(t))[0]
    parts = datetime_parts(t)
    dtype = getattr(values, "dtype", None)
    if parts is not None:
        precision, tz = parts
        first = _first_value(values) if dtype is None else None
        ints = (dtype is not None and dtype.kind in "iu") or (isinstance(first, int) and not isinstance(first, bool))
        if ints:
            # Raw integers mean ticks (seconds for DateTime), as for clickhouse-driver.
            unit = unit_for_precision(precision)
            scaled = pa.array(values, type=pa.int64())
            if _UNIT_DIGITS[unit] != precision:
                scaled = pc.multiply(scaled, 10 ** (_UNIT_DIGITS[unit] - precision))
            return scaled.cast(pa.timestamp(unit, tz))
    target = arrow_type(t)
    if base_name == "UUID":
        values, target = [None if v is None else str(v) for v in values], pa.string()
    elif base_name == "FixedString":
        target = None
    return pa.array(values, type=target)


def arrow_table_for_insert(columns: dict[str, Sequence[Any]], types: dict[str, str], table: str) -> pa.Table:
    """A dict of columns → an Arrow table typed for the target table's columns `types`."""
    arrays = {}
    for name, values in columns.items():
        if name not in types:
            raise StoreError(f"table {table} has no column {name!r}", hint=f"its columns: {', '.join(types)}")
        try:
            arrays[name] = arrow_column(values, types[name])
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, OverflowError) as exc:
            raise StoreError(f"column {name!r} of {table} ({types[name]}): cannot convert the values: {exc}") from None
    lengths = {len(a) for a in arrays.values()}
    if len(lengths) > 1:
        sizes = ", ".join(f"{n}={len(a)}" for n, a in arrays.items())
        raise StoreError(f"columns for {table} have different lengths ({sizes})")
    return pa.table(arrays)
