"""The columnar fast path (FastDecoder + transform_table) against the dict path it replaces (pure units).

Every test decodes the same values both ways — ``Decoder.decode_batch`` + ``transform`` and
``FastDecoder.decode`` + ``transform_table`` — and wants the same rows, values, positions and
rejects (reason and detail), on generated streams, schema evolution and corrupt bytes.
"""

from __future__ import annotations

import json
import math
import random
import re
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import pyarrow as pa
import pytest

from pipelines.config import load_settings
from pipelines.contracts.arrow import CONTRACT_SCHEMA
from pipelines.contracts.codec import Decoder, Encoder, parse_raw, wire_header
from pipelines.contracts.columnar import FastDecoder
from pipelines.contracts.reference import load_reference
from pipelines.contracts.registry import FileRegistry, HttpRegistry
from pipelines.errors import RegistryError
from pipelines.ingest.transform import Enricher, transform, transform_table
from pipelines.synth import FIELDS, MALFORMED_KINDS, iter_transactions, open_message_stream
from tests.conftest import REPO

SUBJECT = "transactions-value"


@pytest.fixture(scope="module")
def setup():  # type: ignore[no-untyped-def]
    settings = load_settings(REPO / "configs" / "nova.yaml", environ={})
    ref = load_reference(settings)
    return settings, ref, Enricher(ref)


@pytest.fixture
def registry(tmp_path: Path) -> FileRegistry:
    return FileRegistry(shutil.copytree(REPO / "configs" / "schemas", tmp_path / "schemas"), compatibility="NONE")


def _records(ref: Any, n: int, *, seed: int = 1, now_ms: int | None = None) -> list[dict[str, Any]]:
    now_ms = now_ms or int(time.time() * 1000)
    return list(
        iter_transactions(
            seed=seed, merchants=ref.merchants, fx_rates=ref.fx_rates, count=n, start_ms=now_ms - 60_000, spread_s=50
        )
    )


def _register(registry: FileRegistry, change: Any) -> tuple[int, str]:
    schema = json.loads(registry.get_schema(1).raw)
    change(schema)
    text = json.dumps(schema)
    return registry.register(SUBJECT, text), text


def _offset_of(field: str, record: dict[str, Any], schema_text: str) -> int:
    """Where ``field`` starts in the wire value of ``record``: the length of the fields before it."""
    schema = json.loads(schema_text)
    schema["fields"] = schema["fields"][: [f["name"] for f in schema["fields"]].index(field)]
    return len(Encoder(1, schema).encode(record))  # header included


def _details(rejects: list[tuple[int, str, str]]) -> list[tuple[int, str, str]]:
    # fastavro's messages can name a BytesIO by address, which differs between any two runs
    return [(i, reason, re.sub(r" at 0x[0-9a-f]+", " at 0x…", detail)) for i, reason, detail in rejects]


def _normal(value: Any) -> Any:
    return "NaN" if isinstance(value, float) and math.isnan(value) else value


def _rows(table: pa.Table) -> list[dict[str, Any]]:
    """Rows as plain values: event_time as epoch ms, NaN comparable."""
    if "event_time" in table.column_names:
        i = table.column_names.index("event_time")
        table = table.set_column(i, "event_time", table["event_time"].cast(pa.int64()))
    return [{k: _normal(v) for k, v in row.items()} for row in table.to_pylist()]


def assert_same(registry: Any, values: list[Any], setup: Any, *, now_ms: int | None = None) -> FastDecoder:
    """Both paths on ``values``; returns the FastDecoder (for checks of which path it took)."""
    settings, _, enricher = setup
    now_ms = now_ms or int(time.time() * 1000)
    records, errors = Decoder(registry).decode_batch(values)
    failed = {i for i, _ in errors}
    positions = [i for i in range(len(values)) if i not in failed]
    fast = FastDecoder(registry)
    table, got_positions, rejects = fast.decode(values)

    assert _details(rejects) == _details([(i, e.reason, e.detail) for i, e in errors])
    assert got_positions.dtype == np.int64 and got_positions.tolist() == positions
    assert table.schema == CONTRACT_SCHEMA
    assert _rows(table) == [{f: _normal(r.get(f)) for f in FIELDS} for r in records]

    rules = settings.pipeline.rules
    expected = transform(records, positions, rules=rules, enricher=enricher, now_ms=now_ms)
    got = transform_table(table, got_positions, rules=rules, enricher=enricher, now_ms=now_ms)
    assert got.rejected == expected.rejected
    assert got.rows_index.tolist() == expected.rows_index.tolist()
    if expected.table is None:
        assert got.table is None
    else:
        assert got.table is not None and got.table.schema == expected.table.schema
        assert _rows(got.table) == _rows(expected.table)
    return fast


