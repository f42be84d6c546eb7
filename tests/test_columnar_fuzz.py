"""Fuzzing the hand-written columnar Avro reader (`FastDecoder`) against fastavro, the authority.

Valid Confluent-framed bodies of four writer schemas (the contract; one with every other Avro
type; one whose contract columns use other encodings; one the columnar reader leaves to the dict
path) are mutated — bit flips, truncation, insertion and deletion, varint edge cases, negative
and huge lengths, invalid UTF-8, union branches and enum indices out of range, bad headers —
and decoded in chunks both ways. On every input `FastDecoder.decode` must agree with
`Decoder.decode` (fastavro) message by message: the same record, or the same reject (reason and
detail); `Decoder.decode_batch` must agree too.

CI runs a bounded, derandomized budget (no example database). A longer, random run:
`COLUMNAR_FUZZ_EXAMPLES=20000 .venv/bin/python -m pytest -p no:cacheprovider tests/test_columnar_fuzz.py`.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.contracts.arrow import CONTRACT_SCHEMA
from pipelines.contracts.codec import DecodeError, Decoder, Encoder, wire_header
from pipelines.contracts.columnar import FastDecoder
from pipelines.contracts.registry import FileRegistry
from tests.conftest import REPO

SUBJECT = "transactions-value"
_EXAMPLES = int(os.environ.get("COLUMNAR_FUZZ_EXAMPLES", "0"))
FUZZ = settings(
    max_examples=_EXAMPLES or 400,
    deadline=None,
    derandomize=not _EXAMPLES,  # CI: the same examples every run; a long run explores
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _contract() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((REPO / "configs" / "schemas" / "transaction-v1.avsc").read_text())
    return schema


def _rich() -> dict[str, Any]:
    """Every other Avro type around the contract fields, read (and checked) but not kept."""
    schema = _contract()
    meta = {
        "type": "record",
        "name": "Meta",
        "fields": [
            {"name": "ok", "type": "boolean"},
            {"name": "ratio", "type": "float"},
            {"name": "raw", "type": "bytes"},
            {"name": "hash", "type": {"type": "fixed", "name": "Hash4", "size": 4}},
            {"name": "level", "type": ["null", "long", "string"]},
            {"name": "small", "type": "int"},
        ],
    }
    schema["fields"].insert(3, {"name": "meta", "type": meta})
    schema["fields"].append({"name": "again", "type": ["null", "Meta"], "default": None})
    schema["fields"].append({"name": "channel2", "type": "com.novapay.payments.Channel", "default": "POS"})
    schema["fields"].insert(0, {"name": "nothing", "type": "null"})
    return schema


def _variant() -> dict[str, Any]:
    """The contract columns in other encodings the columnar reader takes."""
    schema = _contract()
    by_name = {f["name"]: f for f in schema["fields"]}
    by_name["amount_minor"]["type"] = "int"
    by_name["latitude"]["type"] = ["null", "float"]
    by_name["longitude"]["type"] = ["double", "null"]  # null as the second branch
    by_name["longitude"]["default"] = 0.0
    by_name["channel"]["type"] = "string"
    by_name["device_id"]["type"] = ["string", "null"]
    by_name["device_id"]["default"] = ""
    by_name["status"]["type"] = {"type": "enum", "name": "Status", "symbols": ["REVERSED", "AUTHORIZED", "CAPTURED"]}
    schema["fields"] = [f for f in schema["fields"] if f["name"] != "ip_address"]
    schema["fields"].insert(0, {"name": "note", "type": "string"})
    return schema


def _dict_path() -> dict[str, Any]:
    """A writer the columnar reader hands to `decode_batch` whole (an array)."""
    schema = _contract()
    schema["fields"].append({"name": "tags", "type": {"type": "array", "items": "string"}, "default": []})
    return schema


WRITERS = [_contract(), _rich(), _variant(), _dict_path()]


@dataclass(frozen=True)
class Message:
    writer: int  # index into WRITERS
    record: dict[str, Any]
    mutations: tuple[tuple[Any, ...], ...]
    header: str  # ok | unknown_id | bad_magic | short | empty | none


# Byte sequences that sit on the reader's edges: varint lengths and values, indices, UTF-8.
_EDGES = [
    b"\x00", b"\x01", b"\x02", b"\x03", b"\x04", b"\x06", b"\x0a", b"\x7e", b"\x7f", b"\x80", b"\xff",
    b"\x80\x00", b"\x80\x80\x00", b"\x80\x01", b"\xff\x7f", b"\xfe\xff\xff\xff\x0f", b"\xff\xff\xff\xff\x0f",
    b"\xfe" + b"\xff" * 7 + b"\x7f",  # 9 bytes
    b"\xfe" + b"\xff" * 8 + b"\x01",  # 10 bytes, exactly 64 bits
    b"\xfe" + b"\xff" * 8 + b"\x7f",  # 10 bytes, more than 64 bits
    b"\xff" * 10 + b"\x01",  # 11 bytes
    b"\xed\xa0\x80", b"\xc0\xaf", b"\xc0\x80", b"\xe6\x9d", b"\xf4\x90\x80\x80", b"\xef\xbf\xbf", b"\xf0\x9f\x99\x82",
]  # fmt: skip


def _named(schema: Any, names: dict[str, Any]) -> Any:
    if isinstance(schema, str) and schema in names:
        return names[schema]
    if isinstance(schema, dict) and schema.get("type") in ("record", "enum", "fixed"):
        names[schema["name"]] = schema
        names[f"com.novapay.payments.{schema['name']}"] = schema
    return schema


_TEXT = st.one_of(
    st.text(max_size=12),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=40),
    st.text(alphabet="ab€🙂\u0000\u07ff\uffff", min_size=60, max_size=600),  # long, multi-byte
)
_DOUBLE = st.floats(allow_nan=True, allow_infinity=True)


def _values(schema: Any, names: dict[str, Any]) -> st.SearchStrategy[Any]:
    schema = _named(schema, names)
    if isinstance(schema, list):
        return st.one_of(*[_values(branch, names) for branch in schema])
    kind = schema if isinstance(schema, str) else schema["type"]
    if isinstance(kind, dict):
        return _values(kind, names)
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "int":
        return st.integers(-(2**31), 2**31 - 1)
    if kind == "long":
        edges = st.sampled_from([0, -1, 63, -64, 64, 2**55 - 1, 2**55, -(2**55), 2**63 - 1, -(2**63)])
        return st.one_of(st.integers(-(2**63), 2**63 - 1), edges)
    if kind == "float":
        return st.floats(width=32, allow_nan=False)
    if kind == "double":
        return _DOUBLE
    if kind == "string":
        return _TEXT
    if kind == "bytes":
        return st.binary(max_size=20)
    if kind == "fixed":
        return st.binary(min_size=schema["size"], max_size=schema["size"])
    if kind == "enum":
        return st.sampled_from(schema["symbols"])
    if kind == "array":
        return st.lists(_values(schema["items"], names), max_size=3)
    if kind == "record":
        return st.fixed_dictionaries({f["name"]: _values(f["type"], names) for f in schema["fields"]})
    raise AssertionError(f"no strategy for {schema!r}")


_RECORDS = [_values(copy.deepcopy(w), {}) for w in WRITERS]
_POSITION = st.floats(0, 1, exclude_max=True)  # a place in the body, as a fraction of its length
_MUTATION = st.one_of(
    st.tuples(st.just("flip"), _POSITION, st.integers(0, 7)),
    st.tuples(st.just("truncate"), _POSITION),
    st.tuples(st.just("insert"), _POSITION, st.one_of(st.sampled_from(_EDGES), st.binary(min_size=1, max_size=8))),
    st.tuples(st.just("overwrite"), _POSITION, st.sampled_from(_EDGES)),
    st.tuples(st.just("delete"), _POSITION, st.integers(1, 12)),
    # at the start of a field: its union branch, enum index, length or value
    st.tuples(st.just("field"), st.integers(0, 40), st.sampled_from(_EDGES)),
    st.tuples(st.just("garbage"), st.binary(max_size=120)),
)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    writer = draw(st.sampled_from(range(len(WRITERS))))
    record = draw(_RECORDS[writer])
    mutations = tuple(draw(st.lists(_MUTATION, max_size=3)))
    header = draw(st.sampled_from(["ok"] * 12 + ["unknown_id", "bad_magic", "short", "empty", "none"]))
    return Message(writer, record, mutations, header)


@dataclass
class Bench:
    ids: list[int]
    encoders: list[Encoder]
    fast: FastDecoder
    authority: Decoder
    batch: Decoder


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bench]:
    directory = shutil.copytree(REPO / "configs" / "schemas", tmp_path_factory.mktemp("fuzz") / "schemas")
    registry = FileRegistry(directory, compatibility="NONE")
    ids = [1] + [registry.register(SUBJECT, json.dumps(w)) for w in WRITERS[1:]]
    encoders = [Encoder(i, json.dumps(w)) for i, w in zip(ids, WRITERS, strict=True)]
    yield Bench(ids, encoders, FastDecoder(registry), Decoder(registry), Decoder(registry))


def _field_starts(bench: Bench, m: Message) -> list[int]:
    """Where each top-level field of the message's body starts (offsets into the framed value)."""
    writer = WRITERS[m.writer]
    starts = []
    for k in range(len(writer["fields"])):
        prefix = {**writer, "fields": writer["fields"][:k]}
        starts.append(len(Encoder(bench.ids[m.writer], json.dumps(prefix)).encode(m.record)))
    return starts


