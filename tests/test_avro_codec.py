"""Avro codec in the Confluent wire format, against a file registry in a temp copy of configs/schemas."""

from __future__ import annotations

import io
import json
import random
import shutil
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fastavro
import pytest

from pipelines.contracts.codec import (
    DECODE_REASONS,
    DecodeError,
    Decoder,
    EncodeError,
    Encoder,
    encode,
    encode_batch,
    parse_raw,
    wire_header,
)
from pipelines.contracts.registry import FileRegistry, HttpRegistry
from pipelines.errors import NovaError, RegistryError

PROJECT = Path(__file__).resolve().parent.parent
SUBJECT = "transactions-value"


@pytest.fixture
def registry(tmp_path: Path) -> FileRegistry:
    return FileRegistry(shutil.copytree(PROJECT / "configs" / "schemas", tmp_path / "schemas"))


@pytest.fixture
def v1(registry: FileRegistry) -> Encoder:
    latest = registry.latest(SUBJECT)
    return Encoder(latest.id, latest.schema.raw)


def v2_schema(registry: FileRegistry) -> str:
    schema = json.loads(registry.get_schema(1).raw)
    schema["fields"].append({"name": "risk_score", "type": ["null", "double"], "default": None})
    schema["fields"].append({"name": "tier", "type": "int", "default": 3})
    return json.dumps(schema)


def transaction(i: int = 0, **overrides: Any) -> dict[str, Any]:
    rnd = random.Random(i)
    record = {
        "transaction_id": f"{rnd.getrandbits(32):08x}-1111-4222-8333-{rnd.getrandbits(48):012x}",
        "event_time": 1_735_689_600_000 + i,
        "card_id": f"card_{i:06d}",
        "account_id": f"acct_{i % 997:06d}",
        "merchant_id": f"m_{i % 101:05d}",
        "merchant_category": "5411",
        "amount_minor": 1 + rnd.randrange(100_000),
        "currency": "EUR",
        "country": "DE",
        "channel": ["POS", "ECOM", "ATM", "MOTO", "CONTACTLESS"][i % 5],
        "status": "AUTHORIZED",
        "device_id": None if i % 3 else f"dev_{i}",
        "ip_address": None,
        "latitude": None if i % 2 else 52.52,
        "longitude": None if i % 2 else 13.405,
    }
    record.update(overrides)
    return record


# --- encoding -----------------------------------------------------------------------------------


def test_round_trip_with_raw_logical_types(registry: FileRegistry, v1: Encoder):
    record = transaction(1)
    value = v1.encode(record)
    assert value[:5] == b"\x00\x00\x00\x00\x01" == wire_header(1)
    decoded = Decoder(registry).decode(value)
    assert decoded == record
    assert type(decoded["event_time"]) is int  # ms since the epoch, not a datetime
    assert type(decoded["transaction_id"]) is str  # not a uuid.UUID


def test_encode_batch_equals_one_by_one(v1: Encoder):
    records = [transaction(i) for i in range(50)]
    assert v1.encode_batch(records) == [v1.encode(r) for r in records]
    assert encode_batch([], 1, v1.parsed) == []


def test_logical_encoder_accepts_datetimes(registry: FileRegistry):
    schema = registry.get_schema(1)
    when = datetime(2025, 1, 1, tzinfo=UTC)
    value = encode(transaction(2, event_time=when), 1, schema.parsed)
    assert Decoder(registry).decode(value)["event_time"] == 1_735_689_600_000
    assert Encoder(1, schema.raw, logical_types=True).encode(transaction(2, event_time=when)) == value


def test_encode_errors_name_the_problem(v1: Encoder):
    with pytest.raises(EncodeError, match="amount_minor"):
        v1.encode(transaction(3, amount_minor="lots"))
    with pytest.raises(EncodeError, match="schema id 1"):
        v1.encode_batch([transaction(4), transaction(5, channel="PIGEON")])
    with pytest.raises(ValueError, match="4-byte"):
        wire_header(2**32)


# --- decode errors ------------------------------------------------------------------------------


def reason_of(decoder: Decoder, value: bytes | None) -> str:
    with pytest.raises(DecodeError) as info:
        decoder.decode(value)
    assert info.value.reason in DECODE_REASONS
    return info.value.reason


def test_every_decode_error_reason(registry: FileRegistry, v1: Encoder):
    decoder = Decoder(registry)
    good = v1.encode(transaction(6))
    assert reason_of(decoder, b"") == "empty"
    assert reason_of(decoder, None) == "empty"
    assert reason_of(decoder, b"\x01" + good[1:]) == "bad_magic_byte"
    assert reason_of(decoder, b'{"json": true}') == "bad_magic_byte"
    assert reason_of(decoder, b"\x00\x00\x00") == "truncated"  # header cut
    assert reason_of(decoder, good[:5]) == "truncated"  # no body
    assert reason_of(decoder, good[:-1]) == "truncated"  # body cut
    assert reason_of(decoder, wire_header(999) + good[5:]) == "unknown_schema_id"
    assert reason_of(decoder, good + b"\x00") == "wrong_type"  # trailing bytes
    schema = json.loads(registry.get_schema(1).raw)
    schema["fields"] = schema["fields"][: [f["name"] for f in schema["fields"]].index("channel")]
    channel_at = len(encode(transaction(6), 1, parse_raw(schema)))  # the byte after the fields before it
    bad_enum = bytearray(good)
    bad_enum[channel_at] = 0x7E  # enum index 63: no such symbol
    assert reason_of(decoder, bytes(bad_enum)) == "wrong_type"
    bad_utf8 = good.replace(b"card_000006", b"card_\xff\xfe0006")
    assert reason_of(decoder, bad_utf8) == "wrong_type"


