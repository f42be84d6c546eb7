"""The detector inside `nova ingest`, on the real stack: scenarios named, alerts once, labels, merchant risk.

Hand-built card histories on top of generated background traffic, produced with the real Avro
encoder; the assertions read the tables and topics the workers wrote.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from pipelines import kafka
from pipelines.config import Settings, load_settings
from pipelines.contracts.codec import Decoder, encode
from pipelines.contracts.reference import load_reference
from pipelines.contracts.registry import open_registry
from pipelines.synth import iter_transactions
from tests.conftest import REPO, run_nova
from tests.pipeline_env import PipelineEnv, make_env, worker_pids

pytestmark = pytest.mark.integration

MINUTE_MS = 60_000


class DetectEnv:
    """A PipelineEnv with its own labels and alerts topics, detection on and scores recorded."""

    def __init__(self, pe: PipelineEnv) -> None:
        self.pe = pe
        self.labels_topic = f"{pe.topic}.labels"
        self.alerts_topic = f"{pe.topic}.alerts"
        pe.env.update(
            {
                "NOVA_DETECTION__ENABLED": "true",
                "NOVA_DETECTION__LABELS_TOPIC": self.labels_topic,
                "NOVA_DETECTION__ALERTS_TOPIC": self.alerts_topic,
                "NOVA_DETECTION__RECORD_SCORES": "true",
                "NOVA_DETECTION__MERCHANT_RISK_REFRESH_S": "1",
            }
        )
        self.settings = load_settings(REPO / "configs" / "nova.yaml", environ=pe.env)
        for topic in (self.labels_topic, self.alerts_topic):
            kafka.create_topic(self.settings, topic, partitions=2, replication_factor=1, config={})
        self.registry = open_registry(self.settings)

    def produce(self, records: list[dict[str, Any]]) -> None:
        latest = self.registry.latest(self.settings.pipeline.subject)
        producer = kafka.producer(self.settings)
        for r in records:
            producer.produce(
                self.settings.pipeline.topic,
                value=encode(r, latest.id, latest.schema.parsed),
                key=r["card_id"].encode(),
            )
        assert producer.flush(30) == 0

    def produce_labels(self, labels: list[dict[str, Any]]) -> None:
        latest = self.registry.latest("transactions.labels-value")
        producer = kafka.producer(self.settings)
        for label in labels:
            value = encode(label, latest.id, latest.schema.parsed)
            producer.produce(self.labels_topic, value=value, key=label["transaction_id"].encode())
        assert producer.flush(30) == 0

    def ingest(self) -> dict[str, Any]:
        return json.loads(self.pe.nova("ingest", "--until-caught-up", "--quiet", "--json").stdout)

    def alerts(self) -> dict[str, tuple[tuple[str, ...], float]]:
        return self.outcome()[0]

    def outcome(self) -> tuple[dict[str, tuple[tuple[str, ...], float]], dict[str, float]]:
        """(alerts: transaction → (rules, score), scores: transaction → score), in one query (one `nova`)."""
        db = self.pe.database
        rows = self.pe.query(
            f"SELECT 'alert' AS kind, transaction_id, rules, score FROM {db}.alerts FINAL UNION ALL "
            f"SELECT 'score' AS kind, transaction_id, [] AS rules, score FROM {db}.fraud_scores FINAL"
        )
        alerts = {
            r["transaction_id"]: (tuple(r["rules"]), round(float(r["score"]), 5)) for r in rows if r["kind"] == "alert"
        }
        return alerts, {r["transaction_id"]: round(float(r["score"]), 5) for r in rows if r["kind"] == "score"}

    def scores(self, events: list[dict[str, Any]]) -> list[tuple[str, float, list[str]]]:
        ids = ", ".join(f"'{e['transaction_id']}'" for e in events)
        rows = self.pe.query(
            f"SELECT card_id, score, rules, event_time FROM {self.pe.database}.fraud_scores "
            f"WHERE transaction_id IN ({ids}) ORDER BY event_time"
        )
        return [(r["card_id"], round(float(r["score"]), 3), r["rules"]) for r in rows]

    def alert_messages(self) -> list[dict[str, Any]]:
        consumer = kafka.consumer(self.settings, group_id=f"{self.pe.topic}-reader")
        consumer.subscribe([self.alerts_topic])
        decoder = Decoder(self.registry)
        out: list[dict[str, Any]] = []
        idle = time.monotonic()
        while time.monotonic() - idle < 5:
            for m in consumer.consume(num_messages=1000, timeout=0.5):
                if m.error() is None:
                    out.append({"key": m.key(), **decoder.decode(m.value())})
                    idle = time.monotonic()
        consumer.close()
        return out

    def cleanup(self) -> None:

        with contextlib.suppress(Exception):
            kafka.delete_topics(self.settings, [self.labels_topic, self.alerts_topic])
        self.pe.cleanup()


# The server variants double the wall time: make test-all runs them, CI the embedded ones.
@pytest.fixture(params=["embedded", pytest.param("server", marks=[pytest.mark.server, pytest.mark.long])])
def det(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DetectEnv]:
    env = DetectEnv(make_env(tmp_path, request.param))
    yield env
    env.cleanup()


def background(settings: Settings, n: int, *, seed: int, start_ms: int, spread_s: int) -> list[dict[str, Any]]:
    ref = load_reference(settings)
    return list(
        iter_transactions(
            seed=seed, merchants=ref.merchants, fx_rates=ref.fx_rates, count=n, start_ms=start_ms, spread_s=spread_s
        )
    )


def like(template: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A valid transaction shaped like `template` (a generated one), with a new id and `changes`."""
    return {**template, "transaction_id": str(uuid.uuid4()), **changes}