def _wire(bench: Bench, m: Message) -> bytes | None:
    if m.header == "none":
        return None
    if m.header == "empty":
        return b""
    value = bytearray(bench.encoders[m.writer].encode(m.record))
    for mutation in m.mutations:
        body = len(value) - 5
        at = 5 + int(mutation[1] * body) if isinstance(mutation[1], float) else 5
        match mutation:
            case ("flip", _, bit) if body:
                value[at] ^= 1 << bit
            case ("truncate", _):
                del value[at:]
            case ("insert", _, data):
                value[at:at] = data
            case ("overwrite", _, data):
                value[at : at + len(data)] = data
            case ("delete", _, n):
                del value[at : at + n]
            case ("field", index, data):
                starts = _field_starts(bench, m)
                start = starts[index % len(starts)]
                value[start : start + 1] = data
            case ("garbage", data):
                value[5:] = data
    if m.header == "unknown_id":
        value[:5] = wire_header(404)
    elif m.header == "bad_magic":
        value[0] = 1
    elif m.header == "short":
        del value[3:]
    return bytes(value)


def _detail(text: str) -> str:
    return re.sub(r" at 0x[0-9a-f]+", " at 0x…", text)  # fastavro names a BytesIO by its address


def _plain(value: Any) -> Any:
    return "NaN" if isinstance(value, float) and math.isnan(value) else value


