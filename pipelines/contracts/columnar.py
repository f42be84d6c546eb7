"""Confluent-framed Avro → the contract's Arrow columns, with no Python object per record.

``Decoder.decode_batch`` + ``transform`` spend ~8 CPU-s per million events, nearly all of it in
per-record Python: fastavro builds a dict per event (~6 µs), and ``transform`` takes the dicts
apart again into columns. ``FastDecoder`` reads the Avro binary itself, *columnwise*: the
bodies of one schema id sit in one numpy byte buffer, and every record's read position is
advanced together, one field at a time (a varint for all rows is a handful of numpy calls,
a string is a length varint plus one gather of its bytes). Python work is per field and per
chunk, never per record. ``transform_table`` then does ``transform``'s validation, enrichment
and scoring on the Arrow table.

Exactness. The result equals ``Decoder(registry).decode_batch`` followed by ``transform``:
same rows, same values, same rejects with the same reasons and details (a fastavro message
that names a BytesIO by address differs between any two runs anyway). The vectorised reader
accepts only records that are *strictly* well formed — every varint ends within 10 bytes and
fits 64 bits, string and bytes lengths are non-negative and stay inside the body, enum and
union indices are in range, booleans are 0 or 1, strings are valid UTF-8, and the body ends
exactly where the last field does. Any other message (including empty, not Confluent-framed or
shorter than the header) is handed to ``Decoder.decode`` — the authority — one at a time: it
either raises the ``DecodeError`` the slow path would report, or (fastavro is lenient about a
few malformed encodings, e.g. a negative enum index counts from the end) returns the record
the slow path would have kept, which is then converted like ``transform`` converts records.
Writer schemas the reader doesn't handle (arrays, maps, unions of several non-null types in a
contract column, a contract column of an unexpected type) go to ``decode_batch`` as a whole.

Speed (``bench/bench_fastdecode.py``, chunks of 10k): ~0.8 CPU-s per million card
transactions to decode and ~0.3 for ``transform_table``, against ~6 and ~2 for the dict path;
per-chunk overhead makes it ~2.5 in all for chunks of 1k.

A ``FastDecoder`` keeps per-schema caches and its fallback ``Decoder``: one per thread (the
worker has one per process). It holds no chdb session, writes no files, and works the same
whichever ClickHouse backend the worker writes to.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.lib.stride_tricks import sliding_window_view

from pipelines.contracts.arrow import CONTRACT_SCHEMA, STRING_FIELDS, records_table
from pipelines.contracts.codec import HEADER_SIZE, MAGIC_BYTE, DecodeError, Decoder, raw_logical_schema

if TYPE_CHECKING:
    from pipelines.contracts.registry import SchemaRegistry

# What each contract column accepts from a writer: value kinds (see _Reader) and whether a
# [null, T] union is fine. A required column written as a union would give the dict path a
# None it can't use, so that schema goes to the dict path and fails the same way there.
_KIND_OF_COLUMN: Final = {
    **{name: ("str", False) for name in STRING_FIELDS},
    "amount_minor": ("int", False),
    "event_time": ("int", False),
    "device_id": ("str", True),
    "ip_address": ("str", True),
    "latitude": ("float", True),
    "longitude": ("float", True),
}
_PRIMITIVES: Final = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})

_PAD: Final = bytes(16)  # reads at a body's end may look up to 9 bytes past it
_AR10 = np.arange(10, dtype=np.int64)
_SHIFTS = np.arange(10, dtype=np.uint64) * np.uint64(7)
_U0, _U1 = np.uint64(0), np.uint64(1)
_CONTINUATION = np.uint64(0x8080808080808080)
_KS = [np.uint64(k) for k in range(8)]
_LOW7 = [np.uint64(0x7F << (7 * k)) for k in range(8)]

Rows = np.ndarray | None  # indices into a group's rows; None means all of them


@dataclass
class _Values:
    """One field's values for a group's rows: string spans, ints, floats or enum indices."""

    kind: str  # str | int | float | enum
    data: np.ndarray  # str: start offsets in the buffer; int/float: values; enum: symbol indices
    lengths: np.ndarray | None = None  # str only
    valid: np.ndarray | None = None  # False where a [null, T] union holds null; None: all set
    symbols: pa.Array | None = None  # enum only


class _Unsupported(Exception):
    """The writer schema has something the columnar reader doesn't read."""