def scenario_events(template: dict[str, Any], now_ms: int) -> dict[str, list[dict[str, Any]]]:
    """One card per scenario; the last event of each is the one that must alert, under the scenario's rule."""
    t0 = now_ms - 40 * MINUTE_MS
    eur = {"currency": "EUR", "status": "AUTHORIZED", "device_id": "dev-1", "channel": "ECOM"}
    out: dict[str, list[dict[str, Any]]] = {}
    card = "card-testing-1"
    out["card_testing"] = [
        like(template, card_id=card, event_time=t0 + i * 30_000, amount_minor=50 + i, **eur) for i in range(6)
    ]
    card = "card-takeover-1"  # a habit on one device, then a burst of spend from a new one
    usual = [
        like(template, card_id=card, event_time=t0 - (6 - i) * 60 * MINUTE_MS, amount_minor=2_500, **eur)
        for i in range(5)
    ]
    taken = {**eur, "device_id": "dev-taken-over"}
    burst = [
        like(template, card_id=card, event_time=t0 + i * 4 * MINUTE_MS, amount_minor=10_000 << i, **taken)
        for i in range(7)
    ]
    out["takeover_burst"] = [*usual, *burst]
    card = "card-travel-1"
    paris = {"latitude": 48.8566, "longitude": 2.3522, "country": "FR"}
    new_york = {"latitude": 40.7128, "longitude": -74.0060, "country": "US"}
    out["impossible_travel"] = [
        like(template, card_id=card, event_time=t0, amount_minor=4_000, **eur, **paris),
        like(template, card_id=card, event_time=t0 + 30 * MINUTE_MS, amount_minor=4_200, **eur, **new_york),
    ]
    card = "card-spike-1"
    habit = [
        like(template, card_id=card, event_time=t0 - (12 - i) * 60 * MINUTE_MS, amount_minor=2_000 + 37 * i, **eur)
        for i in range(12)
    ]
    out["amount_spike"] = [*habit, like(template, card_id=card, event_time=t0 + MINUTE_MS, amount_minor=900_000, **eur)]
    return out