# --- generated streams ---------------------------------------------------------------------------


def test_generated_stream_with_every_malformed_kind(setup, registry) -> None:  # type: ignore[no-untyped-def]
    settings, _, _ = setup
    stream = open_message_stream(
        settings=settings, seed=11, count=50_000, malformed={kind: 30 for kind in MALFORMED_KINDS}
    )
    reasons: set[str] = set()
    chunks = 0
    while not stream.done:
        _, values = stream.next_batch()
        if chunks == 0:
            values = [None, b"", b"\x00\x00", *values, b"\x00\x00\x00\x00\x01"]  # tombstone, empty, short
        assert_same(registry, values, setup)
        _, _, rejects = FastDecoder(registry).decode(values)
        reasons.update(r[1] for r in rejects)
        chunks += 1
    assert chunks >= 5
    assert reasons == {"empty", "bad_magic_byte", "unknown_schema_id", "truncated", "wrong_type"}


def test_clean_chunk_takes_no_slow_path(setup, registry, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    _, ref, _ = setup
    values = Encoder(1, registry.get_schema(1).raw).encode_batch(_records(ref, 2000))
    fast = FastDecoder(registry)
    calls: list[int] = []
    monkeypatch.setattr(fast.fallback, "decode", lambda v: calls.append(1))
    table, positions, rejects = fast.decode(values)
    assert table.num_rows == 2000 and rejects == [] and calls == []
    assert positions.tolist() == list(range(2000))


# --- schema evolution ----------------------------------------------------------------------------


def test_mixed_writer_schema_versions(setup, registry) -> None:  # type: ignore[no-untyped-def]
    _, ref, _ = setup

    def v2(schema: dict[str, Any]) -> None:  # adds optional fields (with defaults) at the end
        schema["fields"] += [
            {"name": "risk_hint", "type": ["null", "double"], "default": None},
            {"name": "note", "type": ["null", "string"], "default": None},
            {"name": "tier", "type": "int", "default": 3},
        ]

    def v3(schema: dict[str, Any]) -> None:  # drops a nullable contract field, reorders two
        fields = [f for f in schema["fields"] if f["name"] != "ip_address"]
        fields[2], fields[3] = fields[3], fields[2]
        schema["fields"] = fields

    v2_id, v2_text = _register(registry, v2)
    v3_id, v3_text = _register(registry, v3)
    v1 = Encoder(1, registry.get_schema(1).raw)
    encoders = [v1, Encoder(v2_id, v2_text), Encoder(v3_id, v3_text)]
    values = []
    for i, record in enumerate(_records(ref, 3000)):
        which = i % 3
        if which == 1:
            record = {**record, "risk_hint": None if i % 2 else 0.5, "note": f"n{i}" if i % 4 == 1 else None, "tier": i}
        values.append(encoders[which].encode(record))
    values[4] = values[4][:-3]  # a v2 body cut short
    values[5] = values[5] + b"\x00"  # a v3 body with a trailing byte
    fast = assert_same(registry, values, setup)
    assert all(fast._readers[i] is not None for i in (1, v2_id, v3_id))  # all three read columnwise
    table, _, _ = fast.decode(values)
    assert table["ip_address"].to_pylist()[2::3][:5] == [None] * 5  # v3 has no ip_address


def test_writer_schema_the_columnar_reader_does_not_take(setup, registry) -> None:  # type: ignore[no-untyped-def]
    _, ref, _ = setup

    def with_array(schema: dict[str, Any]) -> None:
        schema["fields"].append({"name": "tags", "type": {"type": "array", "items": "string"}, "default": []})

    arr_id, arr_text = _register(registry, with_array)
    records = _records(ref, 200)
    values = Encoder(arr_id, arr_text).encode_batch([{**r, "tags": ["a", "b"][: i % 3]} for i, r in enumerate(records)])
    values += Encoder(1, registry.get_schema(1).raw).encode_batch(records[:50])
    values[7] = values[7][:-1]
    fast = assert_same(registry, values, setup)
    assert fast._readers[arr_id] is None and fast._readers[1] is not None


def test_other_field_types_are_read_and_checked(setup, registry) -> None:  # type: ignore[no-untyped-def]
    _, ref, _ = setup

    def extra(schema: dict[str, Any]) -> None:
        meta = {
            "type": "record",
            "name": "Meta",
            "fields": [
                {"name": "ok", "type": "boolean"},
                {"name": "ratio", "type": "float"},
                {"name": "raw", "type": "bytes"},
                {"name": "hash", "type": {"type": "fixed", "name": "Hash4", "size": 4}},
                {"name": "level", "type": ["null", "long", "string"]},
            ],
        }
        schema["fields"].insert(3, {"name": "meta", "type": meta})
        schema["fields"].append({"name": "again", "type": ["null", "Meta"], "default": None})
        schema["fields"].append({"name": "channel2", "type": "com.novapay.payments.Channel", "default": "POS"})

    x_id, x_text = _register(registry, extra)
    rnd = random.Random(5)
    records = []
    for i, r in enumerate(_records(ref, 1500)):
        meta = {
            "ok": bool(i % 2),
            "ratio": rnd.random(),
            "raw": bytes(rnd.randrange(256) for _ in range(i % 7)),
            "hash": bytes(rnd.randrange(256) for _ in range(4)),
            "level": [None, i, f"L{i}"][i % 3],
        }
        records.append({**r, "meta": meta, "again": meta if i % 5 == 0 else None, "channel2": "ATM"})
    values = Encoder(x_id, x_text).encode_batch(records)
    ok_at = _offset_of("meta", records[10], x_text)
    flipped = bytearray(values[10])
    flipped[ok_at] = 2  # fastavro reads a boolean byte 2 as True: the slow path keeps the record
    values[10] = bytes(flipped)
    fast = assert_same(registry, values, setup)
    assert fast._readers[x_id] is not None


# --- lenient and corrupt bytes ---------------------------------------------------------------------


def test_encodings_fastavro_accepts_although_odd(setup, registry) -> None:  # type: ignore[no-untyped-def]
    _, ref, _ = setup
    text = registry.get_schema(1).raw
    records = _records(ref, 10)
    records[3] = {**records[3], "device_id": "dev-x"}
    values = Encoder(1, text).encode_batch(records)
    out = [bytearray(v) for v in values]
    out[1][_offset_of("channel", records[1], text)] = 0x01  # enum index -1: fastavro takes the last symbol
    out[3][_offset_of("device_id", records[3], text)] = 0x01  # union branch -1: the string branch
    at = _offset_of("status", records[5], text)
    out[5][at : at + 1] = bytes([0x80 | out[5][at], 0x00])  # the index as a two-byte (non-minimal) varint
    fast = assert_same(registry, [bytes(v) for v in out], setup)
    table, _, _ = fast.decode([bytes(v) for v in out])
    assert table["channel"][1].as_py() == "CONTACTLESS" and table["device_id"][3].as_py() == "dev-x"


def test_big_numbers_and_long_varints(setup, registry) -> None:  # type: ignore[no-untyped-def]
    _, ref, _ = setup
    big = [0, 1, -1, 63, -64, 64, 2**31, -(2**31), 2**55 - 1, 2**55, -(2**55), 2**56, 2**62, 2**63 - 1, -(2**63)]
    records = [{**r, "amount_minor": big[i % len(big)]} for i, r in enumerate(_records(ref, 45))]
    records += [{**r, "event_time": big[i % len(big)]} for i, r in enumerate(_records(ref, 15, seed=2))]
    values = Encoder(1, registry.get_schema(1).raw).encode_batch(records)
    text = registry.get_schema(1).raw
    at = _offset_of("amount_minor", records[0], text)
    head, tail = values[0][:at], values[0][at:]
    rest = tail[next(i for i, b in enumerate(tail) if b < 0x80) + 1 :]  # after the amount's varint
    odd = [
        values[0][:5] + b"\xff" * 10 + b"\x7f" + values[0][6:],  # an 11-byte varint
        head + b"\xfe" + b"\xff" * 8 + b"\x7f" + rest,  # 10 bytes, more than 64 bits
        head + b"\xfe" + b"\xff" * 8 + b"\x01" + rest,  # 10 bytes, exactly 64 bits
        head + b"\x80\x80\x00" + rest,  # zero, non-minimally
        values[1][:5] + b"\x01" + values[1][6:],  # a string of length -1
        values[2][:5] + b"\x03" + values[2][6:],  # a string of length -2
    ]
    assert_same(registry, [*values, *odd], setup)


def test_unicode_and_invalid_utf8(setup, registry) -> None:  # type: ignore[no-untyped-def]
    _, ref, _ = setup
    records = _records(ref, 40)
    for i, text in enumerate(["Zürich", "東京", "🙂 ok", "\u0000nul", "x" * 200, ""]):
        records[i] = {**records[i], "card_id": text, "device_id": text}
    values = Encoder(1, registry.get_schema(1).raw).encode_batch(records)
    invalid = [b"\xff", b"\xed\xa0\x80", b"\xc0\xaf", b"\x80", b"\xe6\x9d", b"\xf4\x90\x80\x80"]
    for k, junk in enumerate(invalid):
        i = 10 + k
        card = records[i]["card_id"].encode()
        values[i] = values[i].replace(card, card[: -len(junk)] + junk)
    values[20] = values[20].replace(records[20]["transaction_id"].encode()[:8], "ünï€".encode()[:8])
    assert_same(registry, values, setup)


def test_random_corruption(setup, registry) -> None:  # type: ignore[no-untyped-def]
    _, ref, _ = setup
    rnd = random.Random(2024)
    values = []
    for value in Encoder(1, registry.get_schema(1).raw).encode_batch(_records(ref, 3000)):
        roll = rnd.random()
        if roll < 0.04:
            value = value[: rnd.randrange(len(value))]
        elif roll < 0.08:
            value = value + bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 4)))
        elif roll < 0.16:
            pos = rnd.randrange(5, len(value))
            value = value[:pos] + bytes([rnd.randrange(256)]) + value[pos + 1 :]
        elif roll < 0.18:
            value = value[:5] + bytes(rnd.randrange(256) for _ in range(rnd.randrange(0, 150)))
        values.append(value)
    for start in range(0, len(values), 1000):
        assert_same(registry, values[start : start + 1000], setup)


