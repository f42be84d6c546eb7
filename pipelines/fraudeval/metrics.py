"""The figures of a fraud evaluation, from what the pipeline did to each labelled transaction.

Pure functions of numpy arrays (one element per transaction of the corpus), so a test can check
them on a hand-labelled stream whose right answers it works out by hand. Definitions:

- **recall**: frauds alerted / frauds; **precision**: alerted frauds / alerts (None without alerts);
- **recall within 10 s**: frauds whose alert was produced ≤ 10 s after the transaction was
  (alerted_at − produced_at, both wall clock) / frauds;
- **average precision** and **ROC AUC** of the score (scikit-learn), every transaction counted;
  one the detector never scored (dead-lettered) counts with score 0 and no alert;
- **card precision@k per day** (Le Borgne et al., *Reproducible Machine Learning for Credit Card
  Fraud Detection*, ch. 4): each UTC day of event time, the k cards with the highest max score
  that day, minus cards already found compromised on an earlier day; the share of them with a
  fraud that day, over k; averaged over the days;
- **alert latency**: alerted_at − produced_at of every alert, p50/p99;
- **episodes**: a card's fraud transactions of one scenario in event-time order, until the
  scenario changes; the delay to its first alert is the event time from the episode's first
  transaction to the first alerted one, plus that alert's produce→alert latency (how long the
  fraud ran before someone could act, had the corpus been live).

Per scenario, recall counts the scenario's frauds; precision counts the alerts attributed to it —
those naming a rule whose name contains the scenario's — that are fraud (of any scenario).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

WITHIN_S = 10.0
TOP_K = 100
DAY_MS = 86_400_000


@dataclass(frozen=True)
class Outcomes:
    """What happened to each transaction of a corpus (all arrays of one length, any order)."""

    transaction_id: np.ndarray  # object (str)
    card_id: np.ndarray  # object (str)
    event_time_ms: np.ndarray  # int64
    is_fraud: np.ndarray  # bool
    scenario: np.ndarray  # object (str; "" for legitimate ones)
    score: np.ndarray  # float64; NaN: never scored (e.g. dead-lettered)
    alerted: np.ndarray  # bool
    latency_ms: np.ndarray  # float64: alerted_at − produced_at of the alert; NaN without one
    rules: Sequence[tuple[str, ...]]  # the alert's rules (empty without one)

    def __len__(self) -> int:
        return len(self.transaction_id)

    def subset(self, mask: np.ndarray) -> Outcomes:
        """The transactions where `mask` holds (a split of the corpus)."""
        idx = np.flatnonzero(mask)
        return Outcomes(
            transaction_id=self.transaction_id[idx],
            card_id=self.card_id[idx],
            event_time_ms=self.event_time_ms[idx],
            is_fraud=self.is_fraud[idx],
            scenario=self.scenario[idx],
            score=self.score[idx],
            alerted=self.alerted[idx],
            latency_ms=self.latency_ms[idx],
            rules=[self.rules[int(i)] for i in idx],
        )


@dataclass(frozen=True)
class Percentiles:
    count: int
    p50: float | None
    p99: float | None
    max: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "p50": self.p50, "p99": self.p99, "max": self.max}


@dataclass(frozen=True)
class ScenarioFigures:
    frauds: int
    alerted: int
    recall: float | None
    recall_within_10s: float | None
    attributed_alerts: int  # alerts naming one of the scenario's rules
    precision: float | None  # of those, the share that are fraud
    rule_named: float | None  # alerted frauds of the scenario whose alert names its rule
    episodes: int
    episodes_detected: int
    first_alert_delay_ms: Percentiles

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "first_alert_delay_ms"}
        d["first_alert_delay_ms"] = self.first_alert_delay_ms.to_dict()
        return d


@dataclass(frozen=True)
class Figures:
    """Every figure of one evaluation (or of one split of it)."""

    transactions: int
    frauds: int
    alerts: int
    not_scored: int
    recall: float | None
    precision: float | None
    recall_within_10s: float | None
    average_precision: float | None
    roc_auc: float | None
    card_precision_at_100: float | None
    days: int
    alert_latency_ms: Percentiles
    episodes: int
    episodes_detected: int
    first_alert_delay_ms: Percentiles
    first_alert_delays_ms: list[float] = field(repr=False)  # every detected episode's delay (the report's chart)
    per_scenario: dict[str, ScenarioFigures]

    def to_dict(self) -> dict[str, Any]:
        """The `--json` shape: the issue's keys first, then the rest."""
        return {
            "recall": self.recall,
            "precision": self.precision,
            "recall_within_10s": self.recall_within_10s,
            "average_precision": self.average_precision,
            "roc_auc": self.roc_auc,
            "card_precision_at_100": self.card_precision_at_100,
            "alert_latency_ms": self.alert_latency_ms.to_dict(),
            "per_scenario": {name: s.to_dict() for name, s in self.per_scenario.items()},
            "transactions": self.transactions,
            "frauds": self.frauds,
            "alerts": self.alerts,
            "not_scored": self.not_scored,
            "days": self.days,
            "episodes": self.episodes,
            "episodes_detected": self.episodes_detected,
            "first_alert_delay_ms": self.first_alert_delay_ms.to_dict(),
        }