def _is_null(schema: Any) -> bool:
    return schema == "null" or (isinstance(schema, dict) and schema.get("type") == "null")


class _Cursor:
    """The bodies of one schema id's messages, every read position advanced together."""

    def __init__(self, buf: np.ndarray, pos: np.ndarray, end: np.ndarray) -> None:
        self.buf = buf
        self.words = sliding_window_view(buf, 8)  # row i: the 8 bytes from buf[i]
        self.pos = pos
        self.end = end
        self.bad = np.zeros(len(pos), dtype=bool)  # not strictly well formed: the slow path decides
        self.strings: list[tuple[Rows, _Values]] = []  # every string read, for the UTF-8 check

    def _flag(self, rows: Rows, mask: np.ndarray) -> None:
        self.bad[mask if rows is None else rows[mask]] = True

    def _moved(self, rows: Rows, start: np.ndarray, new: np.ndarray) -> np.ndarray:
        """Set the rows' positions to ``new``, flagging and stopping at the body end any that pass it."""
        end = self.end if rows is None else self.end[rows]
        over = new > end
        if over.any():
            self._flag(rows, over)
            new = np.where(over, end, new)
        if rows is None:
            self.pos = new
        else:
            self.pos[rows] = new
        return new

    def _at(self, rows: Rows) -> np.ndarray:
        return self.pos if rows is None else self.pos[rows]

    def long(self, rows: Rows) -> np.ndarray:
        """Zigzag varints (int and long) at the rows' positions."""
        p = self._at(rows)
        first = self.buf[p]
        if not (first > 0x7F).any():  # all one byte: lengths, enum and union indices, small numbers
            u: np.ndarray = first.astype(np.int64)
            self._moved(rows, p, p + 1)
            return (u >> 1) ^ -(u & 1)
        # Up to 8 bytes (|value| < 2**55) from one little-endian word per row: the lowest byte
        # without its continuation bit ends the varint; mask the bytes after it off and squeeze
        # out the continuation bits.
        word = np.ascontiguousarray(self.words[p]).view("<u8")[:, 0]
        ends = ~word & _CONTINUATION
        lowest = ends & (_U0 - ends)  # the final byte's bit 7; 0 if the varint is longer than 8 bytes
        word &= (lowest << _U1) - _U1
        u64 = word & _LOW7[0]
        for k in range(1, 8):
            u64 |= (word >> _KS[k]) & _LOW7[k]
        new = p + np.bitwise_count(word & _CONTINUATION).astype(np.int64) + 1
        long_ones = np.flatnonzero(lowest == 0)
        if len(long_ones):
            u64[long_ones], new[long_ones] = self._long_tail(rows, p[long_ones], long_ones)
        self._moved(rows, p, new)
        return ((u64 >> _U1) ^ (_U0 - (u64 & _U1))).view(np.int64)

    def _long_tail(self, rows: Rows, p: np.ndarray, which: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Varints of 9 and 10 bytes (and runaway ones, flagged): (unsigned value, new position)."""
        block = self.buf[p[:, None] + _AR10]
        cont = block > 0x7F
        last = cont.argmin(axis=1)  # index of the varint's final byte
        # Longer than 10 bytes or beyond 64 bits: fastavro reads those its own way.
        odd = cont[:, 9] | ((last == 9) & (block[:, 9] > 1))
        if odd.any():
            self._flag(rows, which[odd])
        parts = (block & 0x7F).astype(np.uint64) << _SHIFTS
        parts[last[:, None] < _AR10] = 0
        return np.bitwise_or.reduce(parts, axis=1), p + last + 1

    def fixed(self, rows: Rows, size: int) -> np.ndarray:
        """Start offsets of ``size`` raw bytes at the rows' positions."""
        p = self._at(rows)
        self._moved(rows, p, p + size)
        return p

    def double(self, rows: Rows) -> np.ndarray:
        p = self.fixed(rows, 8)
        return np.ascontiguousarray(self.words[p]).view("<f8")[:, 0]

    def float(self, rows: Rows) -> np.ndarray:
        p = self.fixed(rows, 4)
        return np.ascontiguousarray(self.words[p, :4]).view("<f4")[:, 0].astype(np.float64)

    def span(self, rows: Rows) -> tuple[np.ndarray, np.ndarray]:
        """(start, length) of length-prefixed bytes at the rows' positions."""
        length = self.long(rows)
        negative = length < 0
        if negative.any():
            self._flag(rows, negative)
            length = np.where(negative, 0, length)
        p = self._at(rows)
        # Cut a length at the body's end before adding it: a garbage varint near 2**63 would
        # overflow p + length into a negative position (numpy then indexes from the buffer's end).
        room = (self.end if rows is None else self.end[rows]) - p
        over = length > room
        if over.any():
            self._flag(rows, over)
            length = np.where(over, room, length)
        new = self._moved(rows, p, p + length)
        return p, new - p  # lengths cut at the body end for flagged rows, so gathers stay inside

    def boolean(self, rows: Rows) -> None:
        p = self.fixed(rows, 1)
        odd = self.buf[np.minimum(p, len(self.buf) - 1)] > 1  # fastavro takes any non-zero as true
        if odd.any():
            self._flag(rows, odd)


class _Reader:
    """Reads one writer schema (raw logical types) columnwise; values only for contract columns."""

    def __init__(self, writer: Any) -> None:
        self.named: dict[str, Any] = {}
        if not (isinstance(writer, dict) and writer.get("type") == "record"):
            raise _Unsupported("not a record")
        self.fields: list[tuple[Any, str | None]] = []
        namespace = self._register(writer, None)
        names = set()
        for fld in writer["fields"]:
            name = fld["name"]
            names.add(name)
            self._check(fld["type"], namespace)
            wanted = _KIND_OF_COLUMN.get(name)
            if wanted is not None:
                kind, nullable = wanted
                got, union = self._kind(fld["type"])
                if got != kind and not (kind == "str" and got == "enum"):
                    raise _Unsupported(f"field {name!r} has a {got or 'non-scalar'} value")
                if union and not nullable:
                    raise _Unsupported(f"required field {name!r} is nullable")
            self.fields.append((fld["type"], name if wanted is not None else None))
        missing = [n for n, (_, nullable) in _KIND_OF_COLUMN.items() if n not in names and not nullable]
        if missing:
            raise _Unsupported(f"no field(s) {', '.join(missing)}")  # the dict path fails on them

    # -- schema checks

    def _register(self, schema: dict[str, Any], namespace: str | None) -> str | None:
        name = schema.get("name")
        if not name:
            return namespace
        ns = schema.get("namespace", namespace)
        full = name if "." in name or not ns else f"{ns}.{name}"
        self.named[full] = schema
        self.named.setdefault(name, schema)
        return full.rpartition(".")[0] or None

    def _resolve(self, schema: Any) -> Any:
        if isinstance(schema, str) and schema not in _PRIMITIVES:
            found = self.named.get(schema)
            if found is None:
                raise _Unsupported(f"unknown type name {schema!r}")
            return found
        return schema

    def _check(self, schema: Any, namespace: str | None = None) -> None:
        schema = self._resolve(schema)
        if isinstance(schema, str):
            return
        if isinstance(schema, list):
            if any(isinstance(self._resolve(b), list) for b in schema):
                raise _Unsupported("nested union")
            for branch in schema:
                self._check(branch, namespace)
            return
        kind = schema.get("type")
        logical = schema.get("logicalType")
        if logical is not None and logical != "decimal":
            # Converted by fastavro (raw_logical_schema strips the ones nova keeps raw); a
            # conversion may refuse a value, so such schemas go the dict path.
            raise _Unsupported(f"logical type {logical!r}")
        if kind in ("enum", "fixed"):
            self._register(schema, namespace)
        elif kind == "record":
            inner = self._register(schema, namespace)
            for fld in schema["fields"]:
                self._check(fld["type"], inner)
        elif kind in _PRIMITIVES:
            return
        else:
            raise _Unsupported(f"type {kind!r}")  # array, map, …

    def _kind(self, schema: Any) -> tuple[str | None, bool]:
        """(value kind, is a [null, T] union) of a field's schema; kind None when not a scalar."""
        schema = self._resolve(schema)
        if isinstance(schema, list):
            rest = [b for b in schema if not _is_null(b)]
            if len(schema) != 2 or len(rest) != 1:
                return None, True
            return self._kind(rest[0])[0], True
        kind = schema if isinstance(schema, str) else schema["type"]
        return {"int": "int", "long": "int", "float": "float", "double": "float", "string": "str", "enum": "enum"}.get(
            kind
        ), False

    # -- reading

    def read(self, cur: _Cursor) -> dict[str, _Values]:
        out: dict[str, _Values] = {}
        for schema, column in self.fields:
            values = self._read(cur, schema, None)
            if column is not None:
                assert values is not None
                out[column] = values
        return out

    def _read(self, cur: _Cursor, schema: Any, rows: Rows) -> _Values | None:
        schema = self._resolve(schema)
        if isinstance(schema, list):
            return self._union(cur, schema, rows)
        kind = schema if isinstance(schema, str) else schema["type"]
        if kind in ("long", "int"):
            return _Values("int", cur.long(rows))
        if kind == "string":
            start, length = cur.span(rows)
            values = _Values("str", start, length)
            cur.strings.append((rows, values))
            return values
        if kind == "double":
            return _Values("float", cur.double(rows))
        if kind == "float":
            return _Values("float", cur.float(rows))
        if kind == "enum":
            index = cur.long(rows)
            symbols = schema["symbols"]
            out_of_range = (index < 0) | (index >= len(symbols))
            if out_of_range.any():
                cur._flag(rows, out_of_range)
                index = np.where(out_of_range, 0, index)
            return _Values("enum", index, symbols=pa.array(symbols, pa.string()))
        if kind == "bytes":
            cur.span(rows)
        elif kind == "fixed":
            cur.fixed(rows, int(schema["size"]))
        elif kind == "boolean":
            cur.boolean(rows)
        elif kind == "record":
            for fld in schema["fields"]:
                self._read(cur, fld["type"], rows)
        return None  # null, or a value no contract column takes

    def _union(self, cur: _Cursor, branches: list[Any], rows: Rows) -> _Values | None:
        branch = cur.long(rows)
        out_of_range = (branch < 0) | (branch >= len(branches))
        if out_of_range.any():
            cur._flag(rows, out_of_range)  # fastavro would index the branch list from the end
            branch = np.where(out_of_range, -1, branch)
        result: _Values | None = None
        for b, schema in enumerate(branches):
            if _is_null(schema):
                continue
            sub = np.flatnonzero(branch == b)
            if not len(sub):
                continue
            values = self._read(cur, schema, sub if rows is None else rows[sub])
            if values is None:
                continue
            # Only [null, T] unions reach a contract column (checked in __init__).
            n = len(branch)
            data = np.zeros(n, dtype=values.data.dtype)
            data[sub] = values.data
            lengths = None
            if values.lengths is not None:
                lengths = np.zeros(n, dtype=np.int64)
                lengths[sub] = values.lengths
            valid = np.zeros(n, dtype=bool)
            valid[sub] = True
            result = _Values(values.kind, data, lengths, valid, values.symbols)
            if values.kind == "str":  # check the spans as the union's rows see them
                cur.strings[-1] = (rows, result)
        if result is None:
            # Every row null here: still a column of the right kind.
            kind, _ = self._kind(branches)
            n = len(branch)
            if kind == "str":
                result = _Values("str", np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, bool))
            elif kind in ("int", "float"):
                result = _Values(kind, np.zeros(n, np.int64 if kind == "int" else np.float64), None, np.zeros(n, bool))
            elif kind == "enum":
                symbols = next(self._resolve(b)["symbols"] for b in branches if not _is_null(b))
                result = _Values("enum", np.zeros(n, np.int64), None, np.zeros(n, bool), pa.array(symbols, pa.string()))
        return result