def _table_rows(table: pa.Table) -> list[dict[str, Any]]:
    i = table.column_names.index("event_time")
    table = table.set_column(i, "event_time", table["event_time"].cast(pa.int64()))
    return [{k: _plain(v) for k, v in row.items()} for row in table.to_pylist()]


def _contract_row(record: dict[str, Any]) -> dict[str, Any]:
    return {name: _plain(record.get(name)) for name in CONTRACT_SCHEMA.names}


def assert_agree(bench: Bench, values: list[bytes | None]) -> None:
    """FastDecoder, decode_batch and fastavro one message at a time give the same rows and rejects."""
    kept: list[int] = []
    rows: list[dict[str, Any]] = []
    rejects: list[tuple[int, str, str]] = []
    for i, value in enumerate(values):
        try:
            record = bench.authority.decode(value)
        except DecodeError as exc:
            rejects.append((i, exc.reason, _detail(exc.detail)))
            continue
        kept.append(i)
        rows.append(_contract_row(record))

    table, positions, fast_rejects = bench.fast.decode(values)
    assert [(i, reason, _detail(detail)) for i, reason, detail in fast_rejects] == rejects
    assert positions.tolist() == kept
    assert table.schema == CONTRACT_SCHEMA
    assert _table_rows(table) == rows

    records, errors = bench.batch.decode_batch(values)
    assert [(i, e.reason, _detail(e.detail)) for i, e in errors] == rejects
    assert [_contract_row(r) for r in records] == rows


def test_the_writers_take_the_paths_they_are_meant_to(bench: Bench) -> None:
    readers = [bench.fast._reader(i) for i in bench.ids]
    assert [r is not None for r in readers] == [True, True, True, False]


@FUZZ
@given(chunk=st.lists(messages(), min_size=1, max_size=8))
def test_fast_decoder_agrees_with_fastavro(bench: Bench, chunk: list[Message]) -> None:
    assert_agree(bench, [_wire(bench, m) for m in chunk])


@FUZZ
@given(message=messages(), copies=st.integers(2, 40), at=st.integers(0, 39))
def test_one_bad_message_among_good_ones(bench: Bench, message: Message, copies: int, at: int) -> None:
    """A column-wise chunk is read for all rows at once: one broken row must not disturb the others."""
    good = bench.encoders[message.writer].encode(message.record)
    values: list[bytes | None] = [good] * copies
    values[at % copies] = _wire(bench, message)
    assert_agree(bench, values)


def test_a_length_near_2_to_the_63_is_a_truncated_body(bench: Bench) -> None:
    """Found by the fuzzer: position + length overflowed int64 and the reader indexed the buffer from its end."""
    record = {name: "" for name in CONTRACT_SCHEMA.names}
    record.update(event_time=0, amount_minor=0, channel="POS", status="AUTHORIZED")
    record.update(device_id=None, ip_address=None, latitude=None, longitude=None)
    good = bench.encoders[0].encode(record)
    bad = bytearray(good)
    bad[5:6] = b"\xfe" + b"\xff" * 8 + b"\x01"  # transaction_id's length: 2**63 - 1
    assert_agree(bench, [good, good, bytes(bad)])
    _, _, rejects = bench.fast.decode([bytes(bad)])
    assert [reason for _, reason, _ in rejects] == ["truncated"]