def test_decode_error_is_data_not_a_nova_failure(registry: FileRegistry):
    assert not issubclass(DecodeError, NovaError)
    with pytest.raises(DecodeError) as info:
        Decoder(registry).decode(wire_header(77) + b"\x02")
    assert (info.value.reason, info.value.schema_id) == ("unknown_schema_id", 77)
    assert "77" in info.value.detail


def test_registry_outage_raises_instead_of_dead_lettering():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    decoder = Decoder(HttpRegistry(f"http://127.0.0.1:{port}", max_retries=0, timeout_s=2))
    with pytest.raises(RegistryError, match="cannot reach schema registry"):
        decoder.decode(wire_header(1) + b"\x00")
    with pytest.raises(RegistryError):
        decoder.decode_batch([wire_header(1) + b"\x00"])


# --- schema evolution ---------------------------------------------------------------------------


def test_older_writer_decodes_into_the_reader_shape(registry: FileRegistry, v1: Encoder):
    v2_text = v2_schema(registry)
    known = [registry.latest(subject).id for subject in registry.subjects()]
    v2_id = registry.register(SUBJECT, v2_text)
    assert v2_id == max(known) + 1  # a new schema gets the next id of the whole registry
    old = v1.encode(transaction(7))
    new = Encoder(v2_id, v2_text).encode(transaction(8, risk_score=0.25, tier=1))

    as_v2 = Decoder(registry, reader_schema=v2_text)
    assert as_v2.decode(old) == {**transaction(7), "risk_score": None, "tier": 3}
    assert as_v2.decode(new) == {**transaction(8), "risk_score": 0.25, "tier": 1}
    records, errors = as_v2.decode_batch([old, new, old])
    assert errors == []
    assert [r["tier"] for r in records] == [3, 1, 3]

    as_v1 = Decoder(registry, reader_schema=registry.get_schema(1).raw)
    assert as_v1.decode(new) == transaction(8)  # newer writer: the extra fields are dropped
    for same_reader in (registry.get_schema(v2_id), registry.get_schema(v2_id).parsed):  # other spellings
        assert Decoder(registry, reader_schema=same_reader).decode(old)["tier"] == 3
    assert Decoder(registry).decode(new)["risk_score"] == 0.25  # no reader: the writer's own shape


def test_projection_matches_fastavro_resolution(registry: FileRegistry, v1: Encoder):
    """The fast path (decode as writer, then add defaults / drop fields) must equal fastavro's resolution."""
    v2_text = v2_schema(registry)
    v2_id = registry.register(SUBJECT, v2_text)
    reader = json.loads(v2_text)
    reader["fields"] = [f for f in reader["fields"] if f["name"] != "ip_address"]
    values = v1.encode_batch([transaction(i, ip_address=f"10.0.0.{i}") for i in range(20)])
    values += Encoder(v2_id, v2_text).encode_batch([transaction(i, tier=i) for i in range(20, 40)])
    records, errors = Decoder(registry, reader_schema=reader).decode_batch(values)
    assert errors == []
    expected = []
    for value in values:
        writer = parse_raw(registry.get_schema(int.from_bytes(value[1:5], "big")).raw)
        expected.append(fastavro.schemaless_reader(io.BytesIO(value[5:]), writer, parse_raw(reader)))
    assert records == expected


def test_promotion_goes_through_fastavro_resolution(tmp_path: Path):
    registry = FileRegistry(tmp_path)
    v1 = json.dumps({"type": "record", "name": "R", "fields": [{"name": "n", "type": "int"}]})
    v2 = json.dumps({"type": "record", "name": "R", "fields": [{"name": "n", "type": "double"}]})
    assert registry.register("r-value", v1) == 1
    value = Encoder(1, v1).encode({"n": 5})
    records, errors = Decoder(registry, reader_schema=v2).decode_batch([value, value])
    assert errors == [] and records == [{"n": 5.0}, {"n": 5.0}] and type(records[0]["n"]) is float


def test_unresolvable_writer_is_wrong_type(tmp_path: Path):
    registry = FileRegistry(tmp_path)
    other = json.dumps({"type": "record", "name": "Other", "fields": [{"name": "x", "type": "string"}]})
    registry.register("other-value", other)
    reader = json.dumps({"type": "record", "name": "R", "fields": [{"name": "n", "type": "long"}]})
    value = Encoder(1, other).encode({"x": "hello"})
    records, errors = Decoder(registry, reader_schema=reader).decode_batch([value] * 10)
    assert records == [] and [(i, e.reason) for i, e in errors] == [(i, "wrong_type") for i in range(10)]