def _validity(valid: np.ndarray | None) -> tuple[pa.Buffer | None, int]:
    if valid is None:
        return None, 0
    nulls = int(len(valid) - np.count_nonzero(valid))
    if not nulls:
        return None, 0
    return pa.py_buffer(np.packbits(valid, bitorder="little")), nulls


def _strings(buf: np.ndarray, start: np.ndarray, length: np.ndarray, valid: np.ndarray | None) -> pa.Array:
    """A string array of the spans (not yet UTF-8 checked); null where not valid."""
    n = len(start)
    if valid is not None:
        length = np.where(valid, length, 0)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(length, out=offsets[1:])
    total = int(offsets[-1])
    present = start if valid is None else start[valid]
    widths = length if valid is None else length[valid]
    if total == 0:
        data = np.zeros(0, dtype=np.uint8)
    elif (width := int(widths.min())) == int(widths.max()):
        # One width (ids, codes, uuids): copy each row's bytes out of a sliding-window view.
        data = sliding_window_view(buf, width)[present].reshape(-1)
    else:
        index = np.repeat((start - offsets[:-1]).astype(np.int64), length)
        index += np.arange(total, dtype=np.int64)
        data = buf[index]
    bitmap, nulls = _validity(valid)
    if total < 2**31:
        return pa.Array.from_buffers(
            pa.string(), n, [bitmap, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(data)], null_count=nulls
        )
    big = pa.Array.from_buffers(
        pa.large_string(), n, [bitmap, pa.py_buffer(offsets), pa.py_buffer(data)], null_count=nulls
    )
    return big.cast(pa.string())  # raises if one chunk holds >2 GiB of one column: not a real chunk


