"""Arrow → ClickHouse's `Native` format (`INSERT … FORMAT Native` over HTTP), column buffers by numpy.

Why this is hand-written: clickhouse-driver writes an insert from Python objects, so an Arrow batch
is first turned into lists (`to_pylist`) and each value is then packed again. On the server
backend that was 60 % of a worker's CPU (py-spy, 1M events, one worker: `driver_column` 25 %,
the driver's column writers 34 %). Here each column is a few numpy operations on the Arrow
buffers; `bench/bench_native_insert.py` keeps the measurement. The driver has no such path (its
Arrow support reads only), and 18.16 reads no Arrow or Parquet.

The format (as of 18.16; unchanged since): per block, the column count and row count as varints,
then per column its name, its type name and its values — fixed-width numbers little-endian;
`String` as a varint length and the bytes of each value; `Nullable(T)` a byte per row (1 =
NULL) and then T's values with NULLs as defaults; `Array(T)` the cumulative end offset of each
row as UInt64 and then every element as T. `DateTime` is UInt32 seconds, `DateTime64(p)` Int64
ticks, `Date` UInt16 days. Any other type (LowCardinality, Enum, Decimal, UUID, …): `encode_block`
returns None and the caller inserts through the driver.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.clickhouse import chtypes

_NUMBERS = {
    "Int8": "<i1",
    "Int16": "<i2",
    "Int32": "<i4",
    "Int64": "<i8",
    "UInt8": "<u1",
    "UInt16": "<u2",
    "UInt32": "<u4",
    "UInt64": "<u8",
    "Float32": "<f4",
    "Float64": "<f8",
}
_WRAPPED = re.compile(r"^(Nullable|Array)\((.*)\)$")


def supported(t: str) -> bool:
    """Whether `encode_block` writes a column of ClickHouse type `t`."""
    if (m := _WRAPPED.match(t)) is not None:
        return supported(m.group(2))
    return t in _NUMBERS or t == "String" or t == "Date" or chtypes.datetime_parts(t) is not None


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string_bytes(value: str) -> bytes:
    raw = value.encode()
    return varint(len(raw)) + raw


def encode_block(table: pa.Table, types: Sequence[str]) -> bytes | None:
    """`table` as one Native block whose columns have ClickHouse types `types`, or None when a type
    is not one this module writes."""
    if not all(supported(t) for t in types):
        return None
    parts = [varint(table.num_columns), varint(table.num_rows)]
    for name, t in zip(table.column_names, types, strict=True):
        parts += [_string_bytes(name), _string_bytes(t)]
        column = table.column(name)
        array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        _encode(array, t, parts)
    return b"".join(parts)


def _encode(array: pa.Array, t: str, out: list[bytes]) -> None:
    if pa.types.is_dictionary(array.type):
        array = array.cast(array.type.value_type)
    if (m := _WRAPPED.match(t)) is not None:
        inner = m.group(2)
        if m.group(1) == "Nullable":
            out.append(np.asarray(array.is_null(), dtype=np.uint8).tobytes())
            _encode(_filled(array, inner), inner, out)
        else:
            if array.null_count:
                array = pc.fill_null(array, pa.scalar([], type=array.type))
            offsets = np.asarray(array.offsets, dtype=np.int64)
            out.append((offsets[1:] - offsets[0]).astype("<u8").tobytes())
            _encode(array.flatten(), inner, out)
        return
    if array.null_count:  # a NULL in a column that is not Nullable: ClickHouse would store the default
        array = _filled(array, t)
    if t == "String":
        out.append(_strings(array))
    elif t == "Date":
        out.append(np.asarray(array.cast(pa.date32()).cast(pa.int32()), dtype="<u2").tobytes())
    elif (parts := chtypes.datetime_parts(t)) is not None:
        if pa.types.is_timestamp(array.type):
            array = chtypes.ticks(array, parts[0])
        dtype = "<u4" if t.startswith("DateTime(") or t == "DateTime" else "<i8"
        out.append(np.asarray(array, dtype=np.int64).astype(dtype).tobytes())
    else:
        out.append(np.asarray(array, dtype=_NUMBERS[t]).tobytes())


def _filled(array: pa.Array, t: str) -> pa.Array:
    """NULLs replaced by ClickHouse's default of `t` (the values a Nullable column carries under its NULLs)."""
    if not array.null_count:
        return array
    if t == "String":
        default: pa.Scalar = pa.scalar("", type=array.type)
    elif t.startswith("Array("):
        default = pa.scalar([], type=array.type)
    elif pa.types.is_timestamp(array.type):
        default = pa.scalar(0, type=array.type)
    else:
        default = pa.scalar(0).cast(array.type)
    return pc.fill_null(array, default)


def _strings(array: pa.Array) -> bytes:
    """A String column: each value's byte length as a varint, then its bytes."""
    if not (pa.types.is_string(array.type) or pa.types.is_binary(array.type)):
        array = array.cast(pa.large_binary()) if pa.types.is_large_string(array.type) else array.cast(pa.string())
    width = np.int64 if pa.types.is_large_string(array.type) or pa.types.is_large_binary(array.type) else np.int32
    _, offsets_buf, data_buf = array.buffers()
    n = len(array)
    offsets = np.frombuffer(offsets_buf, dtype=width, count=n + 1, offset=array.offset * np.dtype(width).itemsize)
    offsets = offsets.astype(np.int64)
    lengths = np.diff(offsets)
    payload = np.frombuffer(data_buf, dtype=np.uint8)[offsets[0] : offsets[-1]] if n else np.empty(0, np.uint8)
    sizes = np.ones(n, dtype=np.int64)
    for shift in (7, 14, 21, 28, 35):
        sizes += lengths >= (1 << shift)
    entry = sizes + lengths
    starts = np.cumsum(entry) - entry
    out = np.empty(int(entry.sum()), dtype=np.uint8)
    payload_at = np.ones(len(out), dtype=bool)
    for j in range(int(sizes.max()) if n else 0):
        rows = np.flatnonzero(sizes > j) if j else slice(None)
        at = starts[rows] + j
        more = (sizes[rows] > j + 1).astype(np.uint8) << 7
        out[at] = ((lengths[rows] >> (7 * j)) & 0x7F).astype(np.uint8) | more
        payload_at[at] = False
    out[payload_at] = payload
    return out.tobytes()
