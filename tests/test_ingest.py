"""`nova ingest` on the real stack: exactly once under kill -9, rebalances and outages; the DLQ."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import REPO, run_nova, unique
from tests.pipeline_env import PipelineEnv, make_env, wait_until, worker_pids

pytestmark = pytest.mark.integration

KINDS = ("bad_magic_byte", "unknown_schema_id", "truncated", "wrong_type", "rule_violation")


@pytest.fixture(params=["embedded", pytest.param("server", marks=pytest.mark.server)])
def pipeline(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    pe = make_env(tmp_path, request.param)
    yield pe
    pe.cleanup()


def _generate(pe: PipelineEnv, *args: str) -> dict:
    result = pe.nova("generate", "--json", *args)
    return json.loads(result.stdout)


def test_malformed_events_land_in_the_dlq_with_their_reason(pipeline: PipelineEnv) -> None:
    malformed = {"bad_magic_byte": 7, "unknown_schema_id": 11, "truncated": 13, "wrong_type": 17, "rule_violation": 19}
    args = [a for k, n in malformed.items() for a in ("--malformed", f"{k}={n}")]
    report = _generate(pipeline, "--count", "20000", "--seed", "7", *args)
    assert report["valid"] == 20000

    result = pipeline.nova("ingest", "--until-caught-up", "--quiet", "--json")
    ingest = json.loads(result.stdout)
    assert ingest["events"] == 20000
    assert ingest["rejected"] == malformed

    assert pipeline.counts() == (20000, 20000)
    dlq = json.loads(pipeline.nova("dlq", "show", "--json", "--samples", "1").stdout)
    assert dlq["by_reason"] == malformed
    assert {s["reason"] for s in dlq["samples"]} == set(KINDS)
    assert all(s["source_topic"] == pipeline.topic and s["source_offset"] >= 0 for s in dlq["samples"])

    # Re-running finds nothing new: exactly once across runs too.
    again = json.loads(pipeline.nova("ingest", "--until-caught-up", "--quiet", "--json").stdout)
    assert again["events"] == 0
    assert pipeline.counts() == (20000, 20000)


def test_rollups_follow_the_table_and_no_alerts_with_detection_off(pipeline: PipelineEnv) -> None:
    _generate(pipeline, "--count", "5000", "--seed", "3")
    pipeline.nova("ingest", "--until-caught-up", "--quiet")
    db = pipeline.database
    total = pipeline.scalar(f"SELECT sum(amount_minor) AS s FROM {db}.transactions")
    rolled = pipeline.scalar(f"SELECT sum(amount_minor) AS s FROM {db}.transactions_by_merchant_minute")
    assert int(rolled) == int(total)
    # detection.enabled is off by default (the load generator's cards are no real cardholders):
    # the alerts table is the stream detector's alone (tests/test_detect_runtime.py), so it stays empty.
    assert int(pipeline.scalar(f"SELECT count() AS n FROM {db}.alerts")) == 0
    unknown = pipeline.scalar(f"SELECT countIf(merchant_name = '') AS n FROM {db}.transactions")
    assert int(unknown) == 0, "every generated merchant is in the merchant dimension"


@pytest.mark.slow
def test_exactly_once_under_kill_9(pipeline: PipelineEnv, tmp_path: Path) -> None:
    workers = "1" if pipeline.backend == "embedded" else "3"
    gen = pipeline.spawn(
        "generate",
        "--count",
        "200000",
        "--rate",
        "8000",
        "--seed",
        "11",
        "--malformed",
        "rule_violation=100",
        log=tmp_path / "gen.log",
    )
    ingest = pipeline.spawn("ingest", "--workers", workers, "--quiet", log=tmp_path / "ingest.log")
    sup = psutil.Process(ingest.pid)
    rng = random.Random(5)
    kills = 0
    deadline = time.monotonic() + 240
    while kills < 22 and time.monotonic() < deadline:
        time.sleep(rng.uniform(0.3, 1.6))
        pids = worker_pids(sup)
        if not pids:
            continue
        os.kill(rng.choice(pids), signal.SIGKILL)
        kills += 1
    assert kills >= 20, f"only {kills} kills happened"
    assert gen.wait(300) == 0
    ingest.send_signal(signal.SIGTERM)
    assert ingest.wait(30) == 0, (tmp_path / "ingest.log").read_text()[-3000:]
    # Whatever was left in flight: one more run to the end.
    pipeline.nova("ingest", "--until-caught-up", "--quiet", "--workers", workers)
    assert pipeline.counts() == (200000, 200000), pipeline.nova("status", "--json").stdout


@pytest.mark.server
@pytest.mark.slow
def test_workers_joining_and_leaving(tmp_path: Path) -> None:
    pe = make_env(tmp_path, "server")
    try:
        gen = pe.spawn("generate", "--count", "200000", "--rate", "10000", "--seed", "13", log=tmp_path / "gen.log")
        a = pe.spawn("ingest", "--quiet", log=tmp_path / "a.log")
        time.sleep(3)
        b = pe.spawn("ingest", "--quiet", log=tmp_path / "b.log")
        time.sleep(3)
        c = pe.spawn("ingest", "--workers", "2", "--quiet", log=tmp_path / "c.log")
        time.sleep(4)
        a.send_signal(signal.SIGTERM)  # leaves gracefully
        assert a.wait(15) == 0
        time.sleep(3)
        d = pe.spawn("ingest", "--quiet", log=tmp_path / "d.log")
        time.sleep(3)
        b.send_signal(signal.SIGTERM)
        assert b.wait(15) == 0
        assert gen.wait(120) == 0
        for proc in (c, d):
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(15) == 0
        pe.nova("ingest", "--until-caught-up", "--quiet", "--workers", "3")
        assert pe.counts() == (200000, 200000)
    finally:
        pe.cleanup()


@pytest.mark.server
@pytest.mark.slow
@pytest.mark.serial  # stops the clickhouse-server every other server test uses
def test_clickhouse_server_outage_pauses_and_resumes(tmp_path: Path) -> None:
    pe = make_env(tmp_path, "server")
    try:
        gen = pe.spawn("generate", "--count", "150000", "--rate", "5000", "--seed", "17", log=tmp_path / "gen.log")
        ingest = pe.spawn("ingest", "--workers", "3", "--quiet", log=tmp_path / "ingest.log")
        time.sleep(8)
        pe.nova("stack", "up", "--without", "clickhouse-server")
        time.sleep(15)
        assert ingest.poll() is None, "the workers must wait, not exit"
        pe.nova("stack", "up", "--with", "clickhouse-server")
        assert gen.wait(120) == 0
        wait_until(lambda: pe.counts()[0] >= 150000, timeout=120, interval=3, what="all events ingested")
        assert ingest.poll() is None
        ingest.send_signal(signal.SIGTERM)
        assert ingest.wait(15) == 0
        assert pe.counts() == (150000, 150000)
        log = (tmp_path / "ingest.log").read_text()
        assert "Traceback" not in log
    finally:
        pe.cleanup()


def test_sigterm_flushes_and_exits_quickly(pipeline: PipelineEnv, tmp_path: Path) -> None:
    _generate(pipeline, "--count", "30000", "--seed", "19")
    ingest = pipeline.spawn("ingest", "--quiet", log=tmp_path / "ingest.log")
    time.sleep(8)  # started, joined the group, inserting
    started = time.monotonic()
    ingest.send_signal(signal.SIGTERM)
    assert ingest.wait(15) == 0
    assert time.monotonic() - started < 10
    n, u = pipeline.counts()
    assert n == u and n > 0
    pipeline.nova("ingest", "--until-caught-up", "--quiet")
    assert pipeline.counts() == (30000, 30000)


def test_embedded_store_refuses_several_workers(tmp_path: Path) -> None:
    pe = make_env(tmp_path, "embedded")
    try:
        result = pe.nova("ingest", "--workers", "3", expect=2)
        assert "embedded store" in result.stderr and "clickhouse-server" in result.stderr
    finally:
        pe.cleanup()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_prometheus_metrics_endpoint(tmp_path: Path) -> None:
    import urllib.request

    pe = make_env(tmp_path, "embedded")
    try:
        _generate(pe, "--count", "5000", "--seed", "23", "--malformed", "truncated=3")
        port = _free_port()
        ingest = pe.spawn("ingest", "--quiet", "--metrics-port", str(port), log=tmp_path / "ingest.log")

        def scraped() -> str:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
                    return str(resp.read().decode())
            except OSError:
                return ""

        def total(text: str, name: str) -> float:
            return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))

        wait_until(lambda: total(scraped(), "nova_ingest_events_total") >= 5000, timeout=60, what="metrics")
        text = scraped()
        assert total(text, "nova_ingest_events_total") == 5000
        assert 'reason="truncated"' in text
        assert "nova_ingest_consumer_lag" in text
        # where the time goes, per stage (histograms re-encoded every few seconds)
        wait_until(lambda: 'stage="insert"' in scraped(), timeout=30, what="per-stage latency metrics")
        stages = [line for line in scraped().splitlines() if line.startswith("nova_ingest_stage_latency_ms{")]
        assert any('quantile="0.99",stage="accumulate"' in line for line in stages), stages
        ingest.send_signal(signal.SIGTERM)
        assert ingest.wait(15) == 0
    finally:
        pe.cleanup()


def test_dlq_export_fix_and_republish(tmp_path: Path) -> None:
    pe = make_env(tmp_path, "embedded")
    try:
        _generate(
            pe, "--count", "2000", "--seed", "29", "--malformed", "rule_violation=9", "--malformed", "truncated=2"
        )
        pe.nova("ingest", "--until-caught-up", "--quiet")
        assert pe.counts() == (2000, 2000)
        export = tmp_path / "rejects.jsonl"
        pe.nova("dlq", "export", "--reason", "rule_violation", "--out", str(export))
        rows = [json.loads(line) for line in export.read_text().splitlines()]
        assert len(rows) == 9 and all("record" in r for r in rows)
        # A person fixes the records: a sane amount, a known currency, a plausible time.
        now_ms = int(time.time() * 1000)
        for r in rows:
            r["record"].update(amount_minor=1234, currency="EUR", event_time=now_ms)
        export.write_text("".join(json.dumps(r) + "\n" for r in rows))
        result = pe.nova("dlq", "republish", "--file", str(export), "--yes")
        assert "re-published 9" in result.stderr
        pe.nova("ingest", "--until-caught-up", "--quiet")
        assert pe.counts() == (2009, 2009)
        # Undecodable ones can't be exported as records: refused with the line named.
        bad = tmp_path / "bad.jsonl"
        pe.nova("dlq", "export", "--reason", "truncated", "--out", str(bad))
        refused = pe.nova("dlq", "republish", "--file", str(bad), "--yes", expect=2)
        assert f"{bad}:1" in refused.stderr
    finally:
        pe.cleanup()


def _copy_in_transactions(pe: PipelineEnv, source: str, count: int, transactions: int) -> None:
    """Re-produce `source`'s messages into the pipeline topic with a transactional producer, as
    `nova replay` does: each transaction leaves a marker (an offset, never a message) per partition."""
    from pipelines import kafka
    from pipelines.config import load_settings

    settings = load_settings(REPO / "configs" / "nova.yaml", environ=pe.env)
    consumer = kafka.consumer(settings, group_id=unique("copy"))
    consumer.assign([kafka.TopicPartition(source, 0, 0)])
    messages: list = []
    deadline = time.monotonic() + 60
    while len(messages) < count and time.monotonic() < deadline:
        messages += [m for m in consumer.consume(num_messages=1000, timeout=0.5) if m.error() is None]
    consumer.close()
    assert len(messages) == count
    producer = kafka.producer(settings, **{"transactional.id": unique("replay")})
    producer.init_transactions(30)
    step = -(-count // transactions)
    for i in range(0, count, step):
        producer.begin_transaction()
        for m in messages[i : i + step]:
            producer.produce(pe.topic, m.value(), m.key())
        producer.commit_transaction(30)


def test_no_phantom_lag_after_a_transactional_producer(tmp_path: Path) -> None:
    from pipelines import kafka
    from pipelines.config import load_settings

    pe = make_env(tmp_path, "embedded")
    settings = load_settings(REPO / "configs" / "nova.yaml", environ=pe.env)
    source = f"{pe.topic}.source"
    kafka.create_topic(settings, source, partitions=1, replication_factor=1, config={})
    try:
        run_nova("generate", "--count", "3000", "--seed", "37", env={**pe.env, "NOVA_PIPELINE__TOPIC": source})
        _copy_in_transactions(pe, source, 3000, transactions=3)
        ingest = json.loads(pe.nova("ingest", "--until-caught-up", "--quiet", "--json").stdout)
        assert ingest["events"] == 3000 and pe.counts() == (3000, 3000)
        status = json.loads(pe.nova("status", "--json").stdout)
        assert status["total_lag"] == 0, status
        written = [r for r in status["partitions"] if r["end"] > 0]
        assert written and all(r["committed"] == r["end"] for r in written), "committed past the markers"

        # A group committed by an older worker (last offset + 1: the marker's offset) reads 0 too.
        consumer = kafka.consumer(settings, group_id=settings.pipeline.group_id)
        consumer.commit(
            offsets=[kafka.TopicPartition(pe.topic, r["partition"], r["end"] - 1) for r in written],
            asynchronous=False,
        )
        consumer.close()
        status = json.loads(pe.nova("status", "--json").stdout)
        assert all(r["committed"] == r["end"] - 1 for r in status["partitions"] if r["end"] > 0)
        assert status["total_lag"] == 0, status
    finally:
        kafka.delete_topics(settings, [source])
        pe.cleanup()