def ratio(numerator: int, denominator: int) -> float | None:
    """numerator / denominator, None when there is nothing to divide by (not 0: "no data" is not "bad")."""
    return numerator / denominator if denominator else None


def percentiles(values: np.ndarray) -> Percentiles:
    """p50/p99/max of the finite values (linear interpolation between ranks, numpy's default)."""
    v = values[np.isfinite(values)]
    if not len(v):
        return Percentiles(0, None, None, None)
    p50, p99 = np.percentile(v, [50, 99])
    return Percentiles(len(v), float(p50), float(p99), float(v.max()))


def ranking_scores(score: np.ndarray) -> np.ndarray:
    """Scores with the never-scored (NaN) transactions at 0: the detector said nothing about them."""
    return np.where(np.isnan(score), 0.0, score)


def average_precision(is_fraud: np.ndarray, score: np.ndarray) -> float | None:
    """scikit-learn's average precision of the score; None when the corpus has no fraud."""
    if not is_fraud.any():
        return None
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(is_fraud, ranking_scores(score)))


def roc_auc(is_fraud: np.ndarray, score: np.ndarray) -> float | None:
    """scikit-learn's ROC AUC of the score; None unless both classes occur."""
    if is_fraud.all() or not is_fraud.any():
        return None
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(is_fraud, ranking_scores(score)))


def card_precision_at_k(
    card_id: np.ndarray, event_time_ms: np.ndarray, is_fraud: np.ndarray, score: np.ndarray, *, k: int = TOP_K
) -> tuple[float | None, int]:
    """Card precision@k per day averaged over the days (see the module docstring), and the number of days.

    Ties in a day's max score are broken by card id, so the figure does not depend on row order.
    """
    if not len(card_id):
        return None, 0
    cards, card = np.unique(card_id.astype(str), return_inverse=True)
    day = event_time_ms // DAY_MS
    days, day_index = np.unique(day, return_inverse=True)
    group, slot = np.unique(day_index.astype(np.int64) * len(cards) + card, return_inverse=True)
    best = np.full(len(group), -np.inf)
    np.maximum.at(best, slot, ranking_scores(score))
    fraud = np.zeros(len(group), dtype=bool)
    np.logical_or.at(fraud, slot, is_fraud.astype(bool))
    group_day, group_card = group // len(cards), group % len(cards)
    found = np.zeros(len(cards), dtype=bool)
    per_day: list[float] = []
    for d in range(len(days)):
        mine = np.flatnonzero((group_day == d) & ~found[group_card])
        # card ids sort like the cards' codes (np.unique sorts), so ties go to the smaller id
        ranked = mine[np.lexsort((group_card[mine], -best[mine]))][:k]
        hits = group_card[ranked[fraud[ranked]]]
        found[hits] = True
        per_day.append(len(hits) / k)
    return float(np.mean(per_day)), len(per_day)