def test_each_scenario_alerts_with_its_rule_once_on_table_and_topic(det: DetectEnv) -> None:
    now_ms = int(time.time() * 1000)
    noise = background(det.settings, 400, seed=21, start_ms=now_ms - 50 * MINUTE_MS, spread_s=45 * 60)
    scenarios = scenario_events(noise[0], now_ms)
    records = sorted([*noise, *(e for es in scenarios.values() for e in es)], key=lambda r: r["event_time"])
    det.produce(records)
    report = det.ingest()
    assert report["events"] == len(records)

    alerts, scores = det.outcome()
    for name, events in scenarios.items():
        named = [e["transaction_id"] for e in events if name in alerts.get(e["transaction_id"], ((), 0))[0]]
        assert named, f"{name}: no alert names the rule; " + repr(det.scores(events))
    assert report["alerts"] == len(alerts), "each alert written once"
    assert report["detection_cpu_s"] > 0, "what detection cost the workers is reported"
    assert report["latency_alert"]["events"] == len(alerts)
    assert report["latency_alert_insert"]["p99_ms"] < 1000

    # Every row scored once (fraud_scores), and the alerts topic carries the same alerts, keyed by card.
    assert len(scores) == len(records)
    messages = det.alert_messages()
    assert {m["transaction_id"] for m in messages} == set(alerts)
    for m in messages:
        assert m["key"] == m["card_id"].encode()
        assert tuple(m["rules"]) == alerts[m["transaction_id"]][0]
        assert m["alerted_at"] >= m["produced_at"] > 0

    # nova fraud alerts lists them (newest first), for one card too.
    listed = json.loads(det.pe.nova("fraud", "alerts", "--since", "1h", "--limit", "1000", "--json").stdout)
    assert {r["transaction_id"] for r in listed} == set(alerts)
    card = scenarios["card_testing"][-1]["card_id"]
    one = json.loads(det.pe.nova("fraud", "alerts", "--card", card, "--json").stdout)
    assert one and {r["card_id"] for r in one} == {card}
    assert "card_testing" in one[0]["rules"]
    table = det.pe.nova("fraud", "alerts", "--since", "1h").stdout
    assert "card_testing" in table and card in table


