"""Avro in the Confluent wire format: encode for producers, decode for the DLQ tools and the columnar reader.

A Kafka value is ``0x00`` (magic byte) + the writer schema's registry id as 4 bytes big-endian + the
Avro binary body. Decoding looks the id up in the schema registry (cached per id) and, when the
decoder has a reader schema, resolves the writer's shape into the reader's (an older producer's
v1 event is read as v2 with the new fields' defaults).

Records are plain dicts of raw Avro values. Logical types are *not* converted: ``timestamp-millis``
stays an ``int`` of milliseconds since the epoch (UTC), ``uuid`` stays a ``str``, likewise the other
date/time logical types. Converting halves the decode throughput (a ``datetime`` and a ``UUID`` per
event), and the columnar batch for ClickHouse wants the integers anyway; the uuid's format is a
validation rule, not a decode error. ``decimal`` keeps fastavro's ``Decimal`` conversion.

Speed (see ``bench/bench_decode.py``): fastavro's per-record work dominates (~5 µs for a card
transaction: every varint is a ``read()`` call), and the ingest worker doesn't come here for it:
``FastDecoder`` (``contracts/columnar.py``) reads the bodies column-wise and hands this decoder only
the messages it won't vouch for, one by one, and writer schemas it can't read, as a batch.
``decode_batch`` is therefore a plain loop over ``decode``. (It used to read a run of bodies as
one in-memory Avro container block: ~9% faster on clean batches, slower than the loop with 1%
corrupt messages, and ~170 lines of position bookkeeping — not worth it off the hot path.)
A reader schema that only adds fields with defaults or drops fields is applied to the decoded
dicts instead of through fastavro's schema resolution, which costs half the throughput.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Iterable, Mapping, Sequence
from io import BytesIO
from typing import TYPE_CHECKING, Any, Final, Literal

import fastavro

from pipelines.contracts.registry.base import SchemaNotFoundError

if TYPE_CHECKING:
    from pipelines.contracts.registry.base import SchemaRegistry

MAGIC_BYTE: Final = 0
HEADER_SIZE: Final = 5
_HEADER = struct.Struct(">bI")

DecodeReason = Literal["empty", "bad_magic_byte", "unknown_schema_id", "truncated", "wrong_type"]
DECODE_REASONS: Final[tuple[str, ...]] = ("empty", "bad_magic_byte", "unknown_schema_id", "truncated", "wrong_type")

# Logical types left as their underlying Avro value (see the module docstring).
RAW_LOGICAL_TYPES: Final = frozenset(
    {
        "date",
        "time-millis",
        "time-micros",
        "timestamp-millis",
        "timestamp-micros",
        "timestamp-nanos",
        "local-timestamp-millis",
        "local-timestamp-micros",
        "local-timestamp-nanos",
        "uuid",
    }
)

# Seconds an unknown schema id is answered from memory before the registry is asked again.
UNKNOWN_ID_RETRY_S: Final = 30.0
_FASTAVRO_KEYS: Final = frozenset({"__fastavro_parsed", "__named_schemas"})


class DecodeError(Exception):
    """One message could not be decoded: a data error to dead-letter with its reason, not a nova failure.

    ``reason`` is one of ``DECODE_REASONS``: ``empty`` (no value / tombstone), ``bad_magic_byte``
    (not Confluent-framed), ``unknown_schema_id`` (the registry has no such id), ``truncated`` (the
    header or the body ends early), ``wrong_type`` (the body doesn't decode against its writer
    schema, leaves trailing bytes, or can't be resolved into the reader schema).
    """

    def __init__(self, reason: DecodeReason, detail: str, *, schema_id: int | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.schema_id = schema_id

    def __repr__(self) -> str:
        return f"DecodeError({self.reason!r}, {self.detail!r})"


class EncodeError(ValueError):
    """A record does not match the schema it is being encoded with."""


def raw_logical_schema(schema: Any) -> Any:
    """A copy of an Avro schema (JSON form) without the logical types listed in RAW_LOGICAL_TYPES."""
    if isinstance(schema, dict):
        if schema.get("logicalType") in RAW_LOGICAL_TYPES:
            return {k: raw_logical_schema(v) for k, v in schema.items() if k != "logicalType"}
        return {k: raw_logical_schema(v) for k, v in schema.items() if k not in _FASTAVRO_KEYS}
    if isinstance(schema, list):
        return [raw_logical_schema(item) for item in schema]
    return schema


def _schema_json(schema: Any) -> Any:
    """Avro JSON from schema text, a dict (fastavro-parsed or not) or a registry's RegisteredSchema."""
    schema = getattr(schema, "raw", schema)
    if isinstance(schema, str):
        return json.loads(schema)
    return {k: v for k, v in schema.items() if k not in _FASTAVRO_KEYS}


def parse_raw(schema: str | dict[str, Any]) -> dict[str, Any]:
    """fastavro-parse a schema with logical types left raw: the form encoders and decoders here use."""
    return fastavro.parse_schema(raw_logical_schema(_schema_json(schema)))  # type: ignore[return-value]


def enum_symbols(schema: Mapping[str, Any], field: str) -> tuple[str, ...]:
    """The symbols of the enum a record schema's ``field`` holds (alone or in a union), in order.

    So code that needs a contract's vocabulary (channels, statuses) reads it from the schema
    instead of listing it again.
    """
    for fld in schema.get("fields", ()):
        if fld.get("name") != field:
            continue
        branches = fld["type"] if isinstance(fld["type"], list) else [fld["type"]]
        for branch in branches:
            if isinstance(branch, dict) and branch.get("type") == "enum":
                return tuple(branch["symbols"])
        raise ValueError(f"field {field!r} of schema {schema.get('name')!r} is not an enum")
    raise ValueError(f"schema {schema.get('name')!r} has no field {field!r}")


def wire_header(schema_id: int) -> bytes:
    """The 5-byte Confluent header of a value written with schema ``schema_id``."""
    if not 0 <= schema_id <= 0xFFFFFFFF:
        raise ValueError(f"schema id {schema_id} does not fit the 4-byte wire header")
    return _HEADER.pack(MAGIC_BYTE, schema_id)


def _encode_failed(exc: Exception, record: Any, schema_id: int, parsed_schema: dict[str, Any]) -> EncodeError:
    detail = str(exc)
    try:
        from fastavro.validation import validate

        validate(record, parsed_schema, raise_errors=True)
    except Exception as verr:  # only for the message: fastavro's own errors name the field
        detail = str(verr)
    return EncodeError(f"record does not match schema id {schema_id}: {detail}")


def encode(record: dict[str, Any], schema_id: int, parsed_schema: dict[str, Any]) -> bytes:
    """One record as a wire-format value. ``parsed_schema`` is used as given (see ``parse_raw``)."""
    buf = BytesIO()
    buf.write(wire_header(schema_id))
    try:
        fastavro.schemaless_writer(buf, parsed_schema, record)
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
        raise _encode_failed(exc, record, schema_id, parsed_schema) from None
    return buf.getvalue()


def encode_batch(records: Iterable[dict[str, Any]], schema_id: int, parsed_schema: dict[str, Any]) -> list[bytes]:
    """Many records as wire-format values, written into one reused buffer and sliced apart."""
    header = wire_header(schema_id)
    buf = BytesIO()
    write, tell, writer = buf.write, buf.tell, fastavro.schemaless_writer
    offsets = [0]
    mark = offsets.append
    record: Any = None
    try:
        for record in records:
            write(header)
            writer(buf, parsed_schema, record)
            mark(tell())
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
        raise _encode_failed(exc, record, schema_id, parsed_schema) from None
    data = buf.getvalue()
    return [data[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]


class Encoder:
    """Encodes records of one registered schema; logical types raw by default (ints, strs)."""

    def __init__(self, schema_id: int, schema: str | dict[str, Any], *, logical_types: bool = False) -> None:
        wire_header(schema_id)
        self.schema_id = schema_id
        self.parsed: dict[str, Any] = (
            fastavro.parse_schema(_schema_json(schema)) if logical_types else parse_raw(schema)  # type: ignore[assignment]
        )

    def encode(self, record: dict[str, Any]) -> bytes:
        return encode(record, self.schema_id, self.parsed)

    def encode_batch(self, records: Iterable[dict[str, Any]]) -> list[bytes]:
        return encode_batch(records, self.schema_id, self.parsed)


class _Plan:
    """How to decode the bodies written with one schema id."""

    __slots__ = ("defaults", "drop", "reader", "schema_id", "writer")

    def __init__(self, schema_id: int, writer_json: Any, reader_json: Any | None) -> None:
        self.schema_id = schema_id
        writer_raw = raw_logical_schema(writer_json)
        self.writer: dict[str, Any] = fastavro.parse_schema(writer_raw)  # type: ignore[assignment]
        reader_raw = raw_logical_schema(reader_json) if reader_json is not None else None
        # Projection: when the reader only adds fields (with plain defaults) and drops fields, and
        # the fields both have are of identical types, decoding with the writer schema and fixing
        # the dict up afterwards gives what fastavro's resolution gives, at ~2x its speed.
        self.defaults: dict[str, Any] = {}
        self.drop: tuple[str, ...] = ()
        projection = _projection(writer_raw, reader_raw) if reader_raw is not None else None
        if projection is not None:
            self.defaults, self.drop = projection
            reader_raw = None
        self.reader: dict[str, Any] | None = (
            fastavro.parse_schema(reader_raw) if reader_raw is not None else None  # type: ignore[assignment]
        )

    def project(self, records: list[dict[str, Any]]) -> None:
        """Turn records decoded with the writer schema into the reader's shape (projection plans)."""
        drop, defaults = self.drop, self.defaults
        if drop:
            for record in records:
                for name in drop:
                    del record[name]
        if defaults:
            for record in records:
                record.update(defaults)


def _fullname(schema: dict[str, Any]) -> str:
    name = str(schema.get("name", ""))
    namespace = schema.get("namespace")
    return name if "." in name or not namespace else f"{namespace}.{name}"


def _plain_default(field_type: Any, default: Any) -> tuple[bool, Any]:
    """(usable, value) for a default that is an immutable plain value of the field's type."""
    branch = field_type[0] if isinstance(field_type, list) and field_type else field_type
    if isinstance(branch, dict):
        if branch.get("type") == "enum":
            return isinstance(default, str) and default in branch.get("symbols", ()), default
        branch = branch.get("type")
    if branch == "null":
        return default is None, None
    if isinstance(default, bool):
        return branch == "boolean", default
    if branch in ("int", "long"):
        return isinstance(default, int), default
    if branch in ("float", "double"):
        return isinstance(default, int | float), float(default) if isinstance(default, int | float) else None
    if branch == "string":
        return isinstance(default, str), default
    return False, None


def _projection(writer: Any, reader: Any) -> tuple[dict[str, Any], tuple[str, ...]] | None:
    """(defaults to add, fields to drop) if ``reader`` is a projection of ``writer``, else None."""
    if not (_is_record(writer) and _is_record(reader)) or _fullname(writer) != _fullname(reader):
        return None
    writer_fields = {f["name"]: f for f in writer["fields"]}
    reader_names = set()
    defaults: dict[str, Any] = {}
    for fld in reader["fields"]:
        name = fld["name"]
        reader_names.add(name)
        other = writer_fields.get(name)
        if other is not None:
            if not _same_schema(fld["type"], other["type"]):
                return None  # promotions, enum/union changes, nested records: fastavro resolves
            continue
        if fld.get("aliases") or "default" not in fld:
            return None
        usable, value = _plain_default(fld["type"], fld["default"])
        if not usable:
            return None
        defaults[name] = value
    return defaults, tuple(name for name in writer_fields if name not in reader_names)


def _is_record(schema_json: Any) -> bool:
    return isinstance(schema_json, dict) and schema_json.get("type") == "record"


def _same_schema(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


class Decoder:
    """Decodes wire-format values by schema id, with cached registry lookups.

    ``reader_schema`` (Avro JSON text or dict) is the shape records come out in: bodies written with
    another (older or newer) version are resolved into it by fastavro's schema resolution — added
    fields take their defaults, removed ones are dropped; a reader with fewer fields decodes only
    those. Without one, every record has its own writer's shape.

    Registry failures other than an unknown id (registry down, bad credentials) raise
    ``RegistryError``: they are not the message's fault and must not dead-letter it.
    """

    def __init__(self, registry: SchemaRegistry, reader_schema: str | dict[str, Any] | None = None) -> None:
        self.registry = registry
        self.reader_json = _schema_json(reader_schema) if reader_schema is not None else None
        if self.reader_json is not None:
            fastavro.parse_schema(self.reader_json)  # reject a bad reader schema now, not per message
        self._plans: dict[int, _Plan] = {}
        self._unknown: dict[int, tuple[str, float]] = {}

    def require_schema(self, schema_id: int) -> None:
        """Raise the `unknown_schema_id` DecodeError this decoder would give for `schema_id` (cached)."""
        self._plan(schema_id)

    def _plan(self, schema_id: int) -> _Plan:
        plan = self._plans.get(schema_id)
        if plan is not None:
            return plan
        unknown = self._unknown.get(schema_id)
        if unknown is not None:
            detail, until = unknown
            if time.monotonic() < until:
                raise DecodeError("unknown_schema_id", detail, schema_id=schema_id)
            del self._unknown[schema_id]
        try:
            registered = self.registry.get_schema(schema_id)
        except SchemaNotFoundError as exc:
            detail = f"schema id {schema_id}: {exc.message}"
            # Remembered for a while so a flood of messages with a bogus id doesn't hammer the
            # registry, but asked again later in case the id was registered meanwhile.
            self._unknown[schema_id] = (detail, time.monotonic() + UNKNOWN_ID_RETRY_S)
            raise DecodeError("unknown_schema_id", detail, schema_id=schema_id) from None
        plan = _Plan(schema_id, json.loads(registered.raw), self.reader_json)
        self._plans[schema_id] = plan
        return plan

    def decode(self, value: bytes | None) -> dict[str, Any]:
        """One value as a record; raises ``DecodeError``."""
        if not value:
            raise DecodeError("empty", "the message has no value (null or zero bytes)")
        if value[0] != MAGIC_BYTE:
            raise DecodeError("bad_magic_byte", f"first byte is 0x{value[0]:02x}, expected 0x00 (Confluent framing)")
        if len(value) < HEADER_SIZE:
            raise DecodeError("truncated", f"{len(value)} bytes, shorter than the 5-byte header")
        schema_id = int.from_bytes(value[1:5], "big")
        return self._decode_body(self._plan(schema_id), value)

    @staticmethod
    def _decode_body(plan: _Plan, value: bytes) -> dict[str, Any]:
        fo = BytesIO(value)
        fo.seek(HEADER_SIZE)
        try:
            record = fastavro.schemaless_reader(fo, plan.writer, plan.reader)
        except (EOFError, StopIteration) as exc:
            raise DecodeError(
                "truncated", f"body of {len(value) - HEADER_SIZE} bytes ends early: {exc}", schema_id=plan.schema_id
            ) from None
        except Exception as exc:  # garbage can raise anything (UnicodeDecodeError, IndexError, …)
            raise DecodeError(
                "wrong_type",
                f"body does not decode as schema id {plan.schema_id}: {type(exc).__name__}: {exc}",
                schema_id=plan.schema_id,
            ) from None
        extra = len(value) - fo.tell()
        if extra:
            raise DecodeError(
                "wrong_type",
                f"{extra} trailing byte(s) after a complete record of schema id {plan.schema_id}",
                schema_id=plan.schema_id,
            )
        if plan.drop or plan.defaults:
            plan.project([record])  # type: ignore[list-item]
        return record  # type: ignore[return-value]

    def decode_batch(
        self, values: Sequence[bytes | None]
    ) -> tuple[list[dict[str, Any]], list[tuple[int, DecodeError]]]:
        """Decode many values; returns (records, errors).

        ``records`` are the decodable values' records in input order (the failed indices left out);
        ``errors`` are ``(index, DecodeError)`` pairs in index order. Registry outages raise.
        """
        records: list[dict[str, Any]] = []
        errors: list[tuple[int, DecodeError]] = []
        decode = self.decode
        for i, value in enumerate(values):
            try:
                records.append(decode(value))
            except DecodeError as exc:
                # Without its traceback: a kept error must not keep the frame (and its buffers) alive.
                errors.append((i, exc.with_traceback(None)))
        return records, errors