def _utf8_failures(array: pa.Array) -> np.ndarray:
    """Rows of a string array (built unchecked) that are not valid UTF-8, as Python's decode sees it."""
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int32, count=len(array) + 1)
    data = np.frombuffer(array.buffers()[2], dtype=np.uint8, count=int(offsets[-1]))
    non_ascii = np.unique(np.searchsorted(offsets, np.flatnonzero(data > 0x7F), side="right") - 1)
    bad = np.zeros(len(array), dtype=bool)
    for i in non_ascii.tolist():  # ASCII is always valid UTF-8
        try:
            data[offsets[i] : offsets[i + 1]].tobytes().decode()
        except UnicodeDecodeError:
            bad[i] = True
    if not bad.any():
        bad[:] = True  # Arrow refuses what Python accepts: let the slow path decide for all of them
    return bad


def _select(arrays: tuple[Any, ...], mask: np.ndarray | None) -> tuple[Any, ...]:
    if mask is None:
        return arrays
    return tuple(None if a is None else a[mask] for a in arrays)


def _column(name: str, values: _Values | None, keep: np.ndarray | None, buf: np.ndarray, n: int) -> pa.Array:
    typ = CONTRACT_SCHEMA.field(name).type
    if values is None:  # a nullable contract field the writer doesn't have
        return pa.nulls(n, typ)
    data, lengths, valid = _select((values.data, values.lengths, values.valid), keep)
    if values.kind == "str":
        assert lengths is not None
        return _strings(buf, data, lengths, valid)
    if values.kind == "enum":
        assert values.symbols is not None
        index = pa.array(data, pa.int64(), mask=None if valid is None else ~valid)
        return pc.take(values.symbols, index)
    bitmap, nulls = _validity(valid)
    data = np.ascontiguousarray(data, dtype=np.float64 if values.kind == "float" else np.int64)
    return pa.Array.from_buffers(typ, len(data), [bitmap, pa.py_buffer(data)], null_count=nulls)