@pytest.fixture(scope="module")
def corpus_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Labelled traffic from the synth generator (every scenario), as files, so two runs get the same events."""
    out = tmp_path_factory.mktemp("corpus")
    tx, labels = out / "tx.parquet", out / "labels.parquet"
    run_nova(
        "generate", "-n", str(KILL_EVENTS), "--cards", "400", "--spread-days", "2", "--fraud-rate", "0.04",
        "--seed", "17", "--out", str(tx), "--labels-out", str(labels),
    )  # fmt: skip
    return tx, labels


KILL_EVENTS = 6_000


def _produce_corpus(
    det: DetectEnv, files: tuple[Path, Path], *, rate: float | None, rows: tuple[int, int] = (0, KILL_EVENTS)
) -> None:
    from pipelines.fraudeval.corpus import load_corpus
    from pipelines.fraudeval.replay import produce_corpus

    corpus = load_corpus(det.settings, *files)
    none = np.zeros(0, dtype=np.int64)
    produce_corpus(
        settings=det.settings,
        corpus=corpus,
        rows=rows,
        feed_rows=none,
        feed_at_ms=none,
        labels_topic=det.labels_topic,
        rate=rate,
    )


@pytest.mark.slow
def test_alerts_with_kill_9s_equal_alerts_without(
    tmp_path: Path, corpus_files: tuple[Path, Path], request: pytest.FixtureRequest
) -> None:
    calm = DetectEnv(make_env(tmp_path / "calm", "embedded"))
    killed = DetectEnv(make_env(tmp_path / "killed", "embedded"))
    request.addfinalizer(calm.cleanup)
    request.addfinalizer(killed.cleanup)

    _produce_corpus(calm, corpus_files, rate=None)
    assert calm.ingest()["events"] == KILL_EVENTS
    expected_alerts, expected_scores = calm.outcome()
    assert len(expected_scores) == KILL_EVENTS
    assert len(expected_alerts) > 50, "the corpus must give the comparison something to compare"

    producer = threading.Thread(target=_produce_corpus, args=(killed, corpus_files), kwargs={"rate": 1000.0})
    producer.start()
    ingest = killed.pe.spawn("ingest", "--quiet", log=tmp_path / "ingest.log")
    sup = psutil.Process(ingest.pid)
    rng = random.Random(3)
    kills = 0
    while producer.is_alive() or kills < 3:
        time.sleep(rng.uniform(2.0, 3.5))
        pids = worker_pids(sup)
        if pids:
            os.kill(pids[0], signal.SIGKILL)
            kills += 1
        assert kills < 15, "the producer did not finish"
    producer.join()
    ingest.send_signal(signal.SIGTERM)
    assert ingest.wait(30) == 0, (tmp_path / "ingest.log").read_text()[-3000:]
    killed.ingest()  # whatever the last kill left in flight

    db = killed.pe.database
    counts = killed.pe.query(
        f"SELECT count() AS n, uniqExact(transaction_id) AS u, (SELECT count() FROM {db}.detect_state) AS snapshots "
        f"FROM {db}.transactions"
    )[0]
    assert (int(counts["n"]), int(counts["u"])) == (KILL_EVENTS, KILL_EVENTS)
    assert int(counts["snapshots"]) > 0, "the restarts had snapshots to restore"
    alerts, scores = killed.outcome()
    assert alerts == expected_alerts, f"{kills} kills changed the alerts"
    assert scores == expected_scores
    # The topic is at-least-once: every alert on it, whatever the kills interrupted (ids, not copies).
    assert {m["transaction_id"] for m in killed.alert_messages()} == set(expected_alerts)


@pytest.mark.parametrize("backend", ["embedded", pytest.param("server", marks=pytest.mark.server)])
def test_a_successor_replaying_the_table_scores_like_one_uninterrupted_run(
    tmp_path: Path, corpus_files: tuple[Path, Path], backend: str, request: pytest.FixtureRequest
) -> None:
    """Three runs over thirds of the corpus: the second restores the first's snapshots and the third,
    its snapshots deleted, rebuilds every card from the stored rows. Both must score as one run does.

    On the server (18.16: DateTime, whole seconds) the stored event_time is coarser than the
    Kafka record's, so the detector must see stream rows as the table keeps them.
    """
    calm = DetectEnv(make_env(tmp_path / "calm", backend))
    split = DetectEnv(make_env(tmp_path / "split", backend))
    request.addfinalizer(calm.cleanup)
    request.addfinalizer(split.cleanup)
    _produce_corpus(calm, corpus_files, rate=None)
    assert calm.ingest()["events"] == KILL_EVENTS
    expected_alerts, expected_scores = calm.outcome()

    thirds = [(i * KILL_EVENTS // 3, (i + 1) * KILL_EVENTS // 3) for i in range(3)]
    for i, rows in enumerate(thirds):
        if i == 2:
            assert int(split.pe.scalar(f"SELECT count() FROM {split.pe.database}.detect_state")) > 0
            split.pe.nova("query", f"TRUNCATE TABLE {split.pe.database}.detect_state")
        _produce_corpus(split, corpus_files, rate=None, rows=rows)
        assert split.ingest()["events"] == rows[1] - rows[0]
    alerts, scores = split.outcome()
    assert scores == expected_scores, f"restores changed the scores: {_diff(expected_scores, scores)}"
    assert alerts == expected_alerts


def _diff(expected: dict[str, Any], got: dict[str, Any]) -> str:
    keys = sorted(k for k in expected.keys() | got.keys() if expected.get(k) != got.get(k))
    return f"{len(keys)} differ, e.g. " + "; ".join(f"{k}: {expected.get(k)} → {got.get(k)}" for k in keys[:8])


def _report_in(log: Path) -> dict[str, Any]:
    """The summary a `nova ingest --json` printed when it stopped (the log's last JSON object)."""
    text = log.read_text(errors="replace")
    start = text.rfind('{\n  "events"')
    assert start >= 0, text[-2000:]
    return json.loads(text[start : text.index("\n}", start) + 2])


STALL_S = 7.0  # past make_env's 3 s session: the group hands the stalled worker's partitions on


@pytest.mark.server
@pytest.mark.slow
def test_alerts_with_stalled_workers_and_rebalances_equal_alerts_without(
    tmp_path: Path, corpus_files: tuple[Path, Path], request: pytest.FixtureRequest
) -> None:
    """SIGSTOP a worker past its session while a second `nova ingest` joins (a rebalance), SIGCONT it.

    The stalled worker wakes up with a batch scored and maybe inserted whose partitions have a new
    owner: its alerts must neither be lost nor differ from a calm run's. clickhouse-server only (the
    embedded store admits one process).
    """
    calm = DetectEnv(make_env(tmp_path / "calm", "server"))
    stalled = DetectEnv(make_env(tmp_path / "stalled", "server"))
    request.addfinalizer(calm.cleanup)
    request.addfinalizer(stalled.cleanup)

    _produce_corpus(calm, corpus_files, rate=None)
    assert calm.ingest()["events"] == KILL_EVENTS
    expected_alerts, expected_scores = calm.outcome()
    assert len(expected_alerts) > 50

    producer = threading.Thread(target=_produce_corpus, args=(stalled, corpus_files), kwargs={"rate": 400.0})
    producer.start()
    logs = [tmp_path / "ingest-0.log"]
    live = [stalled.pe.spawn("ingest", "--quiet", "--json", log=logs[0])]
    seed = int(os.environ.get("STALL_TEST_SEED") or random.SystemRandom().randrange(1 << 30))
    rng = random.Random(seed)
    stalls = 0
    time.sleep(3.0)
    while producer.is_alive() or stalls < 2:
        pids = [pid for proc in live for pid in worker_pids(psutil.Process(proc.pid))]
        assert pids, "no ingest worker running"
        victim = rng.choice(pids)
        os.kill(victim, signal.SIGSTOP)
        logs.append(tmp_path / f"ingest-{len(logs)}.log")
        live.append(stalled.pe.spawn("ingest", "--quiet", "--json", log=logs[-1]))
        time.sleep(STALL_S)
        os.kill(victim, signal.SIGCONT)
        stalls += 1
        time.sleep(rng.uniform(1.0, 3.0))
        if len(live) > 2:  # the oldest leaves gracefully: one more rebalance
            oldest = live.pop(0)
            oldest.send_signal(signal.SIGTERM)
            assert oldest.wait(60) == 0
        assert stalls < 8, "the producer did not finish"
    producer.join()
    for proc in live:
        proc.send_signal(signal.SIGTERM)
    for proc in live:
        assert proc.wait(60) == 0
    stalled.ingest()
    reports = [_report_in(log) for log in logs]
    print(f"seed {seed}: {stalls} stalls, per process {[(r['events'], r['fenced_partitions']) for r in reports]}")
    assert sum(r["events"] for r in reports[1:]) > 0, "partitions moved to a process started during a stall"

    n, unique = stalled.pe.counts()
    assert (n, unique) == (KILL_EVENTS, KILL_EVENTS)
    alerts, scores = stalled.outcome()
    assert alerts == expected_alerts, f"{stalls} stalls changed the alerts: {_diff(expected_alerts, alerts)}"
    assert scores == expected_scores, f"{stalls} stalls changed the scores: {_diff(expected_scores, scores)}"
    assert {m["transaction_id"] for m in stalled.alert_messages()} == set(expected_alerts)


def test_late_labels_raise_merchant_risk_and_alert_later_transactions_only(det: DetectEnv) -> None:
    now_ms = int(time.time() * 1000)
    # 13 h before now: a merchant-risk step boundary (every 6 h) falls between the labels and `after`
    template = background(det.settings, 2, seed=5, start_ms=now_ms - 14 * 60 * MINUTE_MS, spread_s=60)
    shop, other = template[0]["merchant_id"], template[1]["merchant_id"]
    assert shop != other
    plain = {"currency": "EUR", "status": "CAPTURED", "channel": "ECOM", "amount_minor": 3_000}
    t0 = now_ms - 13 * 60 * MINUTE_MS
    through_shop = [
        like(template[0], card_id=f"card-shop-{i}", device_id=f"dev-shop-{i}", event_time=t0 + i * MINUTE_MS, **plain)
        for i in range(20)
    ]
    before_labels = like(template[0], card_id="card-before", device_id="dev-b", event_time=t0 + 21 * MINUTE_MS, **plain)
    # Chargebacks for half of them, known from t0 + 30 min: in the labels table from the start, but
    # in event time they do not exist yet for these transactions (nor for any before t0 + 30 min).
    fraud = through_shop[::2]
    det.produce_labels(
        [
            {
                "transaction_id": t["transaction_id"],
                "is_fraud": True,
                "label_time": t0 + 30 * MINUTE_MS,
                "scenario": "compromised_merchant",
            }
            for t in fraud
        ]
    )
    det.produce([*through_shop, before_labels])
    for _ in range(5):  # the labels consumer runs inside the ingest process, beside the workers
        det.ingest()
        if int(det.pe.scalar(f"SELECT count() AS n FROM {det.pe.database}.fraud_labels FINAL")) == len(fraud):
            break
    else:
        raise AssertionError("the labels never reached fraud_labels")

    after = like(template[0], card_id="card-after", device_id="dev-a", event_time=now_ms - MINUTE_MS, **plain)
    elsewhere = like(template[1], card_id="card-elsewhere", device_id="dev-e", event_time=now_ms - MINUTE_MS, **plain)
    det.produce([after, elsewhere])
    det.ingest()
    alerts, scores = det.outcome()
    assert after["transaction_id"] in alerts, det.scores([after])
    assert "compromised_merchant" in alerts[after["transaction_id"]][0]
    assert elsewhere["transaction_id"] not in alerts, "another merchant's spend is unaffected"
    # Labels are known as of event time: not to the transactions they label, nor to the one after them.
    assert before_labels["transaction_id"] not in alerts
    assert not {t["transaction_id"] for t in fraud} & set(alerts)
    # Twenty look-alike first transactions of fresh cards: one score for all, labelled or not (a label
    # read "as of the end" would have raised the shop's risk for the later ones).
    assert len({scores[t["transaction_id"]] for t in [*through_shop, before_labels]}) == 1
    assert len(scores) == len(through_shop) + 3


def ingest_labelled(det: DetectEnv, *, count: int, days: int, seed: int, label_delay: str, labels: int) -> None:
    """Generated traffic at 3 % fraud with its labels on the labels topic, ingested until > `labels` are stored."""
    det.pe.nova(
        "generate", "--count", str(count), "--fraud-rate", "0.03", "--spread-days", str(days), "--seed", str(seed),
        "--label-delay", label_delay, "--labels-topic", det.labels_topic,
    )  # fmt: skip
    for _ in range(5):
        det.ingest()
        if int(det.pe.scalar(f"SELECT count() AS n FROM {det.pe.database}.fraud_labels FINAL")) > labels:
            return
    raise AssertionError("the labels never reached fraud_labels")


def test_fraud_train_learns_the_stored_history_and_the_workers_score_with_it(det: DetectEnv, tmp_path: Path) -> None:
    """`nova fraud train` on what the pipeline stored: the artifact, its blend choice, and the workers using it."""
    from pipelines.detect.features import FEATURE_NAMES
    from pipelines.detect.model import FraudModel

    ingest_labelled(det, count=20000, days=6, seed=3, label_delay="1h..12h", labels=500)
    out = tmp_path / "fraud.model"
    report = json.loads(det.pe.nova("fraud", "train", "--out", str(out), "--label-delay", "12h", "--json").stdout)
    assert report["rows_read"] >= 20000 and 0 < report["rows_trained"] < report["rows_read"]
    assert 300 < report["frauds"] < 600
    v = report["validation"]
    assert v["frauds"] >= 20 and {"ap_rules", "ap_model", "ap_rules_and_model"} <= set(v)
    assert report["rules_weight"] == (0.0 if v["ap_model"] > v["ap_rules_and_model"] else 1.0)
    model = FraudModel.load(out)
    assert model.version == report["version"] and model.feature_names == FEATURE_NAMES
    assert model.rules_weight == report["rules_weight"] and model.summary["frauds"] == report["frauds"]
    table = det.pe.nova("fraud", "train", "--out", str(tmp_path / "again.model"), "--label-delay", "12h").stdout
    assert "scores by" in table and "validation" in table
    # the workers load it: new transactions are scored by it, and its alerts carry its version
    det.pe.env["NOVA_DETECTION__MODEL"] = str(out)
    det.pe.nova("generate", "--count", "3000", "--fraud-rate", "0.03", "--spread-days", "1", "--seed", "4")
    det.ingest()
    versions = det.pe.query(
        f"SELECT model_version, count() AS n FROM {det.pe.database}.alerts FINAL GROUP BY model_version"
    )
    assert {r["model_version"] for r in versions} >= {report["version"]}


REPLAY_CACHE_CHECK = """
import json, sys
from pathlib import Path
from pipelines.clickhouse import open_store
from pipelines.config import load_settings
from pipelines.fraudeval.train import ReplayCache, train

settings = load_settings(Path(sys.argv[1]))
db, out = settings.clickhouse.database, Path(sys.argv[2])
with open_store(settings) as store:  # a copy of the history that grows day by day, as evaluate's store does
    first, last = store.query_rows(
        f"SELECT toInt64(toUnixTimestamp64Milli(min(event_time))), toInt64(toUnixTimestamp64Milli(max(event_time))) "
        f"FROM {db}.transactions"
    )[0]
    store.execute(f"CREATE TABLE {db}.growing AS {db}.transactions")
settings.pipeline.table = "growing"
cache, done, reports = ReplayCache(), 0, []
for k, cutoff in enumerate([first + 2 * 86_400_000, first + 3 * 86_400_000, last + 1]):
    with open_store(settings) as store:
        store.execute(
            f"INSERT INTO {db}.growing SELECT * FROM {db}.transactions "
            f"WHERE toUnixTimestamp64Milli(event_time) >= {done} AND toUnixTimestamp64Milli(event_time) < {cutoff}"
        )
    done = cutoff
    reports.append(train(settings=settings, out=out / f"cached-{k}.model", until_ms=cutoff, cache=cache))
whole = train(settings=settings, out=out / "whole.model", until_ms=done)
print(json.dumps({"cached": [r.__dict__ for r in reports], "whole": whole.__dict__}))
"""


def test_fraud_train_with_a_replay_cache_replays_only_new_rows_and_trains_the_same_model(
    det: DetectEnv, tmp_path: Path
) -> None:
    """Evaluate's retrainings: each replays only the rows stored since the last, and the model is unchanged."""
    import subprocess
    import sys

    ingest_labelled(det, count=12000, days=4, seed=5, label_delay="1h..6h", labels=300)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOVA_")} | det.pe.env
    done = subprocess.run(
        [sys.executable, "-c", REPLAY_CACHE_CHECK, str(REPO / "configs" / "nova.yaml"), str(tmp_path)],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    cached, whole = out["cached"], out["whole"]
    assert [r["rows_read"] for r in cached] == sorted({r["rows_read"] for r in cached})  # the history grew
    assert cached[-1]["rows_read"] == whole["rows_read"] == whole["rows_replayed"] >= 11000
    # each call replayed only what was new: together, every row once
    assert cached[0]["rows_replayed"] == cached[0]["rows_read"]
    assert sum(r["rows_replayed"] for r in cached) == whole["rows_read"]
    assert cached[-1]["frauds"] == whole["frauds"] > 100
    assert cached[-1]["version"] == whole["version"]  # the same features, row for row: the same trees
