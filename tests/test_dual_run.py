"""The dual run end to end: seed the legacy warehouse → replay → ingest → parity-check."""

from __future__ import annotations

import json
import os
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from tests.conftest import REPO, unique
from tests.pipeline_env import PipelineEnv, make_env, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def dual(tmp_path: Path):  # type: ignore[no-untyped-def]
    pe = make_env(tmp_path, "embedded")
    schema = unique("legacy")
    pe.env["NOVA_LEGACY__SCHEMA"] = schema
    until = datetime.now(UTC).date()  # seeded days end before today: no event is in the future
    since = until - timedelta(days=4)
    yield pe, str(since), str(until)
    pe.cleanup()
    from pipelines.config import load_settings
    from tests.conftest import REPO

    dsn = load_settings(REPO / "configs" / "nova.yaml", environ={}).legacy.dsn
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _parity(pe: PipelineEnv, since: str, until: str, *extra: str, expect: int) -> dict:
    result = pe.nova("parity-check", "--since", since, "--until", until, "--json", *extra, expect=expect)
    return json.loads(result.stdout)


def test_seed_replay_ingest_parity(dual, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pe, since, until = dual
    pe.nova("legacy", "seed", "--days", "3", "--rows", "20000", "--seed", "5", "--until", until)
    replay = json.loads(
        pe.nova(
            "replay",
            "--source",
            "legacy",
            "--since",
            since,
            "--until",
            until,
            "--json",
            "--reject-file",
            str(tmp_path / "rejects.jsonl"),
        ).stdout
    )
    assert replay["produced"] == 20000
    pe.nova("ingest", "--until-caught-up", "--quiet")
    assert pe.counts() == (20000, 20000)
    report = tmp_path / "parity.html"
    result = _parity(pe, since, until, "--report", str(report), expect=0)
    assert result["ok"] is True
    assert report.exists() and "<svg" in report.read_text()


def _topic_end(pe) -> int:  # type: ignore[no-untyped-def]
    """Messages (and transaction markers) written to the test's topic so far."""
    from pipelines import kafka
    from pipelines.config import load_settings
    from tests.conftest import REPO

    settings = load_settings(REPO / "configs" / "nova.yaml", environ=pe.env)
    consumer = kafka.consumer(settings, group_id=f"{pe.topic}-probe")
    try:
        meta = consumer.list_topics(pe.topic, timeout=10).topics[pe.topic]
        tps = [kafka.TopicPartition(pe.topic, p) for p in meta.partitions]
        ends = [consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in tps]
        return sum(ends)
    finally:
        consumer.close()


def test_kill_9_during_replay_then_resume(dual, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pe, since, until = dual
    pe.nova("legacy", "seed", "--days", "3", "--rows", "30000", "--seed", "6", "--until", until)
    args = ("replay", "--source", "legacy", "--since", since, "--until", until, "--json")
    proc = pe.spawn(*args, "--rate", "6000", log=tmp_path / "replay.log")
    # kill once a good part is in the topic (start-up time varies with the machine's load)
    wait_until(lambda: _topic_end(pe) >= 12000, timeout=60, interval=0.2, what="the replay to get going")
    assert proc.poll() is None, "replay finished before it could be killed; slow it down"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    resumed = json.loads(pe.nova(*args, "--resume").stdout)
    assert 0 < resumed["produced"] < 30000, "the killed run got part of the way"
    pe.nova("ingest", "--until-caught-up", "--quiet")
    assert pe.counts() == (30000, 30000)
    _parity(pe, since, until, expect=0)


def test_without_resume_an_interrupted_job_is_refused(dual, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pe, since, until = dual
    pe.nova("legacy", "seed", "--days", "2", "--rows", "5000", "--seed", "7", "--until", until)
    args = ("replay", "--source", "legacy", "--since", since, "--until", until)
    proc = pe.spawn(*args, "--rate", "500", log=tmp_path / "replay.log")  # 10,000 rows: ~20 s
    # A committed message means a committed checkpoint (one transaction): the job exists from then on.
    # (Waiting a fixed 2 s was not enough on a loaded machine: killed before its first commit, the
    # job had no checkpoint and the re-run rightly started afresh.)
    wait_until(lambda: proc.poll() is not None or _committed_seen(pe), timeout=60, interval=0.5, what="a batch")
    assert proc.poll() is None, "the replay ended before it could be interrupted"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    refused = pe.nova(*args, expect=2)
    assert "--resume" in refused.stderr


def _committed_seen(pe: PipelineEnv) -> bool:
    """Whether the pipeline's topic holds a message a read_committed consumer can see."""
    from pipelines import kafka
    from pipelines.config import load_settings

    settings = load_settings(REPO / "configs" / "nova.yaml", environ=pe.env)
    conf = {"isolation.level": "read_committed", "auto.offset.reset": "earliest", "enable.auto.commit": False}
    consumer = kafka.consumer(settings, group_id=unique("peek"), **conf)
    try:
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        topic = settings.pipeline.topic
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        return any(m.error() is None for m in consumer.consume(num_messages=1, timeout=3))
    finally:
        consumer.close()