def episodes(card_id: np.ndarray, event_time_ms: np.ndarray, is_fraud: np.ndarray, scenario: np.ndarray) -> np.ndarray:
    """An episode number for every fraud transaction (-1 for legitimate ones); see the module docstring."""
    out = np.full(len(card_id), -1, dtype=np.int64)
    frauds = np.flatnonzero(is_fraud)
    if not len(frauds):
        return out
    order = frauds[np.lexsort((event_time_ms[frauds], card_id[frauds].astype(str)))]
    episode = -1
    previous: tuple[str, str] | None = None
    for i in order:
        current = (str(card_id[i]), str(scenario[i]))
        if current != previous:
            episode += 1
            previous = current
        out[i] = episode
    return out


def _first_alert_delays(o: Outcomes, episode: np.ndarray) -> tuple[int, dict[int, float]]:
    """(episodes, {episode: delay to its first alert in ms}) for the detected ones."""
    n = int(episode.max()) + 1 if len(episode) and episode.max() >= 0 else 0
    start = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    members = episode >= 0
    np.minimum.at(start, episode[members], o.event_time_ms[members])
    delays: dict[int, float] = {}
    alerted = np.flatnonzero(members & o.alerted)
    for i in alerted[np.argsort(o.event_time_ms[alerted], kind="stable")]:
        e = int(episode[i])
        if e in delays:
            continue
        latency = float(o.latency_ms[i]) if np.isfinite(o.latency_ms[i]) else 0.0
        delays[e] = float(o.event_time_ms[i] - start[e]) + latency
    return n, delays


def _attributed(rules: Sequence[tuple[str, ...]], scenario: str) -> np.ndarray:
    return np.fromiter((any(scenario in r for r in fired) for fired in rules), dtype=bool, count=len(rules))


def compute_figures(o: Outcomes, *, k: int = TOP_K, within_s: float = WITHIN_S) -> Figures:
    """Every figure of the module docstring for the transactions of `o`."""
    fraud, alerted = o.is_fraud.astype(bool), o.alerted.astype(bool)
    in_time = alerted & (o.latency_ms <= within_s * 1000)
    cp, days = card_precision_at_k(o.card_id, o.event_time_ms, fraud, o.score, k=k)
    episode = episodes(o.card_id, o.event_time_ms, fraud, o.scenario)
    n_episodes, delays = _first_alert_delays(o, episode)
    per_scenario: dict[str, ScenarioFigures] = {}
    for name in sorted({str(s) for s in o.scenario[fraud]}):
        mine = fraud & (o.scenario == name)
        attributed = alerted & _attributed(o.rules, name)
        mine_episodes = np.unique(episode[mine])
        mine_delays = np.array([delays[int(e)] for e in mine_episodes if int(e) in delays], dtype=np.float64)
        per_scenario[name] = ScenarioFigures(
            frauds=int(mine.sum()),
            alerted=int((mine & alerted).sum()),
            recall=ratio(int((mine & alerted).sum()), int(mine.sum())),
            recall_within_10s=ratio(int((mine & in_time).sum()), int(mine.sum())),
            attributed_alerts=int(attributed.sum()),
            precision=ratio(int((attributed & fraud).sum()), int(attributed.sum())),
            rule_named=ratio(int((mine & attributed).sum()), int((mine & alerted).sum())),
            episodes=len(mine_episodes),
            episodes_detected=len(mine_delays),
            first_alert_delay_ms=percentiles(mine_delays),
        )
    all_delays = np.array(sorted(delays.values()), dtype=np.float64)
    return Figures(
        transactions=len(o),
        frauds=int(fraud.sum()),
        alerts=int(alerted.sum()),
        not_scored=int(np.isnan(o.score).sum()),
        recall=ratio(int((fraud & alerted).sum()), int(fraud.sum())),
        precision=ratio(int((fraud & alerted).sum()), int(alerted.sum())),
        recall_within_10s=ratio(int((fraud & in_time).sum()), int(fraud.sum())),
        average_precision=average_precision(fraud, o.score),
        roc_auc=roc_auc(fraud, o.score),
        card_precision_at_100=cp,
        days=days,
        alert_latency_ms=percentiles(o.latency_ms[alerted]),
        episodes=n_episodes,
        episodes_detected=len(delays),
        first_alert_delay_ms=percentiles(all_delays),
        first_alert_delays_ms=all_delays.tolist(),
        per_scenario=per_scenario,
    )
