"""`retrain_plan`: where `nova fraud evaluate` retrains the model on the labels known so far (no services)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipelines.fraudeval.corpus import Corpus
from pipelines.fraudeval.run import RETRAIN_MIN_FRAUDS, retrain_plan

DAY = 86_400_000
HOUR = 3_600_000
START = 1_790_000_000_000 // DAY * DAY  # a UTC midnight


def _corpus(days: int, frauds_per_day: int, *, delay_ms: int, rows_per_day: int = 200) -> Corpus:
    """`rows_per_day` rows spread over each day, the first `frauds_per_day` of them frauds known `delay_ms` later."""
    t = np.concatenate([START + d * DAY + np.arange(rows_per_day) * (DAY // rows_per_day) for d in range(days)])
    fraud = np.tile(np.arange(rows_per_day) < frauds_per_day, days)
    return Corpus(
        transactions=pa.table({"event_time": pa.array(t + HOUR, pa.int64()).cast(pa.timestamp("ms", tz="UTC"))}),
        is_fraud=fraud,
        scenario=np.where(fraud, "x", "").astype(object),
        label_time_ms=np.where(fraud, t + HOUR + delay_ms, -1),
        unmatched_labels=0,
    )


def test_the_first_model_waits_for_enough_known_frauds_then_retrains_often_then_on_schedule() -> None:
    corpus = _corpus(60, 5, delay_ms=7 * DAY)
    plan = retrain_plan(corpus, 7 * DAY, None)
    days = [(cutoff - START) // DAY for _, cutoff, _ in plan]
    # labels 7 days late: at midnight D the frauds of the rows up to D − 7 are known, 5 a day; 20 on day 11
    assert days[0] == 7 + RETRAIN_MIN_FRAUDS // 5
    # then each time the known frauds have grown 1.5-fold (20 → 30 → 45 → 70: 67.5 needed), or a week
    # passed, whichever comes first (day 28: both); from then on weekly, as the growth slows
    assert days[:5] == [11, 13, 16, 21, 28]
    assert days[5:] == [35, 42, 49, 56]
    assert all(delay == 7 * DAY for _, _, delay in plan)
    # each part starts at the first row at or after its boundary
    t = corpus.event_time_ms
    for first, cutoff, _ in plan:
        assert t[first] >= cutoff > t[first - 1]


def test_a_label_delay_overrides_the_label_times() -> None:
    corpus = _corpus(30, 5, delay_ms=20 * DAY)  # the file says 20 days late...
    plan = retrain_plan(corpus, 7 * DAY, 2 * DAY)  # ...but --label-delay 2d feeds them 2 days late
    assert (plan[0][1] - START) // DAY == 2 + RETRAIN_MIN_FRAUDS // 5
    assert all(delay == 2 * DAY for _, _, delay in plan)


def test_no_model_without_enough_frauds_or_within_a_short_corpus() -> None:
    assert retrain_plan(_corpus(60, 0, delay_ms=DAY), 7 * DAY, None) == []
    few = _corpus(60, 1, delay_ms=DAY)
    keep = np.zeros(len(few), dtype=bool)
    keep[np.flatnonzero(few.is_fraud)[: RETRAIN_MIN_FRAUDS - 1]] = True  # one fraud short, ever
    few = Corpus(few.transactions, keep, few.scenario, np.where(keep, few.label_time_ms, -1), 0)
    assert retrain_plan(few, 7 * DAY, None) == []
    assert retrain_plan(_corpus(3, 5, delay_ms=7 * DAY), 7 * DAY, None) == []  # no label known inside it
