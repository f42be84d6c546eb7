"""Columns → Confluent-framed Avro with numpy: the mirror of the columnar reader (``columnar``).

``ColumnarEncoder`` builds every field of every row at once and slices one buffer apart, so the
per-event Python work left to a producer is the ``produce()`` call. The codec's ``encode_batch``
calls fastavro once per record (~10 µs each); this is ~10x faster, which the generator and the load
test's producers need to reach the case study's peak. It covers the types a flat record of
primitives uses (string, long/int, double/float, boolean, enum, and unions of null with one of
those) and arrays of strings (the alerts' rule names: each distinct list is encoded once);
``supports()`` says whether a schema qualifies, and callers fall back to the codec otherwise.
Tests check it byte-for-byte against the codec.

Its input is a mapping of field name to ``Column``: a plain numpy array, or one of the compact
forms a generator produces cheaply — ``Coded`` (indices into a vocabulary, encoded once per
vocabulary), ``Fixed`` (same-width ASCII as a byte matrix), ``Floats`` (NaN for null).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np

from pipelines.contracts.codec import raw_logical_schema, wire_header


class Coded(NamedTuple):
    """A string column as indices into a vocabulary (code -1: null). Encoded once per vocabulary."""

    codes: np.ndarray
    vocab: np.ndarray  # object array of str


class Fixed(NamedTuple):
    """An ASCII string column of one width, as a (rows, width) byte matrix."""

    matrix: np.ndarray


class Floats(NamedTuple):
    """A nullable double column (NaN: null)."""

    values: np.ndarray


Column = np.ndarray | Coded | Fixed | Floats


def materialize(column: Column) -> np.ndarray:
    """A column as a plain array: strings and nulls as Python objects, numbers as numbers."""
    if isinstance(column, Coded):
        null = column.codes < 0
        if not null.any():
            return column.vocab[column.codes]  # type: ignore[no-any-return]
        out = np.full(len(column.codes), None, dtype=object)
        out[~null] = column.vocab[column.codes[~null]]
        return out
    if isinstance(column, Fixed):
        width = column.matrix.shape[1]
        return np.ascontiguousarray(column.matrix).view(f"S{width}").ravel().astype(f"U{width}").astype(object)
    if isinstance(column, Floats):
        out = column.values.astype(object)
        out[np.isnan(column.values)] = None
        return out
    return column


def slice_column(column: Column, item: slice) -> Column:
    """Rows ``item`` of a column, in the same compact form (a vocabulary is shared, not copied)."""
    if isinstance(column, Coded):
        return Coded(column.codes[item], column.vocab)
    if isinstance(column, Fixed):
        return Fixed(column.matrix[item])
    if isinstance(column, Floats):
        return Floats(column.values[item])
    return column[item]


def concat_columns(columns: Sequence[Column]) -> Column:
    """One column of several in the same form; ``Coded`` ones must share their vocabulary."""
    first = columns[0]
    if isinstance(first, Coded):
        assert all(c.vocab is first.vocab for c in columns)  # type: ignore[union-attr]
        return Coded(np.concatenate([c.codes for c in columns]), first.vocab)  # type: ignore[union-attr]
    if isinstance(first, Fixed):
        return Fixed(np.concatenate([c.matrix for c in columns]))  # type: ignore[union-attr]
    if isinstance(first, Floats):
        return Floats(np.concatenate([c.values for c in columns]))  # type: ignore[union-attr]
    return np.concatenate(columns)


_NO_DEFAULT = object()


class ColumnBatch(Protocol):
    """Rows as columns: what ``ColumnarEncoder.encode_chunk`` encodes (the generator's TransactionChunk)."""

    @property
    def columns(self) -> Mapping[str, Column]: ...

    def __len__(self) -> int: ...


class _FieldPlan(NamedTuple):
    """How one field of the writer schema is written."""

    name: str
    kind: str  # an Avro primitive type name, "enum", or "array<string>"
    nullable: bool  # a [null, T] union
    symbols: dict[str, int] | None  # an enum's symbol → index
    default: object  # the schema default, or _NO_DEFAULT


class ColumnarEncoder:
    """Encodes a batch of columns straight into Confluent-framed Avro values of one schema id.

    Fields the batch has no column for are written with their schema default.
    """

    _PRIMITIVES = ("string", "long", "int", "double", "float", "boolean")

    def __init__(self, schema_id: int, schema_json: Mapping[str, Any]) -> None:
        self.header = np.frombuffer(wire_header(schema_id), dtype=np.uint8)
        raw = raw_logical_schema(dict(schema_json))
        plan = self._plan(raw)
        if plan is None:
            raise ValueError("schema is not a flat record of primitives, enums and nullable primitives")
        self._fields = plan
        self._vocab_cache: dict[tuple[str, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    @classmethod
    def supports(cls, schema_json: Mapping[str, Any]) -> bool:
        """Whether ``schema_json`` is a flat record of the types this encoder writes."""
        return cls._plan(raw_logical_schema(dict(schema_json))) is not None

    @classmethod
    def _plan(cls, raw: Any) -> list[_FieldPlan] | None:
        """How to write each field of a raw-logical schema; None if some field is of a type not covered."""
        if not isinstance(raw, dict) or raw.get("type") != "record":
            return None
        plan: list[_FieldPlan] = []
        for f in raw.get("fields", []):
            t, nullable = f["type"], False
            if isinstance(t, list):
                if len(t) != 2 or t[0] != "null":
                    return None
                t, nullable = t[1], True
            if isinstance(t, dict) and t.get("type") == "enum":
                symbols = {s: i for i, s in enumerate(t["symbols"])}
                plan.append(_FieldPlan(f["name"], "enum", nullable, symbols, f.get("default", _NO_DEFAULT)))
                continue
            if isinstance(t, dict) and t.get("type") == "array" and t.get("items") in ("string", {"type": "string"}):
                plan.append(_FieldPlan(f["name"], _STRING_ARRAY, nullable, None, f.get("default", _NO_DEFAULT)))
                continue
            if isinstance(t, dict) and set(t) == {"type"}:
                t = t["type"]
            if t not in cls._PRIMITIVES:
                return None
            plan.append(_FieldPlan(f["name"], t, nullable, None, f.get("default", _NO_DEFAULT)))
        return plan

    def encode_chunk(self, chunk: ColumnBatch) -> list[bytes]:
        """One wire-format value per row of ``chunk``, equal byte for byte to the codec's."""
        n = len(chunk)
        if n == 0:
            return []
        parts: list[tuple[np.ndarray, np.ndarray]] = [(np.broadcast_to(self.header, (n, 5)), np.full(n, 5))]
        for field_plan in self._fields:
            name, default = field_plan.name, field_plan.default
            column = chunk.columns.get(name)
            if column is None:
                if default is _NO_DEFAULT:
                    raise ValueError(
                        f"the columns have none for field {name!r}, and the schema gives it no default: "
                        "add the column or a default"
                    )
                column = np.full(n, default, dtype=object)
            parts.extend(self._field(field_plan, column, n))
        flat, lengths = _join_rows(parts)
        data = flat.tobytes()
        bounds = np.concatenate(([0], np.cumsum(lengths))).tolist()
        return [data[bounds[i] : bounds[i + 1]] for i in range(n)]

    def _field(self, field_plan: _FieldPlan, column: Column, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """(byte matrix, row lengths) parts of one field for all n rows, by the column's form."""
        name, kind, nullable, symbols, _ = field_plan
        if isinstance(column, Coded):
            # Encode the vocabulary once; then a value is a row lookup. The last row is null.
            key = (name, id(column.vocab))
            cached = self._vocab_cache.get(key)
            if cached is None or cached[0] is not column.vocab:
                vocab_parts = self._nullable(kind, column.vocab, symbols, nullable)
                matrix, lengths = _pad_rows(*_join_rows(vocab_parts))
                null_row = np.zeros((1, matrix.shape[1]), dtype=np.uint8)
                matrix = np.concatenate([matrix, null_row])
                lengths = np.concatenate([lengths, [1 if nullable else 0]])
                cached = (column.vocab, matrix, lengths)
                self._vocab_cache[key] = cached
            _, matrix, lengths = cached
            codes = column.codes
            if (codes < 0).any():
                if not nullable:
                    raise ValueError(f"field {name!r} is not nullable but the column has nulls")
                codes = np.where(codes < 0, len(lengths) - 1, codes)
            return [(matrix[codes], lengths[codes])]
        if isinstance(column, Fixed) and kind == "string":
            width = column.matrix.shape[1]
            prefix_matrix, prefix_len = _varints(np.array([width]))
            prefix = [(np.broadcast_to(prefix_matrix, (n, prefix_matrix.shape[1])), np.full(n, int(prefix_len[0])))]
            if nullable:
                prefix.insert(0, (np.full((n, 1), 2, dtype=np.uint8), np.ones(n, dtype=np.int64)))
            return [*prefix, (column.matrix, np.full(n, width))]
        if isinstance(column, Floats) and kind in ("double", "float") and nullable:
            present = ~np.isnan(column.values)
            dtype, size = ("<f8", 8) if kind == "double" else ("<f4", 4)
            values = column.values.astype(dtype).view(np.uint8).reshape(n, size)
            return [
                (present.astype(np.uint8)[:, None] * 2, np.ones(n, dtype=np.int64)),
                (values, present * size),
            ]
        return self._nullable(kind, materialize(column), symbols, nullable)

    @classmethod
    def _nullable(
        cls, kind: str, column: np.ndarray, symbols: dict[str, int] | None, nullable: bool
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """The parts of a column of Python values, behind a union branch index if nullable."""
        if not nullable:
            return cls._values(kind, column, symbols)
        n = len(column)
        present = np.array([v is not None for v in column.tolist()], dtype=bool)
        parts = [(present.astype(np.uint8)[:, None] * 2, np.ones(n, dtype=np.int64))]  # union branch: 0 or 1
        if present.any():
            for matrix, lengths in cls._values(kind, column[present], symbols):
                full = np.zeros((n, matrix.shape[1]), dtype=np.uint8)
                full[present] = matrix
                full_lengths = np.zeros(n, dtype=np.int64)
                full_lengths[present] = lengths
                parts.append((full, full_lengths))
        return parts

    @classmethod
    def _values(
        cls, kind: str, column: np.ndarray, symbols: dict[str, int] | None
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """The parts of a column of non-null Python values of Avro type ``kind``."""
        n = len(column)
        if kind == "string":
            items = column.tolist()
            lengths = np.fromiter(map(len, items), dtype=np.int64, count=n)
            wide = np.array(items, dtype="U")
            codes = wide.view(np.uint32).reshape(n, -1)
            if codes.size and int(codes.max()) < 0x80:  # ASCII: characters are the bytes
                text = codes.astype(np.uint8)
            else:
                encoded = [v.encode() for v in items]
                lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=n)
                text = np.array(encoded, dtype=f"S{max(int(lengths.max()), 1)}").view(np.uint8).reshape(n, -1)
            return [_varints(lengths), (text, lengths)]
        if kind in ("long", "int"):
            return [_varints(np.asarray(column, dtype=np.int64))]
        if kind == "enum":
            assert symbols is not None  # every enum's plan has its symbols
            return [_varints(np.array([symbols[v] for v in column.tolist()], dtype=np.int64))]
        if kind == "double":
            return [(np.asarray(column, dtype="<f8").view(np.uint8).reshape(n, 8), np.full(n, 8))]
        if kind == "float":
            return [(np.asarray(column, dtype="<f4").view(np.uint8).reshape(n, 4), np.full(n, 4))]
        if kind == "boolean":
            return [(np.asarray(column, dtype=bool).astype(np.uint8)[:, None], np.ones(n, dtype=np.int64))]
        if kind == _STRING_ARRAY:
            return [_string_arrays(column)]
        raise ValueError(f"unsupported Avro type {kind}")


_STRING_ARRAY = "array<string>"


def _string_arrays(column: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lists of strings as Avro arrays (one block of n items, then the 0 that ends it; [] is just 0).

    Each distinct list is encoded once and rows look it up: alert rules repeat a few combinations.
    """
    codes = np.empty(len(column), dtype=np.int64)
    distinct: dict[tuple[str, ...], int] = {}
    for i, value in enumerate(column.tolist()):
        codes[i] = distinct.setdefault(tuple(value), len(distinct))
    encoded = []
    for items in distinct:
        out = bytearray()
        if items:
            out += _varint_bytes(len(items))
            for item in items:
                data = item.encode()
                out += _varint_bytes(len(data)) + data
        out.append(0)
        encoded.append(bytes(out))
    lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    matrix = np.array(encoded, dtype=f"S{int(lengths.max())}").view(np.uint8).reshape(len(encoded), -1)
    return matrix[codes], lengths[codes]


def _varint_bytes(value: int) -> bytes:
    matrix, lengths = _varints(np.array([value]))
    return matrix[0, : int(lengths[0])].tobytes()


def _join_rows(parts: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Row i of every part, its first lengths[i] bytes each, concatenated: (all the bytes, row lengths)."""
    matrix = np.hstack([m for m, _ in parts])
    mask = np.hstack([np.arange(m.shape[1]) < lengths[:, None] for m, lengths in parts])
    return matrix[mask], np.sum([lengths for _, lengths in parts], axis=0)


def _pad_rows(flat: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated rows back into a zero-padded (rows, longest) matrix."""
    width = int(lengths.max()) if len(lengths) else 0
    out = np.zeros((len(lengths), width), dtype=np.uint8)
    out[np.arange(width) < lengths[:, None]] = flat
    return out, lengths


def _varints(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Avro zigzag varints of int64s, as a (n, width) byte matrix and each row's length."""
    v = values.astype(np.int64)
    z = ((v << 1) ^ (v >> 63)).view(np.uint64)
    lengths = np.ones(len(z), dtype=np.int64)
    rest = z >> np.uint64(7)
    width = 1
    while rest.any():
        lengths += rest > 0
        rest = rest >> np.uint64(7)
        width += 1
    shifts = (np.arange(width, dtype=np.uint64) * np.uint64(7))[None, :]
    matrix = ((z[:, None] >> shifts) & np.uint64(0x7F)).astype(np.uint8)
    matrix |= (np.arange(width)[None, :] < (lengths - 1)[:, None]).astype(np.uint8) << 7
    return matrix, lengths