class FastDecoder:
    """Decodes a polled chunk of wire-format values straight into the contract's Arrow columns.

    ``decode(values)`` returns ``(table, positions, rejects)``: the decodable messages' rows in
    chunk order (``CONTRACT_SCHEMA``), their chunk positions (int64, ascending), and
    ``(position, reason, detail)`` for the rest, in position order — what
    ``Decoder(registry).decode_batch`` reports for the same values. Registry outages raise
    ``RegistryError`` like there.
    """

    def __init__(self, registry: SchemaRegistry) -> None:
        self.registry = registry
        self.fallback = Decoder(registry)  # the authority for every message the fast reader won't vouch for
        self._readers: dict[int, _Reader | None] = {}  # None: the writer schema goes to the dict path

    def _reader(self, schema_id: int) -> _Reader | None:
        """The columnar reader of a schema id; DecodeError for an unknown id (as the slow path says it)."""
        if schema_id in self._readers:
            return self._readers[schema_id]
        self.fallback.require_schema(schema_id)  # raises the unknown-id DecodeError, cached and retried as there
        writer = raw_logical_schema(json.loads(self.registry.get_schema(schema_id).raw))
        try:
            reader: _Reader | None = _Reader(writer)
        except _Unsupported:
            reader = None
        self._readers[schema_id] = reader
        return reader

    def decode(self, values: Sequence[bytes | None]) -> tuple[pa.Table, np.ndarray, list[tuple[int, str, str]]]:
        n = len(values)
        if n == 0:
            return CONTRACT_SCHEMA.empty_table(), np.empty(0, np.int64), []
        try:
            lengths = np.fromiter(map(len, values), dtype=np.int64, count=n)  # type: ignore[arg-type]
        except TypeError:  # a None (tombstone) among them
            values = [v if v is not None else b"" for v in values]
            lengths = np.fromiter(map(len, values), dtype=np.int64, count=n)  # type: ignore[arg-type]
        buf = np.frombuffer(b"".join([*values, _PAD]), dtype=np.uint8)  # type: ignore[list-item]
        starts = np.zeros(n, dtype=np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        framed = lengths >= HEADER_SIZE
        framed &= buf[starts] == MAGIC_BYTE  # a zero-length value reads the next one's byte, but isn't framed anyway
        head = buf[starts[:, None] + np.arange(1, 5)].astype(np.int64)
        schema_ids = (head[:, 0] << 24) | (head[:, 1] << 16) | (head[:, 2] << 8) | head[:, 3]

        tables: list[pa.Table] = []
        table_positions: list[np.ndarray] = []
        slow: list[int] = np.flatnonzero(~framed).tolist()  # the fallback reports empty / bad magic / short
        rejects: list[tuple[int, str, str]] = []
        framed_at = np.flatnonzero(framed)
        ids = schema_ids[framed_at]
        unique = np.unique(ids) if len(ids) and (ids != ids[0]).any() else ids[:1]
        for schema_id in unique.tolist():
            rows = framed_at if len(unique) == 1 else framed_at[ids == schema_id]
            try:
                reader = self._reader(schema_id)
            except DecodeError as exc:
                rejects.extend((int(i), exc.reason, exc.detail) for i in rows)
                continue
            if reader is None:
                table, pos, errors = self._decode_dicts(values, rows)
                rejects.extend(errors)
            else:
                body = starts[rows] + HEADER_SIZE
                table, pos, suspect = self._decode_columns(reader, buf, body, starts[rows] + lengths[rows], rows)
                slow.extend(suspect)
            if table.num_rows:
                tables.append(table)
                table_positions.append(pos)

        if slow:
            rescued: list[dict[str, Any]] = []
            rescued_at: list[int] = []
            for i in sorted(slow):
                try:
                    record = self.fallback.decode(values[i])
                except DecodeError as exc:
                    rejects.append((i, exc.reason, exc.detail))
                    continue
                rescued.append(record)
                rescued_at.append(i)
            if rescued:
                tables.append(records_table(rescued))
                table_positions.append(np.array(rescued_at, dtype=np.int64))
        rejects.sort(key=lambda r: r[0])

        if not tables:
            return CONTRACT_SCHEMA.empty_table(), np.empty(0, np.int64), rejects
        if len(tables) == 1:
            return tables[0], table_positions[0], rejects
        positions = np.concatenate(table_positions)
        table = pa.concat_tables(tables)
        order = np.argsort(positions, kind="stable")
        if (np.diff(order) != 1).any():
            table = table.take(pa.array(order))
            positions = positions[order]
        return table.combine_chunks(), positions, rejects

    def _decode_columns(
        self, reader: _Reader, buf: np.ndarray, body_start: np.ndarray, body_end: np.ndarray, rows: np.ndarray
    ) -> tuple[pa.Table, np.ndarray, list[int]]:
        """(table, positions) of the strictly well-formed bodies, and the positions of the others."""
        cur = _Cursor(buf, body_start.copy(), body_end)
        values = reader.read(cur)
        cur.bad |= cur.pos != body_end  # trailing bytes, or ran past the end
        # UTF-8: build every string column of the rows still good and let Arrow check it; a row
        # that fails goes to the slow path, and the columns are built again without it.
        while True:
            keep = ~cur.bad
            everyone = bool(keep.all())
            built: dict[int, pa.Array] = {}
            for rows_of, v in cur.strings:
                mine = keep if rows_of is None else keep[rows_of]
                array = _strings(buf, *_select((v.data, v.lengths, v.valid), None if mine.all() else mine))
                try:
                    array.validate(full=True)
                except pa.ArrowInvalid:
                    local = np.flatnonzero(mine)[_utf8_failures(array)]
                    cur.bad[local if rows_of is None else rows_of[local]] = True
                    break
                if rows_of is None:
                    built[id(v)] = array
            else:
                break
        kept = int(keep.sum())
        columns = []
        for field in CONTRACT_SCHEMA:
            got = values.get(field.name)
            if got is not None and id(got) in built:
                columns.append(built[id(got)])
            else:
                columns.append(_column(field.name, got, None if everyone else keep, buf, kept))
        table = pa.Table.from_arrays(columns, schema=CONTRACT_SCHEMA)
        positions = rows if everyone else rows[keep]
        return table, positions.astype(np.int64, copy=False), rows[cur.bad].tolist()

    def _decode_dicts(
        self, values: Sequence[bytes | None], rows: np.ndarray
    ) -> tuple[pa.Table, np.ndarray, list[tuple[int, str, str]]]:
        """A writer schema the columnar reader doesn't take: the dict path for its messages."""
        subset = [values[i] for i in rows.tolist()]
        records, errors = self.fallback.decode_batch(subset)
        failed = {i for i, _ in errors}
        positions = np.array([int(rows[i]) for i in range(len(subset)) if i not in failed], dtype=np.int64)
        rejects: list[tuple[int, str, str]] = [(int(rows[i]), e.reason, e.detail) for i, e in errors]
        return records_table(records) if records else CONTRACT_SCHEMA.empty_table(), positions, rejects
