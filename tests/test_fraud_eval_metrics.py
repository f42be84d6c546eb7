"""The evaluation's figures on a hand-labelled stream whose right answers are worked out by hand here."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipelines.fraudeval.metrics import DAY_MS, Outcomes, compute_figures

D0 = 1_700_006_400_000 // DAY_MS * DAY_MS  # midnight UTC
D1 = D0 + DAY_MS
NAN = math.nan
# card, event time, fraud, scenario, score, alerted, produce→alert ms, rules
STREAM = [
    ("A", D0 + 1_000, True, "card_testing", 0.90, True, 500.0, ("card_testing",)),
    ("A", D0 + 61_000, True, "card_testing", 0.80, True, 12_000.0, ("card_testing", "new_device")),
    ("A", D0 + 90_000, False, "", 0.10, False, NAN, ()),
    ("B", D0 + 5_000, False, "", 0.75, True, 300.0, ("amount_spike",)),  # a false positive
    ("B", D1 + 5_000, True, "amount_spike", 0.60, False, NAN, ()),  # a miss
    ("C", D1 + 7_000, True, "amount_spike", 0.95, True, 200.0, ("amount_spike",)),
    ("C", D1 + 9_000, False, "", 0.20, False, NAN, ()),
    ("D", D1 + 9_500, False, "", 0.30, False, NAN, ()),
    ("D", D0 + 9_500, False, "", NAN, False, NAN, ()),  # dead-lettered: never scored
    ("A", D1 + 1_000, False, "", 0.05, False, NAN, ()),
    ("A", D0 + 0, True, "card_testing", 0.50, False, NAN, ()),  # the episode's first fraud, not alerted
]


def _outcomes(stream: list[tuple]) -> Outcomes:  # type: ignore[type-arg]
    cols = list(zip(*stream, strict=True))
    return Outcomes(
        transaction_id=np.array([f"t{i}" for i in range(len(stream))], dtype=object),
        card_id=np.array(cols[0], dtype=object),
        event_time_ms=np.array(cols[1], dtype=np.int64),
        is_fraud=np.array(cols[2], dtype=bool),
        scenario=np.array(cols[3], dtype=object),
        score=np.array(cols[4], dtype=np.float64),
        alerted=np.array(cols[5], dtype=bool),
        latency_ms=np.array(cols[6], dtype=np.float64),
        rules=list(cols[7]),
    )


def test_figures_of_a_hand_labelled_stream() -> None:
    f = compute_figures(_outcomes(STREAM), k=2)
    # 5 frauds (rows 0, 1, 4, 5, 10); 4 alerts (0, 1, 3, 5), 3 of them fraud
    assert (f.frauds, f.alerts, f.not_scored) == (5, 4, 1)
    assert f.recall == pytest.approx(3 / 5)
    assert f.precision == pytest.approx(3 / 4)
    # within 10 s: rows 0 (500 ms) and 5 (200 ms); row 1 took 12 s
    assert f.recall_within_10s == pytest.approx(2 / 5)
    # ranking (never scored = 0): 5F .95, 0F .9, 1F .8, 3L .75, 4F .6, 10F .5, 7L .3, 6L .2, 2L .1, 9L .05, 8L 0
    # AP = mean precision at each fraud's rank = (1 + 1 + 1 + 4/5 + 5/6) / 5
    assert f.average_precision == pytest.approx((3 + 4 / 5 + 5 / 6) / 5)
    # AUC = fraud/legit pairs ordered right: rows 5, 0, 1 beat all 6 legit; 4 and 10 beat all but row 3
    assert f.roc_auc == pytest.approx((3 * 6 + 5 + 5) / 30)
    # card precision@2: day 0 cards by max score A .9 (fraud), B .75, D 0 → top 2 A, B: 1/2; A is found.
    # day 1 without A: C .95 (fraud), B .6 (fraud), D .3 → 2/2. Mean 0.75 over 2 days.
    assert f.card_precision_at_100 == pytest.approx(0.75) and f.days == 2
    # alert latencies 200, 300, 500, 12000: p50 400, p99 = 500 + 0.97 × 11500 (linear between ranks)
    assert f.alert_latency_ms.p50 == pytest.approx(400) and f.alert_latency_ms.p99 == pytest.approx(11_655)
    # episodes: A card_testing (rows 10, 0, 1), B amount_spike (4), C amount_spike (5)
    assert (f.episodes, f.episodes_detected) == (3, 2)
    # A: first fraud at D0+0, first alert on row 0 at D0+1000 with 500 ms latency; C: at once, 200 ms
    assert sorted(f.first_alert_delays_ms) == [200.0, 1_500.0]
    ct, spike = f.per_scenario["card_testing"], f.per_scenario["amount_spike"]
    assert (ct.frauds, ct.alerted, ct.attributed_alerts) == (3, 2, 2)
    assert ct.recall == pytest.approx(2 / 3) and ct.recall_within_10s == pytest.approx(1 / 3)
    assert ct.precision == 1.0 and ct.rule_named == 1.0
    # alerts naming amount_spike: rows 3 (legit) and 5 (fraud)
    assert (spike.frauds, spike.alerted, spike.attributed_alerts) == (2, 1, 2)
    assert spike.recall == 0.5 and spike.precision == 0.5 and spike.rule_named == 1.0
    assert (spike.episodes, spike.episodes_detected) == (2, 1)
    d = f.to_dict()
    assert list(d)[:8] == [
        "recall", "precision", "recall_within_10s", "average_precision", "roc_auc",
        "card_precision_at_100", "alert_latency_ms", "per_scenario",
    ]  # fmt: skip
    assert set(d["alert_latency_ms"]) >= {"p50", "p99"}


def test_the_figures_do_not_depend_on_row_order() -> None:
    rng = np.random.default_rng(7)
    shuffled = [STREAM[i] for i in rng.permutation(len(STREAM))]
    a, b = compute_figures(_outcomes(STREAM), k=2).to_dict(), compute_figures(_outcomes(shuffled), k=2).to_dict()
    assert a == b


def test_no_alerts_and_no_frauds_give_none_not_zero() -> None:
    legit = [row for row in STREAM if not row[2]]
    quiet = [(*row[:5], False, NAN, ()) for row in legit]
    f = compute_figures(_outcomes(quiet), k=2)
    assert f.recall is None and f.precision is None and f.average_precision is None and f.roc_auc is None
    assert f.card_precision_at_100 == 0.0 and f.alert_latency_ms.p50 is None and f.per_scenario == {}


def test_training_stops_the_longest_known_label_delay_before_the_cutoff() -> None:
    import pyarrow as pa

    from pipelines.fraudeval.corpus import Corpus
    from pipelines.fraudeval.run import training_label_delay

    day = 86_400_000
    t = np.array([0, 1, 2, 3, 4, 5], dtype=np.int64) * day
    corpus = Corpus(
        transactions=pa.table({"event_time": pa.array(t, pa.timestamp("ms", tz="UTC"))}),
        is_fraud=np.array([True, True, False, True, True, False]),
        scenario=np.array([""] * 6, dtype=object),
        # frauds known 2 d, 1 d, 3 d and 9 d after their events
        label_time_ms=np.array([2 * day, 2 * day, -1, 6 * day, 13 * day, -1], dtype=np.int64),
        unmatched_labels=0,
    )
    assert training_label_delay(corpus, 3 * day, None) == 2 * day  # known by day 3: delays 2 d and 1 d
    assert training_label_delay(corpus, 6 * day, None) == 3 * day  # the 9-day label is not known yet
    assert training_label_delay(corpus, 6 * day, 5 * day) == 5 * day  # --label-delay wins
    assert training_label_delay(corpus, day, None) is None  # nothing known yet: nothing to go by