# --- transform_table -------------------------------------------------------------------------------


def test_transform_table_rules_and_details(setup, registry) -> None:  # type: ignore[no-untyped-def]
    settings, ref, _ = setup
    now = int(time.time() * 1000)
    records = _records(ref, 30, now_ms=now)
    changes = [
        {"amount_minor": 0},
        {"amount_minor": settings.pipeline.rules.max_amount_minor + 1},
        {"currency": "XXX"},
        {"event_time": now + 3_600_000},
        {"event_time": now - 4000 * 86_400_000},
        {"amount_minor": -5, "currency": "XXX"},  # two rules broken: the first one is reported
        {"merchant_id": "NOPE", "device_id": None, "channel": "ECOM"},
    ]
    for i, change in enumerate(changes):
        records[3 * i] = {**records[3 * i], **change}
    values = Encoder(1, registry.get_schema(1).raw).encode_batch(records)
    assert_same(registry, values, setup, now_ms=now)
    assert_same(registry, values[:1], setup, now_ms=now)  # everything rejected


def test_nothing_decodable(setup, registry) -> None:  # type: ignore[no-untyped-def]
    settings, _, enricher = setup
    assert_same(registry, [], setup)
    assert_same(registry, [None, b"", b"\x01abcdef", wire_header(404) + b"\x00"], setup)
    table, positions, rejects = FastDecoder(registry).decode([])
    assert table.num_rows == 0 and positions.tolist() == [] and rejects == []
    chunk = transform_table(table, positions, rules=settings.pipeline.rules, enricher=enricher, now_ms=0)
    assert chunk.table is None and chunk.rows_index.tolist() == []


def test_registry_outage_raises_instead_of_rejecting():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fast = FastDecoder(HttpRegistry(f"http://127.0.0.1:{port}", max_retries=0, timeout_s=2))
    with pytest.raises(RegistryError):
        fast.decode([wire_header(1) + b"\x00"])


def test_decode_matches_fastavro_directly(registry) -> None:  # type: ignore[no-untyped-def]
    """Independent of the dict path: the table equals fastavro's own reading of the bodies."""
    import io

    record = {f: None for f in FIELDS}
    record.update(
        transaction_id="0d6a4b4e-9a34-4d27-8f67-1a2b3c4d5e6f", event_time=1_735_689_600_123, card_id="c",
        account_id="a", merchant_id="m", merchant_category="5411", amount_minor=-7, currency="EUR",
        country="DE", channel="MOTO", status="REVERSED", latitude=-0.0, longitude=1e308,
    )  # fmt: skip
    value = Encoder(1, registry.get_schema(1).raw).encode(record)
    table, _, _ = FastDecoder(registry).decode([value])
    expected = fastavro.schemaless_reader(io.BytesIO(value[5:]), parse_raw(registry.get_schema(1).raw))
    assert _rows(table) == [expected]
