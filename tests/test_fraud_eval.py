"""`nova fraud evaluate` end to end: a small hand-labelled corpus through Kafka, the ingest workers' detector and
the embedded ClickHouse; the figures checked against what the designed stream must give, and recomputed here by
hand from the alerts and scores the workers stored."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO, run_nova

pytestmark = pytest.mark.integration

MS = pa.timestamp("ms", tz="UTC")
MINUTE = 60_000
AMSTERDAM, SYDNEY = (52.37, 4.90), (-33.87, 151.21)


def _corpus(start_ms: int) -> tuple[pa.Table, pa.Table]:
    """20 steady cards; one card seen in Sydney 10 min after Amsterdam; one card probed with 6 small amounts."""
    rows: list[dict[str, Any]] = []
    truth: dict[str, str] = {}  # transaction id → scenario of the frauds

    def add(card: str, t: int, amount: int, where: tuple[float, float], scenario: str | None = None) -> None:
        tid = f"00000000-0000-4000-8000-{len(rows):012d}"
        rows.append(
            {"transaction_id": tid, "event_time": t, "card_id": card, "account_id": f"a-{card}",
             "merchant_id": "M000001", "merchant_category": "5411", "amount_minor": amount, "currency": "EUR",
             "country": "NL", "channel": "POS", "status": "AUTHORIZED", "device_id": f"d-{card}",
             "latitude": where[0], "longitude": where[1]}
        )  # fmt: skip
        if scenario:
            truth[tid] = scenario

    for c in range(20):
        for k in range(5):  # 20 minutes apart: no burst, same place, a steady amount
            add(f"card-{c:02d}", start_ms + c * 1000 + k * 20 * MINUTE, 2500 + 10 * k, AMSTERDAM)
    for k in range(3):
        add("card-travel", start_ms + k * 20 * MINUTE, 2500, AMSTERDAM)
    add("card-travel", start_ms + 50 * MINUTE, 2500, SYDNEY, "impossible_travel")  # ~16,600 km in 10 min
    for k in range(6):  # small-amount count in 10 min: 1..6; the rule reaches full strength at 3
        add("card-probe", start_ms + 70 * MINUTE + k * 20_000, 50, AMSTERDAM, "card_testing")
    rows.sort(key=lambda r: r["event_time"])
    tx = pa.Table.from_pylist(rows)
    tx = tx.set_column(1, "event_time", tx["event_time"].cast(MS))
    ids = tx["transaction_id"].to_pylist()
    known = max(tx["event_time"].cast(pa.int64()).to_pylist()) + 60 * MINUTE
    labels = pa.table(
        {
            "transaction_id": ids,
            "is_fraud": [i in truth for i in ids],
            "scenario": [truth.get(i) for i in ids],
            # chargebacks an hour after the last transaction: fed back at the end, after every score
            "label_time": pa.array([known if i in truth else None for i in ids], pa.int64()).cast(MS),
        }
    )
    return tx, labels


def _stored(run_dir: Path, database: str) -> dict[str, list[dict[str, Any]]]:
    """The run's alerts and scores as the workers stored them (read in a child: chdb serves one path per process)."""
    code = f"""
import json, sys
from pipelines.clickhouse.store import open_store
from pipelines.config import load_settings
store = open_store(load_settings(), url="chdb://{run_dir / "chdb"}", database="{database}")
out = {{}}
for name, sql in (("alerts", "SELECT transaction_id, rules, toUnixTimestamp64Milli(alerted_at) AS a, "
                   "toUnixTimestamp64Milli(produced_at) AS p FROM alerts FINAL"),
                  ("scores", "SELECT transaction_id, score FROM fraud_scores")):
    out[name] = store.query_dicts(sql)
json.dump(out, sys.stdout, default=str)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def _drop_runs(state: Path) -> None:
    """The topics of every run under `state` (a kept run's, or a failed one's), and the state itself."""
    from pipelines import kafka
    from pipelines.config import load_settings

    settings = load_settings(REPO / "configs" / "nova.yaml", environ={})
    runs = state / "fraudeval"
    for run_id in [d.name for d in runs.iterdir()] if runs.exists() else []:
        topics = [f"eval-{run_id}.{t}" for t in ("transactions", "dlq", "labels", "alerts")]
        kafka.delete_topics(settings, topics, missing_ok=True)
    shutil.rmtree(state, ignore_errors=True)


def test_evaluate_a_hand_labelled_corpus_through_the_real_path(tmp_path: Path) -> None:
    start = (int(time.time() * 1000) - 2 * 86_400_000) // 3_600_000 * 3_600_000  # two days ago, on the hour
    tx, labels = _corpus(start)
    pq.write_table(tx, tmp_path / "tx.parquet")
    pq.write_table(labels, tmp_path / "labels.parquet")
    state = tmp_path / "state"
    env = {"NOVA_STACK__STATE_DIR": str(state)}
    report = tmp_path / "eval.html"
    try:
        result = run_nova(
            "fraud", "evaluate", "--transactions", str(tmp_path / "tx.parquet"),
            "--labels", str(tmp_path / "labels.parquet"), "--json", "--keep", "--report", str(report),
            env=env, timeout=300,
        )  # fmt: skip
        data = json.loads(result.stdout)
        run = data["run"]
        assert run["corpus_rows"] == 110 and run["corpus_frauds"] == 7 and data["not_scored"] == 0
        assert data["splits"]["all"]["labels_fed"] == 7
        # what the designed stream must give: the jump to Sydney and probes 3–6 alert, nothing legit does
        assert data["per_scenario"]["impossible_travel"]["recall"] == 1.0
        assert data["per_scenario"]["card_testing"]["alerted"] == 4
        assert data["per_scenario"]["card_testing"]["rule_named"] == 1.0
        assert data["recall"] == pytest.approx(5 / 7) and data["precision"] == 1.0
        assert data["episodes"] == 2 and data["episodes_detected"] == 2

        # the same figures by hand, from what the workers wrote
        stored = _stored(state / "fraudeval" / run["run_id"], run["database"])
        ids, flags = labels["transaction_id"].to_pylist(), labels["is_fraud"].to_pylist()
        fraud = {t for t, f in zip(ids, flags, strict=True) if f}
        alerts = {a["transaction_id"]: a for a in stored["alerts"]}
        assert len(stored["scores"]) == 110
        hits = fraud & set(alerts)
        assert data["recall"] == pytest.approx(len(hits) / len(fraud))
        assert data["precision"] == pytest.approx(len(hits) / len(alerts))
        in_time = {t for t in hits if int(alerts[t]["a"]) - int(alerts[t]["p"]) <= 10_000}
        assert data["recall_within_10s"] == pytest.approx(len(in_time) / len(fraud))
        latencies = sorted(int(a["a"]) - int(a["p"]) for a in alerts.values())
        assert data["alert_latency_ms"]["max"] == latencies[-1] >= 0
        score = {s["transaction_id"]: float(s["score"]) for s in stored["scores"]}
        pos = [score[t] for t in fraud]
        neg = [v for t, v in score.items() if t not in fraud]
        pairs = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
        assert data["roc_auc"] == pytest.approx(pairs / (len(pos) * len(neg)))
        # AP as a step function over the distinct score thresholds: Σ (recall gained) × precision at that threshold
        ap, seen_tp, seen = 0.0, 0, 0
        for threshold in sorted(set(score.values()), reverse=True):
            at = [t for t, v in score.items() if v == threshold]
            seen += len(at)
            gained = sum(1 for t in at if t in fraud)
            seen_tp += gained
            ap += gained / len(fraud) * (seen_tp / seen)
        assert data["average_precision"] == pytest.approx(ap)
        html = report.read_text()
        assert run["run_id"] in html and "impossible_travel" in html
    finally:
        _drop_runs(state)


def test_alerts_do_not_depend_on_the_replay_speed(tmp_path: Path) -> None:
    """Merchant risk is read from what is stored: fast or slow, the replay must give the same alerts."""
    state = tmp_path / "state"
    env = {"NOVA_STACK__STATE_DIR": str(state)}
    run_nova(
        "generate", "--count", "4000", "--fraud-rate", "0.03", "--spread-days", "6", "--seed", "5", "--cards", "300",
        "--scenario", "compromised_merchant=3", "--scenario", "amount_spike=1", "--label-delay", "1d",
        "--labels-out", str(tmp_path / "labels.parquet"), "--out", str(tmp_path / "tx.parquet"), env=env,
    )  # fmt: skip
    alerted: list[dict[str, list[str]]] = []
    try:
        for rate in (None, "800"):  # without the step barriers: 79 and 93 alerts; with them 102 and 102
            result = run_nova(
                "fraud", "evaluate", "--transactions", str(tmp_path / "tx.parquet"),
                "--labels", str(tmp_path / "labels.parquet"), "--json", "--keep",
                *(("--rate", rate) if rate else ()), env=env, timeout=600,
            )  # fmt: skip
            run = json.loads(result.stdout)["run"]
            stored = _stored(state / "fraudeval" / run["run_id"], run["database"])
            alerted.append({a["transaction_id"]: sorted(a["rules"]) for a in stored["alerts"]})
        fast, slow = alerted
        by_merchant = [t for t, rules in slow.items() if "compromised_merchant" in rules]
        assert by_merchant, "the corpus must exercise merchant risk for this test to mean anything"
        assert set(fast) == set(slow), f"{len(set(fast) ^ set(slow))} alerts differ between the two speeds"
        assert fast == slow
    finally:
        _drop_runs(state)


def _generated(tmp_path: Path, *, seed: int) -> tuple[Path, dict[str, str]]:
    """12,000 labelled transactions over 4 days (2 % fraud, labels 12 h late) in tmp_path; the state dir and env."""
    state = tmp_path / "state"
    env = {"NOVA_STACK__STATE_DIR": str(state)}
    run_nova(
        "generate", "--count", "12000", "--fraud-rate", "0.02", "--spread-days", "4", "--seed", str(seed),
        "--label-delay", "12h", "--labels-out", str(tmp_path / "labels.parquet"), "--out", str(tmp_path / "tx.parquet"),
        env=env,
    )  # fmt: skip
    return state, env


@pytest.mark.long
def test_train_days_trains_on_the_first_days_and_judges_the_rest(tmp_path: Path) -> None:
    state, env = _generated(tmp_path, seed=3)
    try:
        result = run_nova(
            "fraud", "evaluate", "--transactions", str(tmp_path / "tx.parquet"),
            # 3 UTC days from the first day's midnight: 2.0–3.0 days of a corpus anchored at now, whatever the
            # hour (--train-days 2 left only 1.0 day at 23:59, before the first fraud's label was known)
            "--labels", str(tmp_path / "labels.parquet"), "--train-days", "3", "--json", env=env, timeout=900,
        )  # fmt: skip
        data = json.loads(result.stdout)
        train, test = data["splits"]["train"], data["splits"]["test"]
        assert train["model"] is None and test["model"] == data["run"]["model_trained"]
        assert train["transactions"] + test["transactions"] == 12000 == data["run"]["corpus_rows"]
        assert data["run"]["judged"] == "test" and data["recall"] == test["recall"]
        assert train["frauds"] > 0 and test["frauds"] > 0 and test["roc_auc"] is not None
        from pipelines.detect.model import FraudModel

        model = FraudModel.load(data["run"]["model_trained"])
        # trained on the first days only, with the labels known by then (12 h late: the last half day unknown,
        # so left out of training rather than taught as legitimate)
        assert 0 < model.summary["frauds"] < train["frauds"]
        assert model.summary["label_delay_ms"] == data["run"]["train_label_delay_ms"] == 12 * 3_600_000
    finally:
        _drop_runs(state)


def test_labels_retrain_the_model_as_they_arrive_and_the_whole_corpus_is_judged(tmp_path: Path) -> None:
    state, env = _generated(tmp_path, seed=5)
    try:
        result = run_nova(
            "fraud", "evaluate", "--transactions", str(tmp_path / "tx.parquet"), "--labels",
            str(tmp_path / "labels.parquet"), "--retrain-every", "1d", "--json", env=env, timeout=900,
        )  # fmt: skip
        data = json.loads(result.stdout)
        run, splits = data["run"], data["splits"]
        models = run["models"]
        # 240 frauds over 4-5 UTC days, known 12 h late: enough for a model at the first midnights
        assert len(models) >= 2 and run["retrain_every_ms"] == 86_400_000
        parts = [splits[f"part {k + 1}"] for k in range(len(models) + 1)]
        assert set(splits) == {"all", *(f"part {k + 1}" for k in range(len(parts)))}
        # the parts tile the corpus; the first runs rules only, each later one the model of its boundary
        assert parts[0]["rows"][0] == 0 and parts[-1]["rows"][1] == 12000 == data["transactions"]
        assert all(a["rows"][1] == b["rows"][0] for a, b in itertools.pairwise(parts))
        assert parts[0]["model"] is None and parts[0]["from_ms"] is None
        for part, model in zip(parts[1:], models, strict=True):
            assert part["model"] == model["path"] and part["from_ms"] == model["cutoff_ms"]
        assert run["judged"] == "all" and data["recall"] == splits["all"]["recall"]
        labels = pq.read_table(tmp_path / "labels.parquet").to_pylist()
        tx = pq.read_table(tmp_path / "tx.parquet", columns=["transaction_id", "event_time"]).to_pylist()
        when = {r["transaction_id"]: r["event_time"].timestamp() * 1000 for r in tx}
        from pipelines.detect.model import FraudModel

        for model in models:
            cutoff, delay = model["cutoff_ms"], model["label_delay_ms"]
            assert delay == 12 * 3_600_000
            # what it could know at its cutoff: the frauds labelled by then, among the rows of the last 12 h before
            expected = sum(
                1
                for r in labels
                if r["is_fraud"] and r["label_time"].timestamp() * 1000 <= cutoff
                and when[r["transaction_id"]] <= cutoff - delay
            )  # fmt: skip
            saved = FraudModel.load(model["path"])
            assert model["frauds"] == saved.summary["frauds"] == expected >= 20
        assert [m["frauds"] for m in models] == sorted(m["frauds"] for m in models)
    finally:
        _drop_runs(state)