# --- decode_batch -------------------------------------------------------------------------------


def test_decode_batch_returns_valid_records_and_exact_errors(registry: FileRegistry, v1: Encoder):
    records = [transaction(i) for i in range(12)]
    values: list[bytes | None] = list(v1.encode_batch(records))
    values[2] = values[2][:-4]  # cut short
    values[4] = values[4] + b"\x00"  # trailing byte: would shift its neighbours in a block
    values[5] = b"\x07" + values[5][1:]  # not Confluent framing
    values[6] = None  # tombstone
    values[8] = wire_header(404) + values[8][5:]  # unknown id
    values[9] = values[9][:3]  # header cut
    decoded, errors = Decoder(registry).decode_batch(values)
    assert [(i, e.reason) for i, e in errors] == [
        (2, "truncated"),
        (4, "wrong_type"),
        (5, "bad_magic_byte"),
        (6, "empty"),
        (8, "unknown_schema_id"),
        (9, "truncated"),
    ]
    bad = {i for i, _ in errors}
    assert decoded == [r for i, r in enumerate(records) if i not in bad]


def test_trailing_bytes_on_the_last_message_of_a_block(registry: FileRegistry, v1: Encoder):
    # fastavro ignores bytes left over after a container block's last record: a batch must not.
    values = [v1.encode(transaction(0)) + b"\x00"]
    records, errors = Decoder(registry).decode_batch(values)
    assert records == [] and [(i, e.reason) for i, e in errors] == [(0, "wrong_type")]
    values = v1.encode_batch([transaction(i) for i in range(3)])
    values[2] += b"\x04"
    records, errors = Decoder(registry).decode_batch(values)
    assert len(records) == 2 and [(i, e.reason) for i, e in errors] == [(2, "wrong_type")]


def test_a_bad_body_never_shifts_its_neighbours_into_wrong_records(tmp_path: Path):
    # With all-long fields any byte string decodes, so a batch read as one stream of bodies (a
    # container block without a per-message position check) would return {a: 3, b: 4} second.
    registry = FileRegistry(tmp_path)
    schema = json.dumps(
        {"type": "record", "name": "P", "fields": [{"name": "a", "type": "long"}, {"name": "b", "type": "long"}]}
    )
    registry.register("p-value", schema)
    enc = Encoder(1, schema)
    values = [enc.encode({"a": 1, "b": 2}) + b"\x06", enc.encode({"a": 4, "b": 5})]
    records, errors = Decoder(registry).decode_batch(values)
    assert records == [{"a": 4, "b": 5}]
    assert [(i, e.reason) for i, e in errors] == [(0, "wrong_type")]


def test_a_run_of_bad_messages_then_good_ones(registry: FileRegistry, v1: Encoder):
    good = v1.encode_batch([transaction(i) for i in range(20)])
    values = [wire_header(1) + b"\xff\xff\xff" for _ in range(6)] + good
    records, errors = Decoder(registry).decode_batch(values)
    assert [i for i, _ in errors] == list(range(6))
    assert records == [transaction(i) for i in range(20)]


def test_decode_batch_agrees_with_decode_on_random_corruption(registry: FileRegistry, v1: Encoder):
    rnd = random.Random(2024)
    values: list[bytes] = []
    for value in v1.encode_batch([transaction(i) for i in range(600)]):
        roll = rnd.random()
        if roll < 0.03:
            value = value[: rnd.randrange(len(value))]
        elif roll < 0.06:
            value = value + bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 4)))
        elif roll < 0.09:
            pos = rnd.randrange(5, len(value))
            value = value[:pos] + bytes([rnd.randrange(256)]) + value[pos + 1 :]
        values.append(value)
    decoder = Decoder(registry)
    expected_records, expected_errors = [], []
    for i, value in enumerate(values):
        try:
            expected_records.append(decoder.decode(value))
        except DecodeError as exc:
            expected_errors.append((i, exc.reason, exc.detail))
    records, errors = Decoder(registry).decode_batch(values)
    assert len(expected_errors) > 20
    assert [(i, e.reason, e.detail) for i, e in errors] == expected_errors
    assert records == expected_records


def test_decode_batch_mixed_schema_ids_keeps_input_order(registry: FileRegistry, v1: Encoder):
    v2_text = v2_schema(registry)
    v2 = Encoder(registry.register(SUBJECT, v2_text), v2_text)
    values = [(v1 if i % 3 else v2).encode(transaction(i, **({} if i % 3 else {"tier": i}))) for i in range(30)]
    records, errors = Decoder(registry, reader_schema=v2_text).decode_batch(values)
    assert errors == []
    assert [r["card_id"] for r in records] == [f"card_{i:06d}" for i in range(30)]
    assert [r["tier"] for r in records] == [i if i % 3 == 0 else 3 for i in range(30)]


def test_decode_batch_of_nothing(registry: FileRegistry):
    assert Decoder(registry).decode_batch([]) == ([], [])
