"""The legacy warehouse (`nova legacy seed`, the nightly ETL) and `nova replay`.

Unit tests check the mapping (units, zones, enums, rejects) and the file order. Integration tests
use the stack's real PostgreSQL and Kafka: each gets its own PostgreSQL schema, target topic and
checkpoint topic, all removed afterwards. The seeded days (25–27 October 2024) include the end of
summer time in Europe (27 Oct, 01:00 UTC), so local wall-clock times repeat within the data.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import random
import signal
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, nova_executable, run_nova, unique

SEED_UNTIL = "2024-10-28"  # seeded days: 25, 26 and 27 October 2024 (UTC)
SEED_ROWS = 5000
SINCE, UNTIL = "2024-10-26", "2024-10-28"  # replayed: the last two of them
EXPONENTS = {"EUR": 2, "USD": 2, "GBP": 2, "CHF": 2, "SEK": 2, "PLN": 2, "JPY": 0}
CHANNELS = {"P": "POS", "E": "ECOM", "A": "ATM", "M": "MOTO", "C": "CONTACTLESS"}
STATUSES = {"AUTH": "AUTHORIZED", "CAPT": "CAPTURED", "DECL": "DECLINED", "RFND": "REFUNDED", "REVS": "REVERSED"}


def _mapping() -> Any:
    from pipelines.dualrun.mapping import load_mapping

    return load_mapping(path=REPO / "configs" / "legacy" / "mapping.yaml")


def _row(**over: Any) -> dict[str, Any]:
    row = {
        "txn_ref": "0b5f3d1e-3f7c-4c1e-9a55-1d2f3e4a5b6c", "txn_ts_local": datetime(2024, 5, 1, 12, 30, 15, 123456),
        "txn_tz": "Europe/Berlin", "card_token": "tok_1", "acct_no": "ACC1", "merchant_code": "M000001",
        "mcc": "5411", "amount": Decimal("12.34"), "ccy": "EUR", "merchant_country": "DE", "channel_cd": "P",
        "status_cd": "AUTH", "device_ref": None, "client_ip": None, "geo_lat": Decimal("52.520001"),
        "geo_lon": Decimal("13.405002"),
    }  # fmt: skip
    row.update(over)
    return row


def _utc_ms(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp() * 1000)  # type: ignore[misc]


def test_mapping_covers_the_contract_and_agrees_with_the_fx_file() -> None:
    from pipelines.contracts.reference import load_fx_rates

    mapping = _mapping()
    mapping.check_contract(json.loads((REPO / "configs" / "schemas" / "transaction-v1.avsc").read_text()))
    fx = load_fx_rates(REPO / "configs" / "reference" / "fx_rates.csv")
    for ccy, rate in fx.items():
        assert mapping.amount_minor.exponents.get(ccy) == rate.exponent, ccy


def test_map_row_converts_units_zones_and_codes() -> None:
    map_row = _mapping().compile()
    mapped = map_row(_row(client_ip="10.1.2.3/24", device_ref="dev_1", mcc="5411", channel_cd="C", status_cd="RFND"))
    rec = mapped.record
    assert rec["event_time"] == _utc_ms(2024, 5, 1, 10, 30, 15, 123000)  # CEST = UTC+2, µs truncated to ms
    assert rec["amount_minor"] == 1234 and rec["currency"] == "EUR"
    assert (rec["channel"], rec["status"]) == ("CONTACTLESS", "REFUNDED")
    assert rec["ip_address"] == "10.1.2.3" and rec["device_id"] == "dev_1"
    assert rec["latitude"] == pytest.approx(52.520001) and rec["longitude"] == pytest.approx(13.405002)
    assert rec["transaction_id"] == "0b5f3d1e-3f7c-4c1e-9a55-1d2f3e4a5b6c" and rec["card_id"] == "tok_1"
    assert map_row(_row(ccy="JPY", amount=Decimal("1500.00"))).record["amount_minor"] == 1500
    assert map_row(_row(ccy="JPY", amount="98765")).record["amount_minor"] == 98765  # CSV text
    assert map_row(_row(amount="0.10", ccy="EUR ")).record["amount_minor"] == 10  # char(3) padding


def test_map_row_follows_postgres_in_dst_gaps_and_overlaps() -> None:
    map_row = _mapping().compile()

    def utc(local: datetime, zone: str) -> int:
        return map_row(_row(txn_ts_local=local, txn_tz=zone)).record["event_time"]

    # Values PostgreSQL 15 gives for `local AT TIME ZONE zone` (checked against the server in an integration test).
    assert utc(datetime(2024, 10, 27, 2, 30), "Europe/Berlin") == _utc_ms(2024, 10, 27, 1, 30)  # ambiguous: later
    assert utc(datetime(2024, 3, 31, 2, 30), "Europe/Berlin") == _utc_ms(2024, 3, 31, 1, 30)  # gap: offset before
    assert utc(datetime(2024, 11, 3, 1, 30), "America/New_York") == _utc_ms(2024, 11, 3, 6, 30)
    assert utc(datetime(2024, 3, 10, 2, 30), "America/New_York") == _utc_ms(2024, 3, 10, 7, 30)
    assert utc(datetime(2024, 10, 27, 1, 30), "Europe/Dublin") == _utc_ms(2024, 10, 27, 1, 30)


@pytest.mark.parametrize(
    ("over", "reason"),
    [
        ({"ccy": "XXX"}, "unknown_currency"),
        ({"ccy": "JPY", "amount": Decimal("1.50")}, "amount_precision"),
        ({"amount": "1.005"}, "amount_precision"),
        ({"amount": "12,34"}, "bad_amount"),
        ({"channel_cd": "Z"}, "unknown_channel"),
        ({"status_cd": "WAIT"}, "unknown_status"),
        ({"txn_tz": "Mars/Olympus_Mons"}, "bad_zone"),
        ({"txn_ts_local": "yesterday"}, "bad_timestamp"),
        ({"card_token": None}, "null_value"),
        ({"txn_ref": "not-a-uuid"}, "bad_uuid"),
        ({"client_ip": "300.1.1.1"}, "bad_ip"),
    ],
)
def test_map_row_rejects_with_a_reason(over: dict[str, Any], reason: str) -> None:
    from pipelines.dualrun.mapping import Reject

    result = _mapping().compile()(_row(**over))
    assert isinstance(result, Reject)
    assert result.reason == reason
    assert result.detail


def test_a_bad_mapping_names_file_and_key(tmp_path: Path) -> None:
    from pipelines.dualrun.mapping import load_mapping
    from pipelines.errors import ConfigError

    text = (REPO / "configs" / "legacy" / "mapping.yaml").read_text()
    bad = tmp_path / "mapping.yaml"
    bad.write_text(text.replace("JPY: 0}", "JPY: 7}"))
    with pytest.raises(ConfigError) as exc:
        load_mapping(path=bad)
    assert str(bad) in str(exc.value) and "amount_minor.exponents" in str(exc.value)
    bad.write_text(text.replace("P: POS", "P: POINT_OF_SALE"))
    with pytest.raises(ConfigError) as exc:
        load_mapping(path=bad).check_contract(json.loads((REPO / "configs/schemas/transaction-v1.avsc").read_text()))
    assert "enums.channel.values.P" in str(exc.value)
    assert ConfigError.exit_code == 2


def test_country_zones_come_from_the_mapping_and_bad_ones_name_the_key(tmp_path: Path) -> None:
    from pipelines.contracts.reference import load_merchants
    from pipelines.dualrun.mapping import load_mapping
    from pipelines.dualrun.seed import merchant_zone
    from pipelines.errors import ConfigError

    mapping = _mapping()
    merchants = load_merchants(REPO / "configs" / "reference" / "merchants.csv")
    assert {m.country for m in merchants.values()} <= set(mapping.country_zones)
    assert merchant_zone("M000002", "DE", mapping=mapping) == "Europe/Berlin"
    us = {merchant_zone(f"M{i:06d}", "US", mapping=mapping) for i in range(200)}
    assert us == set(mapping.country_zones["US"])  # spread over the country's zones, stably
    assert merchant_zone("M000007", "US", mapping=mapping) == merchant_zone("M000007", "US", mapping=mapping)
    with pytest.raises(ConfigError) as exc:
        merchant_zone("M000009", "BR", mapping=mapping)
    assert "'country_zones'" in str(exc.value) and "BR" in str(exc.value)

    text = (REPO / "configs" / "legacy" / "mapping.yaml").read_text()
    bad = tmp_path / "mapping.yaml"
    bad.write_text(text.replace("JP: [Asia/Tokyo]", "JP: [Asia/Tokio]"))
    with pytest.raises(ConfigError) as exc:
        load_mapping(path=bad)
    assert str(bad) in str(exc.value) and "country_zones.JP" in str(exc.value) and "Asia/Tokio" in str(exc.value)


def test_checkpoints_written_before_the_split_still_read_and_keep_their_shape() -> None:
    from pipelines.dualrun.mapping import UNPLACEABLE_US
    from pipelines.dualrun.replay import Checkpoint, Position

    # as the hand-written serialiser before pydantic wrote it (key order included)
    old = (
        b'{"job":"0f1e2d3c4b5a69788796","source":"postgresql://nova@127.0.0.1:15432/legacy#legacy.card_txn",'
        b'"since":"2024-10-26T00:00:00+00:00","until":"2024-10-28T00:00:00+00:00","topic":"transactions",'
        b'"position":{"utc_us":1729987200000000,"utc":"2024-10-27T00:00:00+00:00",'
        b'"txn_ref":"0b5f3d1e-3f7c-4c1e-9a55-1d2f3e4a5b6c"},"read":2500,"produced":2498,'
        b'"rejected":{"unknown_currency":2},"reject_file":"/tmp/r.jsonl","reject_offset":812,"complete":false,'
        b'"runs":1,"updated_at":"2024-10-28T10:00:00+00:00"}'
    )
    cp = Checkpoint.model_validate_json(old)
    assert cp.after == (1729987200000000, "0b5f3d1e-3f7c-4c1e-9a55-1d2f3e4a5b6c")
    assert (cp.read, cp.produced, cp.rejected, cp.reject_offset, cp.runs) == (2500, 2498, {"unknown_currency": 2},
                                                                             812, 1)  # fmt: skip
    again = json.loads(cp.to_json())
    before = json.loads(old)
    assert list(again) == list(before) and list(again["position"]) == list(before["position"])
    assert {k: v for k, v in again.items() if k != "updated_at"} == {
        k: v for k, v in before.items() if k != "updated_at"}  # fmt: skip
    assert Checkpoint.model_validate_json(b'{"job": "j"}').after is None  # a minimal one: defaults
    assert Position.of((UNPLACEABLE_US, "x")).utc is None
    assert Position.of((1729987200000000, "x")).utc == "2024-10-27T00:00:00+00:00"


def test_parse_time_and_source(tmp_path: Path) -> None:
    from pipelines.config import load_settings
    from pipelines.dualrun.replay import parse_source
    from pipelines.errors import UsageError
    from pipelines.instants import parse_instant as parse_time

    assert parse_time("2024-10-26", option="--since") == datetime(2024, 10, 26, tzinfo=UTC)
    assert parse_time("2024-10-26T12:00:00+02:00", option="--since") == datetime(2024, 10, 26, 10, tzinfo=UTC)
    with pytest.raises(UsageError):
        parse_time("26/10/2024", option="--since")
    settings = load_settings(REPO / "configs" / "nova.yaml", environ={})
    mapping = _mapping()
    src = parse_source("postgresql://u:secret@h:5432/db#s1.t1", settings=settings, mapping=mapping)
    assert (src.kind, src.schema, src.table) == ("postgres", "s1", "t1") and "secret" not in src.identity
    assert parse_source("legacy", settings=settings, mapping=mapping).table == "card_txn"
    (tmp_path / "b.csv").write_text("x\n")
    (tmp_path / "a.parquet").write_bytes(b"")
    assert [p.name for p in parse_source(str(tmp_path / "*"), settings=settings, mapping=mapping).files] == [
        "a.parquet", "b.csv"]  # fmt: skip
    with pytest.raises(UsageError):
        parse_source(str(tmp_path / "nothing-*.csv"), settings=settings, mapping=mapping)


def test_file_rows_come_out_in_total_order_whatever_the_file_order(tmp_path: Path) -> None:
    """Unsorted CSV files, sorted runs of 7 rows, merged: (UTC time, txn_ref) order; rows out of range dropped."""
    import uuid
    from contextlib import ExitStack

    from pipelines.dualrun.mapping import ZoneCache
    from pipelines.dualrun.replay import FileRows, parse_source

    rng = random.Random(5)
    zones = ["Europe/Berlin", "America/New_York", "Asia/Tokyo", "Mars/Nowhere"]
    rows = []
    for _ in range(60):
        local = datetime(2024, 10, 26) + timedelta(minutes=rng.randrange(0, 3 * 24 * 60))
        rows.append(_row(txn_ref=str(uuid.UUID(int=rng.getrandbits(128))), txn_ts_local=local,
                         txn_tz=rng.choice(zones)))  # fmt: skip
    rows.append(_row(txn_ref=str(uuid.uuid4()), txn_ts_local="not a time"))
    for i, part in enumerate((rows[:30], rows[30:])):
        with (tmp_path / f"part-{i}.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(part[0]))
            writer.writeheader()
            for r in part:
                writer.writerow({k: "" if v is None else v for k, v in r.items()})
    mapping = _mapping()
    src = parse_source(str(tmp_path / "part-*.csv"), settings=None, mapping=mapping)  # type: ignore[arg-type]
    since, until = datetime(2024, 10, 26, 12, tzinfo=UTC), datetime(2024, 10, 28, tzinfo=UTC)
    with ExitStack() as stack:
        files = FileRows(src, mapping, chunk_rows=7)
        kept = files.prepare(since, until, None, stack=stack)
        out = list(files.rows())
    keys = [k for k, _ in out]
    assert keys == sorted(keys) and len(out) == kept
    assert keys[0][0] < 0  # the row without a usable time comes first (to be rejected, not skipped)
    lo, hi = int(since.timestamp() * 1e6), int(until.timestamp() * 1e6)
    assert all(lo <= k[0] < hi for k in keys[1:])
    zones = ZoneCache()
    expected = set()
    for r in rows[:-1]:
        utc_us, ref = mapping.order_key(r["txn_ref"], str(r["txn_ts_local"]), r["txn_tz"], zones)
        if lo <= utc_us < hi:
            expected.add(ref)
    assert {k[1] for k in keys[1:]} == expected


@dataclass
class Legacy:
    schema: str
    topic: str
    checkpoints: str
    env: dict[str, str]
    settings: Any
    tmp: Path

    def nova(self, *args: str, expect: int | None = 0, timeout: float = 600) -> Any:
        return run_nova(*args, expect=expect, env=self.env, timeout=timeout)

    def replay(self, *args: str, topic: str | None = None, expect: int | None = 0) -> Any:
        result = self.nova("replay", "--topic", topic or self.topic, "--checkpoint-topic", self.checkpoints,
                           "--json", *args, expect=expect)  # fmt: skip
        return json.loads(result.stdout) if expect == 0 else result

    def sql(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.settings.legacy.dsn, autocommit=True) as conn:
            cur = conn.execute(query.replace("{schema}", f'"{self.schema}"'), params)
            return cur.fetchall() if cur.description else []

    def new_topic(self, partitions: int = 3) -> str:
        from pipelines import kafka

        name = unique("replay") + ".tx"
        kafka.create_topic(self.settings, name, partitions=partitions, replication_factor=1, config={})
        self.topics.append(name)
        return name

    topics: list[str]


@pytest.fixture
def legacy(tmp_path: Path) -> Iterator[Legacy]:
    from pipelines import kafka
    from pipelines.config import load_settings

    schema = unique("legacy_t")
    env = {"NOVA_LEGACY__SCHEMA": schema}
    settings = load_settings(REPO / "configs" / "nova.yaml", environ=env)
    checkpoints = unique("replay_cp")
    lg = Legacy(schema, "", checkpoints, env, settings, tmp_path, topics=[checkpoints])
    lg.topic = lg.new_topic()
    try:
        yield lg
    finally:
        with contextlib.suppress(Exception):
            lg.sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        # an admin client of our own, alive until the deletion is confirmed
        admin = kafka.admin_client(settings)
        for future in admin.delete_topics(lg.topics, operation_timeout=30).values():
            with contextlib.suppress(Exception):
                future.result()


@pytest.fixture
def seeded(legacy: Legacy) -> Legacy:
    legacy.nova("legacy", "seed", "--days", "3", "--rows", str(SEED_ROWS), "--seed", "7", "--until", SEED_UNTIL)
    return legacy


def _registered(settings: Any) -> tuple[int, dict[str, Any]]:
    from pipelines.contracts.registry import open_registry

    schema_id, _version, schema = open_registry(settings).latest(settings.pipeline.subject)
    return schema_id, json.loads(schema.raw)


def consume_all(settings: Any, topic: str, *, isolation: str = "read_committed") -> list[tuple[int, bytes, bytes]]:
    """(partition, key, value) of every message visible to a consumer with `isolation`, by partition and offset."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    conf = settings.kafka.client_config()
    conf.update({"group.id": unique("t"), "enable.auto.commit": False, "isolation.level": isolation,
                 "enable.partition.eof": True, "fetch.wait.max.ms": 10})  # fmt: skip
    consumer = Consumer(conf)
    try:
        parts = list(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        done: set[int] = set()
        out = []
        deadline = time.monotonic() + 90
        while len(done) < len(parts):
            assert time.monotonic() < deadline, f"reading {topic} did not reach the end"
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == msg.error()._PARTITION_EOF:
                    done.add(msg.partition())
                    continue
                raise AssertionError(msg.error().str())
            done.discard(msg.partition())
            out.append((msg.partition(), msg.key(), msg.value()))
        return sorted(out, key=lambda m: m[0])  # stable: offset order within each partition
    finally:
        consumer.close()


def decode_all(settings: Any, messages: list[tuple[int, bytes, bytes]]) -> list[dict[str, Any]]:
    """Decode the Confluent framing and Avro body independently of pipelines/avro_codec."""
    from fastavro import parse_schema, schemaless_reader

    schema_id, schema = _registered(settings)
    parsed = parse_schema(schema)
    records = []
    for _p, key, value in messages:
        magic, sid = struct.unpack(">bI", value[:5])
        assert (magic, sid) == (0, schema_id)
        rec = schemaless_reader(io.BytesIO(value[5:]), parsed, None)
        assert key == rec["card_id"].encode()
        if isinstance(rec["event_time"], datetime):
            rec["event_time"] = int(rec["event_time"].timestamp() * 1000)
        rec["transaction_id"] = str(rec["transaction_id"])
        records.append(rec)
    return records


def expected_records(lg: Legacy, since: str, until: str) -> dict[str, dict[str, Any]]:
    """What replay must produce for the range, computed by PostgreSQL (UTC) and Decimal (units)."""
    rows = lg.sql(
        "SELECT txn_ref, (extract(epoch FROM utc) * 1000000)::bigint, card_token, acct_no, merchant_code, mcc,"
        " amount, ccy, merchant_country, channel_cd, status_cd, device_ref, host(client_ip), geo_lat, geo_lon"
        " FROM (SELECT *, CASE WHEN txn_tz IN (SELECT name FROM pg_timezone_names)"
        "                 THEN txn_ts_local AT TIME ZONE txn_tz END AS utc FROM {schema}.card_txn) t"
        " WHERE utc >= %s::timestamptz AND utc < %s::timestamptz",
        (f"{since}T00:00:00Z", f"{until}T00:00:00Z"),
    )
    out = {}
    for ref, utc_us, card, acct, merchant, mcc, amount, ccy, country, ch, st, dev, ip, lat, lon in rows:
        out[ref] = {
            "transaction_id": ref, "event_time": utc_us // 1000, "card_id": card, "account_id": acct,
            "merchant_id": merchant, "merchant_category": mcc,
            "amount_minor": int(amount.scaleb(EXPONENTS.get(ccy, 0))),
            "currency": ccy, "country": country, "channel": CHANNELS.get(ch), "status": STATUSES.get(st),
            "device_id": dev, "ip_address": ip, "latitude": None if lat is None else float(lat),
            "longitude": None if lon is None else float(lon),
        }  # fmt: skip
    return out


@pytest.mark.integration
def test_seed_loads_realistic_rows_and_the_etl_matches_a_group_by(legacy: Legacy) -> None:
    r = legacy.nova("legacy", "seed", "--days", "3", "--rows", str(SEED_ROWS), "--seed", "7", "--until", SEED_UNTIL,
                    "--json")  # fmt: skip
    result = json.loads(r.stdout)
    assert result["rows"] == SEED_ROWS and result["rows_per_s"] > 0 and result["summary_rows"] > 0
    [(count, lo, hi)] = legacy.sql(
        "SELECT count(*), min(txn_ts_local AT TIME ZONE txn_tz), max(txn_ts_local AT TIME ZONE txn_tz)"
        " FROM {schema}.card_txn"
    )
    assert count == SEED_ROWS
    assert lo >= datetime(2024, 10, 25, tzinfo=UTC) and hi < datetime(2024, 10, 28, tzinfo=UTC)
    # amounts respect the currency: whole yen, cents elsewhere; zones follow the merchant's country
    assert legacy.sql("SELECT count(*) FROM {schema}.card_txn WHERE ccy = 'JPY' AND amount <> trunc(amount)") == [(0,)]
    assert legacy.sql("SELECT count(*) FROM {schema}.card_txn WHERE ccy = 'JPY'")[0][0] > 0
    zones = dict(legacy.sql("SELECT merchant_country, min(txn_tz) FROM {schema}.card_txn GROUP BY 1"))
    assert zones["DE"] == "Europe/Berlin" and zones["JP"] == "Asia/Tokyo"
    assert {c for (c,) in legacy.sql("SELECT DISTINCT channel_cd FROM {schema}.card_txn")} <= set(CHANNELS)

    summary = legacy.sql(
        "SELECT business_date, merchant_code, ccy, txn_count, amount_total FROM {schema}.daily_merchant_summary"
        " ORDER BY 1, 2, 3"
    )
    direct = legacy.sql(
        "SELECT ((txn_ts_local AT TIME ZONE txn_tz) AT TIME ZONE 'UTC')::date, merchant_code, ccy, count(*),"
        " sum(amount) FROM {schema}.card_txn GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
    )
    assert summary == direct and len(summary) == result["summary_rows"]

    # deterministic for a seed; a second load of the same seed needs --truncate
    checksum = (
        "SELECT md5(string_agg(txn_ref || txn_ts_local || amount || ccy, ',' ORDER BY txn_ref)) FROM {schema}.card_txn"
    )
    before = legacy.sql(checksum)
    again = legacy.nova("legacy", "seed", "--days", "3", "--rows", str(SEED_ROWS), "--seed", "7",
                        "--until", SEED_UNTIL, expect=1)  # fmt: skip
    assert "--truncate" in again.stderr
    legacy.nova("legacy", "seed", "--days", "3", "--rows", str(SEED_ROWS), "--seed", "7", "--until", SEED_UNTIL,
                "--truncate")  # fmt: skip
    assert legacy.sql(checksum) == before
    assert legacy.sql("SELECT count(*) FROM {schema}.card_txn") == [(SEED_ROWS,)]


@pytest.mark.integration
def test_replay_from_postgres_produces_exactly_the_mapped_rows_in_range(seeded: Legacy) -> None:
    report = seeded.replay("--source", "legacy", "--since", SINCE, "--until", UNTIL)
    expected = expected_records(seeded, SINCE, UNTIL)
    assert 0 < len(expected) < SEED_ROWS  # the range is a strict subset of the seeded days
    assert report["read"] == report["produced"] == len(expected) and report["rejected_total"] == 0
    messages = consume_all(seeded.settings, seeded.topic)
    records = decode_all(seeded.settings, messages)
    assert len(records) == len(expected)
    got = {r["transaction_id"]: r for r in records}
    assert got.keys() == expected.keys()
    for ref, want in expected.items():
        have = dict(got[ref])
        assert _same(have, want), (ref, have, want)
    currencies = {r["currency"] for r in records}
    assert {"EUR", "JPY"} <= currencies
    # European wall clocks repeat 02:00–03:00 on 27 October: rows in that UTC window are there, right
    european = [r for r in records if r["country"] in ("DE", "FR", "NL") and
                _utc_ms(2024, 10, 27, 0) <= r["event_time"] < _utc_ms(2024, 10, 27, 2)]  # fmt: skip
    assert european, "the seed should put some European rows into the repeated hour"
    # per partition (= per card), messages are in event-time order
    by_partition: dict[int, list[int]] = {}
    for rec, (p, _k, _v) in zip(records, messages, strict=True):
        by_partition.setdefault(p, []).append(rec["event_time"])
    assert all(times == sorted(times) for times in by_partition.values())


def _same(have: dict[str, Any], want: dict[str, Any]) -> bool:
    for k, v in want.items():
        if isinstance(v, float):
            if have[k] is None or abs(have[k] - v) > 1e-9:
                return False
        elif have[k] != v:
            return False
    return set(have) == set(want)


def _export_csv(lg: Legacy, directory: Path, parts: int) -> None:
    """COPY … CSV HEADER, split into `parts` files with the rows shuffled (replay must sort them)."""
    import psycopg

    directory.mkdir()
    buf = io.BytesIO()
    export = f'COPY "{lg.schema}".card_txn TO STDOUT WITH (FORMAT csv, HEADER)'
    with psycopg.connect(lg.settings.legacy.dsn) as conn, conn.cursor() as cur, cur.copy(export) as copy:
        for data in copy:
            buf.write(data)
    header, *lines = buf.getvalue().decode().splitlines(keepends=True)
    random.Random(3).shuffle(lines)
    for i in range(parts):
        (directory / f"card_txn-{i}.csv").write_text(header + "".join(lines[i::parts]))


def _export_parquet(lg: Legacy, directory: Path, parts: int) -> None:
    import psycopg
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory.mkdir()
    with psycopg.connect(lg.settings.legacy.dsn) as conn:
        cur = conn.execute(f'SELECT *, host(client_ip) AS ip FROM "{lg.schema}".card_txn ORDER BY txn_ref')
        names = [d.name for d in cur.description]
        rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    for r in rows:
        r["client_ip"] = r.pop("ip")
    schema = pa.schema([
        ("txn_ref", pa.string()), ("txn_ts_local", pa.timestamp("us")), ("txn_tz", pa.string()),
        ("card_token", pa.string()), ("acct_no", pa.string()), ("merchant_code", pa.string()), ("mcc", pa.string()),
        ("amount", pa.decimal128(14, 2)), ("ccy", pa.string()), ("merchant_country", pa.string()),
        ("channel_cd", pa.string()), ("status_cd", pa.string()), ("device_ref", pa.string()),
        ("client_ip", pa.string()), ("geo_lat", pa.decimal128(9, 6)), ("geo_lon", pa.decimal128(9, 6)),
        ("batch_id", pa.int32()), ("loaded_at", pa.timestamp("us", tz="UTC")),
    ])  # fmt: skip
    for i in range(parts):
        pq.write_table(pa.Table.from_pylist(rows[i::parts], schema=schema), directory / f"part-{i}.parquet")


@pytest.mark.integration
def test_replay_from_csv_and_parquet_exports_gives_the_same_messages(seeded: Legacy) -> None:
    seeded.replay("--source", "legacy", "--since", SINCE, "--until", UNTIL)
    from_pg = consume_all(seeded.settings, seeded.topic)

    _export_csv(seeded, seeded.tmp / "csv", parts=3)
    csv_topic = seeded.new_topic()
    report = seeded.replay("--source", str(seeded.tmp / "csv" / "*.csv"), "--since", SINCE, "--until", UNTIL,
                           topic=csv_topic)  # fmt: skip
    assert report["produced"] == len(from_pg) and report["rejected_total"] == 0
    assert consume_all(seeded.settings, csv_topic) == from_pg

    _export_parquet(seeded, seeded.tmp / "parquet", parts=2)
    pq_topic = seeded.new_topic()
    report = seeded.replay("--source", str(seeded.tmp / "parquet"), "--since", SINCE, "--until", UNTIL,
                           topic=pq_topic)  # fmt: skip
    assert report["produced"] == len(from_pg) and report["rejected_total"] == 0
    assert consume_all(seeded.settings, pq_topic) == from_pg


BAD_ROWS = [
    # (txn_ref suffix, local time, zone, amount, ccy, channel, status) → reason
    ("01", "2024-10-26 10:00:00", "Europe/Berlin", "12.00", "XXX", "P", "AUTH", "unknown_currency"),
    ("02", "2024-10-26 11:00:00", "Asia/Tokyo", "1.50", "JPY", "P", "AUTH", "amount_precision"),
    ("03", "2024-10-26 12:00:00", "Europe/Paris", "9.99", "EUR", "Z", "AUTH", "unknown_channel"),
    ("04", "2024-10-26 13:00:00", "Mars/Olympus_Mons", "5.00", "EUR", "P", "AUTH", "bad_zone"),
    ("05", "2024-10-26 14:00:00", "Europe/Paris", "5.00", "EUR", "E", "HOLD", "unknown_status"),
    ("06", "2024-10-26 15:00:00", "Asia/Tokyo", "3.00", "XXX", "E", "AUTH", "unknown_currency"),
]
EDGE_ROWS = [
    # wall-clock times PostgreSQL must resolve, and replay must agree with it
    ("11", "2024-10-27 02:30:00", "Europe/Berlin", "40.10", "EUR"),  # ambiguous (clocks went back)
    ("12", "2024-10-27 01:59:59.999999", "Europe/London", "7.00", "GBP"),  # ambiguous, µs truncated
    ("13", "2024-10-26 23:30:00", "America/Los_Angeles", "1234567.89", "USD"),  # UTC date is the next day
    ("14", "2024-10-27 09:15:00", "Asia/Tokyo", "123456789", "JPY"),  # whole yen
]


@pytest.mark.integration
def test_unmappable_rows_are_rejected_by_reason_and_the_rest_replayed(seeded: Legacy) -> None:
    def insert(suffix: str, local: str, zone: str, amount: str, ccy: str, channel: str = "P",
               status: str = "CAPT") -> None:  # fmt: skip
        seeded.sql(
            "INSERT INTO {schema}.card_txn (txn_ref, txn_ts_local, txn_tz, card_token, acct_no, merchant_code, mcc,"
            " amount, ccy, merchant_country, channel_cd, status_cd, client_ip, batch_id)"
            " VALUES (%s, %s, %s, 'tok_edge', 'ACC_EDGE', 'M000001', '5411', %s, %s, 'DE', %s, %s, '10.9.8.7/16', 1)",
            (f"00000000-0000-4000-8000-0000000000{suffix}", local, zone, amount, ccy, channel, status),
        )

    for suffix, local, zone, amount, ccy, channel, status, _reason in BAD_ROWS:
        insert(suffix, local, zone, amount, ccy, channel, status)
    for suffix, local, zone, amount, ccy in EDGE_ROWS:
        insert(suffix, local, zone, amount, ccy)
    rejects = seeded.tmp / "rejects.jsonl"
    report = seeded.replay("--source", "legacy", "--since", SINCE, "--until", UNTIL, "--reject-file", str(rejects))

    want_reasons: dict[str, int] = {}
    for *_, reason in BAD_ROWS:
        want_reasons[reason] = want_reasons.get(reason, 0) + 1
    assert report["rejected"] == want_reasons
    assert set(report["samples"]) == set(want_reasons)
    expected = expected_records(seeded, SINCE, UNTIL)  # PostgreSQL's view; bad zones excluded by the query
    bad_refs = {f"00000000-0000-4000-8000-0000000000{s}" for s, *_ in BAD_ROWS}
    good = {ref: rec for ref, rec in expected.items() if ref not in bad_refs}
    assert report["produced"] == len(good) and report["read"] == len(good) + len(BAD_ROWS)

    lines = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert sorted((ln["row"]["txn_ref"][-2:], ln["reason"]) for ln in lines) == sorted(
        (s, reason) for s, *_, reason in BAD_ROWS)  # fmt: skip
    jpy = next(ln for ln in lines if ln["reason"] == "amount_precision")
    assert jpy["row"]["amount"] == "1.50" and jpy["row"]["ccy"] == "JPY" and "JPY" in jpy["detail"]

    records = {r["transaction_id"]: r for r in decode_all(seeded.settings, consume_all(seeded.settings, seeded.topic))}
    assert records.keys() == good.keys()
    for suffix, *_ in EDGE_ROWS:
        ref = f"00000000-0000-4000-8000-0000000000{suffix}"
        assert _same(records[ref], good[ref]), (records[ref], good[ref])
    assert records["00000000-0000-4000-8000-000000000011"]["event_time"] == _utc_ms(2024, 10, 27, 1, 30)
    assert records["00000000-0000-4000-8000-000000000013"]["amount_minor"] == 123456789
    assert records["00000000-0000-4000-8000-000000000014"]["amount_minor"] == 123456789
    assert records["00000000-0000-4000-8000-000000000013"]["ip_address"] == "10.9.8.7"


@pytest.mark.integration
def test_kill_9_then_resume_produces_every_row_exactly_once(seeded: Legacy) -> None:
    # one unmappable row every ~3 hours, so rejects fall on both sides of the kill
    bad = [f"00000000-0000-4000-9000-{i:012d}" for i in range(24)]
    for i, ref in enumerate(bad):
        seeded.sql(
            "INSERT INTO {schema}.card_txn (txn_ref, txn_ts_local, txn_tz, card_token, acct_no, merchant_code, mcc,"
            " amount, ccy, merchant_country, channel_cd, status_cd, batch_id) VALUES (%s, %s, 'UTC', 'tok_bad',"
            " 'ACC_BAD', 'M000001', '5411', 1.00, 'XXX', 'DE', 'P', 'AUTH', 1)",
            (ref, datetime(2024, 10, 25, 1, 7) + timedelta(hours=3 * i)),
        )
    rejects = seeded.tmp / "rejects.jsonl"
    args = ["replay", "--source", "legacy", "--since", "2024-10-25", "--until", SEED_UNTIL, "--topic", seeded.topic,
            "--checkpoint-topic", seeded.checkpoints, "--reject-file", str(rejects)]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOVA_")}
    env.update(seeded.env)
    log = (seeded.tmp / "replay.log").open("w")
    proc = subprocess.Popen([*nova_executable(), *args, "--rate", "500", "--batch", "250"], env=env, cwd=REPO,
                            stdout=log, stderr=log, start_new_session=True)  # fmt: skip
    try:
        # kill once some batches are committed and more are in flight
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(consume_all(seeded.settings, seeded.topic)) < 750:
            time.sleep(0.3)
        assert proc.poll() is None, "replay finished before it could be killed; slow it down"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    partial = len(consume_all(seeded.settings, seeded.topic))
    assert 0 < partial < SEED_ROWS

    refused = seeded.nova(*args, expect=2)
    assert "--resume" in refused.stderr and "--restart" in refused.stderr
    report = json.loads(seeded.nova(*args, "--resume", "--json").stdout)
    assert report["resumed_from"] is not None and report["produced"] == SEED_ROWS - partial
    assert report["job_totals"]["produced"] == SEED_ROWS
    assert report["job_totals"]["rejected"] == {"unknown_currency": len(bad)}
    assert 0 < report["rejected"].get("unknown_currency", 0) < len(bad)

    records = decode_all(seeded.settings, consume_all(seeded.settings, seeded.topic))
    ids = [r["transaction_id"] for r in records]
    assert len(ids) == len(set(ids)) == SEED_ROWS
    assert set(ids) == set(expected_records(seeded, "2024-10-25", SEED_UNTIL)) - set(bad)
    # the reject file holds each bad row once: lines of the batch the kill rolled back were cut off
    lines = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert sorted(line["row"]["txn_ref"] for line in lines) == bad
    # a finished job does nothing more with --resume, and refuses without it
    again = json.loads(seeded.nova(*args, "--resume", "--json").stdout)
    assert again["produced"] == 0 and again["rejected_total"] == 0
    seeded.nova(*args, expect=2)
    assert len(consume_all(seeded.settings, seeded.topic)) == SEED_ROWS
    assert len(rejects.read_text().splitlines()) == len(bad)
