"""`nova generate`: the synthetic transaction generator, its malformed mix, and producing into real Kafka."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import fastavro
import numpy as np
import pytest

from pipelines.config import Settings, load_settings
from pipelines.contracts.codec import DecodeError, Decoder, Encoder, enum_symbols
from pipelines.contracts.columnar_writer import ColumnarEncoder
from pipelines.contracts.reference import (
    ReferenceData,
    build_merchant_rows,
    load_fx_rates,
    load_merchants,
    load_reference,
    write_reference_files,
)
from pipelines.contracts.registry import open_registry
from pipelines.errors import ConfigError, UsageError
from pipelines.synth import (
    CHANNELS,
    FIELDS,
    MALFORMED_KINDS,
    STATUSES,
    MessageStream,
    TransactionGenerator,
    iter_transactions,
    open_message_stream,
)
from pipelines.synth.model import _by_symbol
from pipelines.synth.produce import _event_window
from tests.conftest import REPO, run_nova, unique

SCHEMA_FILE = REPO / "configs" / "schemas" / "transaction-v1.avsc"


@pytest.fixture(scope="module")
def reference() -> ReferenceData:
    return load_reference(load_settings(REPO / "configs" / "nova.yaml", environ={}))


@pytest.fixture(scope="module")
def schema_json() -> dict:
    return json.loads(SCHEMA_FILE.read_text())


def _project_settings(project: Path) -> tuple[Settings, int]:
    """Settings of a temp project whose file registry has the transaction schema registered."""
    settings = load_settings(project / "configs" / "nova.yaml", environ={})
    registry = open_registry(settings)
    schema_id = registry.register(settings.pipeline.subject, SCHEMA_FILE.read_text())
    return settings, schema_id


# ── reference data ─────────────────────────────────────────────────────────────────────────


def test_committed_reference_files_are_reproducible(tmp_path: Path) -> None:
    write_reference_files(tmp_path)
    for name in ("merchants.csv", "fx_rates.csv"):
        assert (tmp_path / name).read_bytes() == (REPO / "configs" / "reference" / name).read_bytes(), (
            f"configs/reference/{name} differs from what `python -m pipelines.contracts.reference` writes"
        )


def test_reference_loads_compactly(reference: ReferenceData) -> None:
    assert len(reference.merchants) == len(build_merchant_rows()) == 2000
    m = reference.merchants["M000001"]
    assert len(m.category) == 4 and m.segment == "enterprise" and len(m.country) == 2
    categories = {m.category for m in reference.merchants.values()}
    assert {"5411", "5812", "4111", "5541", "5732", "7011", "4511", "5912", "6011"} <= categories
    assert reference.fx_rates["EUR"].rate == 1.0
    assert reference.fx_rates["JPY"].exponent == 0 and reference.fx_rates["USD"].exponent == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("merchant_id,name\nM1,x\n", "line 1: header"),
        (
            "merchant_id,name,category,segment,country,currency\nM1,Shop,5411,small,DE,EUR\nM2,Shop,54x1,small,DE,EUR\n",
            "line 3: category '54x1'",
        ),
        ("merchant_id,name,category,segment,country,currency\nM1,Shop,5411,huge,DE,EUR\n", "line 2: segment 'huge'"),
        ("merchant_id,name,category,segment,country,currency\nM1,Shop,5411,small,DE\n", "line 2: 5 fields"),
    ],
)
def test_bad_merchants_file_names_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "merchants.csv"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_merchants(path)
    assert str(path) in info.value.message and message in info.value.message


def test_bad_fx_file_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "fx.csv"
    path.write_text("currency,rate_to_reporting,minor_units\nEUR,1.0,2\nUSD,-1,2\n")
    with pytest.raises(ConfigError, match=r"fx.csv, line 3: rate_to_reporting of USD must be a positive"):
        load_fx_rates(path)


# ── the generator ──────────────────────────────────────────────────────────────────────────


def _gen(reference: ReferenceData, seed: int = 1, **kw) -> TransactionGenerator:  # type: ignore[no-untyped-def]
    return TransactionGenerator(seed=seed, merchants=reference.merchants, fx_rates=reference.fx_rates, **kw)


def test_same_seed_same_events_whatever_the_chunking(reference: ReferenceData) -> None:
    window = {"start_ms": 1_700_000_000_000, "spread_s": 86_400.0}
    a = list(
        iter_transactions(
            seed=5, merchants=reference.merchants, fx_rates=reference.fx_rates, count=20_000, chunk_size=7_001, **window
        )
    )
    b = list(
        iter_transactions(
            seed=5,
            merchants=reference.merchants,
            fx_rates=reference.fx_rates,
            count=20_000,
            chunk_size=10_000,
            **window,
        )
    )
    assert a == b
    c = list(iter_transactions(seed=6, merchants=reference.merchants, fx_rates=reference.fx_rates, count=100, **window))
    assert [r["transaction_id"] for r in c] != [r["transaction_id"] for r in a[:100]]
    assert len({r["transaction_id"] for r in a}) == len(a)


def test_now_mode_event_times_are_now(reference: ReferenceData) -> None:
    before = int(time.time() * 1000)
    chunk = next(_gen(reference).chunks(5_000))
    after = int(time.time() * 1000)
    times = chunk.column("event_time")
    assert times.max() <= after and times.min() >= before - 5_000


def test_spread_mode_stays_in_the_window(reference: ReferenceData) -> None:
    start = 1_700_000_000_000
    chunk = next(_gen(reference, start_ms=start, spread_s=7 * 86_400.0).chunks(50_000))
    times = chunk.column("event_time")
    assert times.min() >= start and times.max() < start + 7 * 86_400_000
    hours = (times // 3_600_000) % 24
    assert np.mean((hours >= 9) & (hours < 20)) > 0.6, "daytime should be busier than night"


def test_merchants_are_zipf_skewed(reference: ReferenceData) -> None:
    chunk = next(_gen(reference).chunks(100_000))
    per_merchant = Counter(chunk.column("merchant_id").tolist())
    top = sum(n for _, n in per_merchant.most_common(len(reference.merchants) // 100))
    assert top / 100_000 > 0.35, "the top 1% of merchants should carry a big share"
    assert per_merchant.most_common(1)[0][0] == "M000001"


def test_field_values_are_realistic(reference: ReferenceData, schema_json: dict) -> None:
    records = next(_gen(reference).chunks(50_000)).records()
    parsed = fastavro.parse_schema(schema_json)
    for r in records[:2_000]:
        fastavro.validation.validate(r, parsed, raise_errors=True)
    amounts = np.array([r["amount_minor"] for r in records])
    assert (amounts > 0).all()
    channels = Counter(r["channel"] for r in records)
    assert set(channels) == set(CHANNELS) and channels["CONTACTLESS"] > channels["MOTO"]
    statuses = Counter(r["status"] for r in records)
    assert set(statuses) == set(STATUSES)
    assert (statuses["AUTHORIZED"] + statuses["CAPTURED"]) / len(records) > 0.85
    for r in records:
        assert (r["channel"] == "ATM") == (r["merchant_category"] == "6011")
        assert (r["device_id"] is not None) == (r["ip_address"] is not None) == (r["channel"] == "ECOM")
        if r["latitude"] is not None:
            assert r["channel"] in ("POS", "CONTACTLESS")
        assert r["country"] == reference.merchants[r["merchant_id"]].country
    foreign = sum(r["currency"] != reference.merchants[r["merchant_id"]].currency for r in records)
    assert 0.02 < foreign / len(records) < 0.2, "mostly home currency, some cross-border"
    assert len({r["card_id"] for r in records}) > 20_000


def test_amounts_depend_on_the_category(reference: ReferenceData) -> None:
    chunk = next(_gen(reference).chunks(200_000))
    c = {name: chunk.column(name) for name in ("currency", "merchant_category", "amount_minor")}
    eur = c["currency"] == "EUR"

    def median(mcc: str) -> float:
        return float(np.median(c["amount_minor"][eur & (c["merchant_category"] == mcc)]))

    assert median("4111") < median("5411") < median("7011") < median("4511")
    atm = c["amount_minor"][eur & (c["merchant_category"] == "6011")]
    assert (atm % 1000 == 0).all(), "ATM withdrawals are round sums"


def test_currencies_are_limited_to_those_accepted(reference: ReferenceData) -> None:
    with pytest.raises(ConfigError, match="not among the accepted currencies"):
        _gen(reference, currencies=["EUR"])


def test_the_model_speaks_the_contracts_vocabulary(schema_json: dict) -> None:
    types = {f["name"]: f["type"] for f in schema_json["fields"]}
    enums = {name: t["symbols"] for name, t in types.items() if isinstance(t, dict) and t["type"] == "enum"}
    assert tuple(enums["channel"]) == CHANNELS and tuple(enums["status"]) == STATUSES
    assert tuple(f["name"] for f in schema_json["fields"]) == FIELDS
    with pytest.raises(ConfigError, match=r"channel weights of MCC 5411 name \['PIGEON'\]"):
        _by_symbol({"POS": 0.5, "PIGEON": 0.5}, CHANNELS, "channel weights of MCC 5411")
    with pytest.raises(ValueError, match="no field 'nope'"):
        enum_symbols(schema_json, "nope")
    with pytest.raises(ValueError, match=r"'card_id' .* is not an enum"):
        enum_symbols(schema_json, "card_id")


def test_columnar_encoder_matches_the_codec_byte_for_byte(reference: ReferenceData, schema_json: dict) -> None:
    chunk = next(_gen(reference).chunks(20_000))
    assert ColumnarEncoder(42, schema_json).encode_chunk(chunk) == Encoder(42, schema_json).encode_batch(
        chunk.records()
    )
    edge = chunk[:5]
    edge.columns["amount_minor"] = np.array([0, -1, 2**63 - 1, -(2**63), 64], dtype=np.int64)
    edge.columns["merchant_id"] = np.array(["ünïcødé €", "", "a\x00", "x" * 300, "b"], dtype=object)
    edge.columns["device_id"] = np.array([None, "dév", None, "", "d"], dtype=object)
    edge.columns["latitude"] = np.array([None, 1.5, -0.0, None, 1e300], dtype=object)
    assert ColumnarEncoder(7, schema_json).encode_chunk(edge) == Encoder(7, schema_json).encode_batch(edge.records())


# ── the message stream and its malformed mix ───────────────────────────────────────────────


def test_malformed_kinds_decode_to_exactly_their_reasons(project: Path, reference: ReferenceData) -> None:
    settings, schema_id = _project_settings(project)
    registry = open_registry(settings)
    mix = {"bad_magic_byte": 7, "unknown_schema_id": 5, "truncated": 9, "wrong_type": 8, "rule_violation": 6}
    stream = MessageStream(
        settings=settings,
        reference=reference,
        schema_id=schema_id,
        schema=registry.latest(settings.pipeline.subject).schema,
        seed=3,
        count=3_000,
        malformed=mix,
        batch_size=1_000,
    )
    keys: list[str] = []
    values: list[bytes] = []
    while not stream.done:
        k, v = stream.next_batch()
        keys += k
        values += v
    assert len(values) == 3_000 + sum(mix.values()) == stream.produced
    assert stream.valid == 3_000 and stream.malformed == mix
    decoder = Decoder(registry)
    reasons: Counter[str] = Counter()
    rules = settings.pipeline.rules
    broken_rules: Counter[str] = Counter()
    positions = []
    for i, value in enumerate(values):
        try:
            record = decoder.decode(value)
        except DecodeError as exc:
            reasons[exc.reason] += 1
            positions.append(i)
            continue
        assert record["card_id"] == keys[i]
        if record["amount_minor"] < rules.min_amount_minor:
            broken_rules["amount"] += 1
        elif record["currency"] not in rules.currencies:
            broken_rules["currency"] += 1
        elif record["event_time"] > time.time() * 1000 + rules.max_future_s * 1000:
            broken_rules["future"] += 1
        else:
            continue
        positions.append(i)
    assert dict(reasons) == {k: n for k, n in mix.items() if k != "rule_violation"}
    assert broken_rules == Counter({"amount": 2, "currency": 2, "future": 2})
    # interleaved, not bunched at either end
    assert 0 < min(positions) < len(values) / 4 and max(positions) > len(values) * 3 / 4


def test_wrong_type_and_truncated_also_fail_in_batch_decoding(project: Path, reference: ReferenceData) -> None:
    settings, schema_id = _project_settings(project)
    registry = open_registry(settings)
    stream = MessageStream(
        settings=settings,
        reference=reference,
        schema_id=schema_id,
        schema=registry.latest(settings.pipeline.subject).schema,
        count=2_000,
        malformed={"truncated": 20, "wrong_type": 20},
    )
    _, values = stream.next_batch()
    records, errors = Decoder(registry).decode_batch(values)
    assert len(records) == 2_000
    assert Counter(e.reason for _, e in errors) == {"truncated": 20, "wrong_type": 20}


def test_malformed_only_and_positions_are_seeded(project: Path, reference: ReferenceData) -> None:
    settings, schema_id = _project_settings(project)
    schema = open_registry(settings).latest(settings.pipeline.subject).schema

    def run(seed: int) -> list[bytes]:
        stream = MessageStream(
            settings=settings,
            reference=reference,
            schema_id=schema_id,
            schema=schema,
            seed=seed,
            count=0,
            malformed={"bad_magic_byte": 3},
            start_ms=1_700_000_000_000,
            spread_s=3600.0,
        )
        values = stream.next_batch()[1]
        assert stream.done
        return values

    assert len(run(1)) == 3 and run(1) == run(1)


def test_open_message_stream_is_endless_without_count_or_duration(project: Path) -> None:
    settings, schema_id = _project_settings(project)
    stream = open_message_stream(settings=settings, seed=9, batch_size=5_000)
    assert stream.schema_id == schema_id
    for _ in range(3):
        keys, values = stream.next_batch()
        assert len(keys) == len(values) == 5_000
    assert stream.valid == 15_000 and not stream.done
    records, errors = Decoder(open_registry(settings)).decode_batch(values)
    assert not errors and [r["card_id"] for r in records] == keys


def test_unknown_malformed_kind_is_a_usage_error(project: Path, reference: ReferenceData) -> None:
    settings, schema_id = _project_settings(project)
    with pytest.raises(UsageError, match="unknown malformed kind 'garbage'"):
        MessageStream(
            settings=settings, reference=reference, schema_id=schema_id, schema={}, count=1, malformed={"garbage": 1}
        )


def test_event_window_refuses_what_ingest_would_reject() -> None:
    settings = load_settings(REPO / "configs" / "nova.yaml", environ={})
    now = int(time.time() * 1000)
    with pytest.raises(UsageError, match="into the future"):
        _event_window(settings=settings, start_ms=now - 86_400_000, spread_days=2)
    with pytest.raises(UsageError, match="max_past_days"):
        _event_window(settings=settings, start_ms=now - 4000 * 86_400_000, spread_days=1)
    with pytest.raises(UsageError, match="needs spread days"):
        _event_window(settings=settings, start_ms=now - 86_400_000, spread_days=None)
    start, spread = _event_window(settings=settings, start_ms=None, spread_days=3)
    assert spread == 3 * 86_400 and abs(start + 3 * 86_400_000 - now) < 5_000  # type: ignore[operator]


# ── the CLI ────────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "exactly one of --count or --duration"),
        (("--count", "5", "--duration", "3"), "exactly one of --count or --duration"),
        (("--count", "5", "--malformed", "nonsense=3"), "expected KIND=N"),
        (("--count", "5", "--malformed", "truncated=x"), "not a whole number"),
        (("--count", "5", "--start", "2024-01-01"), "--start needs --spread-days"),
        (("--count", "5", "--start", "yesterday", "--spread-days", "1"), "not an ISO date"),
    ],
)
def test_bad_option_combinations_are_usage_errors(args: tuple[str, ...], message: str) -> None:
    result = run_nova("generate", *args, expect=2)
    assert message in result.stderr


# ── into real Kafka ────────────────────────────────────────────────────────────────────────


def _delete_topic(settings: Settings, topic: str) -> None:
    from pipelines import kafka

    admin = kafka.admin_client(settings)  # held until the future resolves
    for future in admin.delete_topics([topic], operation_timeout=30).values():
        future.result()


@pytest.mark.integration
def test_generate_into_kafka_exactly(project: Path) -> None:
    from confluent_kafka import Consumer, TopicPartition

    from pipelines import kafka

    settings, _ = _project_settings(project)
    topic = unique("nova_test_generate")
    kafka.create_topic(settings, topic, partitions=3, replication_factor=1, config={})
    mix = {"bad_magic_byte": 11, "unknown_schema_id": 7, "truncated": 13, "wrong_type": 5, "rule_violation": 9}
    try:
        args = ["generate", "--count", "20000", "--topic", topic, "--seed", "4", "--json"]
        for kind, n in mix.items():
            args += ["--malformed", f"{kind}={n}"]
        result = run_nova(*args, env={"NOVA_CONFIG": str(project / "configs" / "nova.yaml")})
        report = json.loads(result.stdout)
        assert report["valid"] == 20_000 and report["malformed"] == mix
        assert report["produced"] == 20_000 + sum(mix.values())

        consumer = Consumer({**settings.kafka.client_config(), "group.id": unique("g"), "enable.auto.commit": False})
        try:
            meta = consumer.list_topics(topic, timeout=10).topics[topic]
            parts = [TopicPartition(topic, p, 0) for p in meta.partitions]
            ends = {p.partition: consumer.get_watermark_offsets(p, timeout=10)[1] for p in parts}
            assert sum(ends.values()) == report["produced"]
            consumer.assign(parts)
            messages = []
            deadline = time.time() + 60
            while len(messages) < report["produced"] and time.time() < deadline:
                for msg in consumer.consume(5000, timeout=1.0):
                    assert msg.error() is None, msg.error()
                    messages.append(msg)
        finally:
            consumer.close()
        assert len(messages) == report["produced"]

        decoder = Decoder(open_registry(settings))
        rules = settings.pipeline.rules
        reasons: Counter[str] = Counter()
        valid = 0
        card_ids = set()
        for msg in messages:
            key = msg.key().decode()
            assert key.startswith("tok_")
            try:
                record = decoder.decode(msg.value())
            except DecodeError as exc:
                reasons[exc.reason] += 1
                continue
            assert record["card_id"] == key
            card_ids.add(key)
            if (
                record["amount_minor"] < rules.min_amount_minor
                or record["currency"] not in rules.currencies
                or record["event_time"] > time.time() * 1000 + rules.max_future_s * 1000
            ):
                reasons["rule_violation"] += 1
            else:
                valid += 1
        assert valid == 20_000
        assert dict(reasons) == mix
        assert len(card_ids) > 5_000
    finally:
        _delete_topic(settings, topic)


@pytest.mark.integration
def test_generate_paces_to_the_rate_and_reports_delivery(project: Path) -> None:
    from pipelines import kafka
    from pipelines.synth import generate

    settings, _ = _project_settings(project)
    topic = unique("nova_test_generate_rate")
    kafka.create_topic(settings, topic, partitions=1, replication_factor=1, config={})
    try:
        seen: list[int] = []
        report = generate(
            settings=settings, duration_s=2.0, rate=2_000, topic=topic, on_progress=lambda n, _s: seen.append(n)
        )
        assert report.malformed == dict.fromkeys(MALFORMED_KINDS, 0)
        assert report.produced == pytest.approx(4_000, rel=0.05), report  # 2 s at 2,000/s
        assert report.events_per_s == pytest.approx(2_000, rel=0.15)  # elapsed includes the final flush
        assert seen and seen[-1] == report.produced
        spread = generate(settings=settings, count=1_000, topic=topic, spread_days=2.0)
        assert spread.first_event_ms is not None and spread.last_event_ms is not None
        assert spread.last_event_ms - spread.first_event_ms > 86_400_000
    finally:
        _delete_topic(settings, topic)


@pytest.mark.integration
def test_delivery_failures_raise(project: Path) -> None:
    from pipelines import kafka
    from pipelines.errors import KafkaError
    from pipelines.synth import generate

    settings, _ = _project_settings(project)
    topic = unique("nova_test_generate_small")
    # the broker refuses record batches over 600 bytes: every delivery fails
    kafka.create_topic(settings, topic, partitions=1, replication_factor=1, config={"max.message.bytes": "600"})
    try:
        with pytest.raises(KafkaError, match=r"were not delivered: .*too large"):
            generate(settings=settings, count=5_000, topic=topic)
    finally:
        _delete_topic(settings, topic)


@pytest.mark.integration
def test_generate_to_a_missing_topic_fails_clearly(project: Path) -> None:
    _project_settings(project)
    result = run_nova(
        "generate",
        "--count",
        "10",
        "--topic",
        unique("nova_no_such_topic"),
        expect=1,
        env={"NOVA_CONFIG": str(project / "configs" / "nova.yaml")},
    )
    assert "does not exist" in result.stderr
