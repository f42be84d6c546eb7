"""Fraud episodes injected into habitual traffic: five named scenarios, ground truth kept apart.

Each episode is a short sequence of transactions on one card (many cards for a compromised
merchant), placed in event time among the card's legit history, so that it is only
recognisable against that history:

- ``card_testing``: a stolen card number tried with 6-20 tiny online authorisations (0.50-4 EUR)
  within minutes, a third of them declined, from a device and IP the card never used;
- ``takeover_burst``: after an account takeover, 3-8 high-value online purchases (3-10x the
  card's usual amount) within an hour, from a new device and IP;
- ``impossible_travel``: a cloned card paying in person in a country ≥ 1,500 km from where the
  card paid in person 5-55 minutes earlier (positions near the merchants, so consistent with
  each country), then 0-3 more payments there;
- ``amount_spike``: one (sometimes two) payment of 12-40x the card's usual amount, at a familiar
  merchant or a high-value web shop, from the card's own device: only the amount is odd;
- ``compromised_merchant``: a colluding or breached merchant through which 15-50 cards are
  charged over 5-12 days (2-5x their usual amount), from the fraud ring's one device; before
  labels arrive it looks like ordinary spend, after them the merchant's fraud share gives it away.

The share of fraudulent transactions is exact (largest-remainder rounding over the scenarios'
weights); episodes are whole except the last of each scenario, cut to hit the count.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

import numpy as np

from pipelines.errors import UsageError
from pipelines.synth.habits import CONTACTLESS, ECOM, MOTO, POS, HabitualTraffic, Rows
from pipelines.synth.model import _DIURNAL, STATUSES

SCENARIOS: Final = ("card_testing", "takeover_burst", "impossible_travel", "amount_spike", "compromised_merchant")
DEFAULT_WEIGHTS: Final = dict.fromkeys(SCENARIOS, 1.0)
DEFAULT_LABEL_DELAY_MS: Final = (86_400_000, 10 * 86_400_000)  # chargebacks: 1 to 10 days later
IMPOSSIBLE_TRAVEL_MIN_KM: Final = 1500.0
_HIGH_VALUE_MCC = ("5732", "5651", "5311", "5999", "4511", "7011")
_AUTHORIZED, _CAPTURED, _DECLINED = (STATUSES.index(s) for s in ("AUTHORIZED", "CAPTURED", "DECLINED"))
_MINUTE = 60_000
_HOUR = 3_600_000
_DAY = 86_400_000


@dataclass(frozen=True)
class FraudSpec:
    """How much fraud, of which kinds, and how late its labels arrive."""

    rate: float
    weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    label_delay_ms: tuple[int, int] = DEFAULT_LABEL_DELAY_MS  # uniform in [lo, hi]

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate < 0.5:
            raise UsageError(f"the fraud rate must be in [0, 0.5), got {self.rate}", hint="e.g. --fraud-rate 0.01")
        unknown = sorted(set(self.weights) - set(SCENARIOS))
        if unknown:
            raise UsageError(f"unknown fraud scenario {unknown[0]!r}", hint=f"use one of {', '.join(SCENARIOS)}")
        if any(w < 0 for w in self.weights.values()) or (self.rate > 0 and not sum(self.weights.values()) > 0):
            raise UsageError("scenario weights must be non-negative, and one of them positive")
        lo, hi = self.label_delay_ms
        if not 0 <= lo <= hi:
            raise UsageError(f"the label delay range must satisfy 0 ≤ low ≤ high, got {lo} ms..{hi} ms")

    def targets(self, count: int) -> dict[str, int]:
        """Fraudulent transactions per scenario for a corpus of `count`: exact, summing to round(rate * count)."""
        total = round(self.rate * count)
        w = np.array([float(self.weights.get(s, 0.0)) for s in SCENARIOS])
        if total == 0 or w.sum() == 0:
            return dict.fromkeys(SCENARIOS, 0)
        share = w / w.sum() * total
        base = np.floor(share).astype(np.int64)
        rest = total - int(base.sum())
        base[np.argsort(-(share - base), kind="stable")[:rest]] += 1
        return {s: int(n) for s, n in zip(SCENARIOS, base.tolist(), strict=True)}


def parse_scenarios(items: list[str]) -> dict[str, float]:
    """`NAME=WEIGHT` options → weights (scenarios not named: 0). No options: every scenario, equally."""
    if not items:
        return dict(DEFAULT_WEIGHTS)
    weights = dict.fromkeys(SCENARIOS, 0.0)
    for item in items:
        name, sep, number = item.partition("=")
        name = name.strip().replace("-", "_")
        if name not in SCENARIOS:
            raise UsageError(f"--scenario {item!r}: unknown scenario", hint=f"use one of {', '.join(SCENARIOS)}")
        try:
            weights[name] += float(number) if sep else 1.0
        except ValueError:
            raise UsageError(f"--scenario {item!r}: {number!r} is not a number") from None
    return weights


class FraudInjector:
    """Makes each scenario's rows for a `HabitualTraffic` and its legit rows."""

    def __init__(self, traffic: HabitualTraffic, legit: Rows, seed: int) -> None:
        self.t = traffic
        self.legit = legit
        self.rng = np.random.default_rng([seed, 0x66726175])  # "frau"
        self._episodes = 0
        t = traffic
        spread = t.end_ms - t.start_ms
        # episodes start once cards have some history, and end inside the window
        self.first_ms = t.start_ms + int(0.3 * spread)
        self.last_ms = t.end_ms - 3 * _HOUR
        if spread < _DAY:
            raise UsageError(
                "labelled traffic needs a window of a day or more for the cards to have a history",
                hint="give --spread-days 1 or more (14-28 for an evaluation corpus)",
            )
        activity = np.diff(np.concatenate([[0.0], t.population.cdf]))
        self._activity = activity / activity.sum()
        self._used = np.zeros(t.n_cards, dtype=bool)
        cat_names = t._cat_names
        high = np.isin(cat_names[t._m_cat], np.array(_HIGH_VALUE_MCC, dtype=object))
        self._high_ecom_cdf = _cdf(np.where(high & t.m_ecom, t.m_zipf, 0.0))
        self._ecom_cdf = _cdf(np.where(t.m_ecom, t.m_zipf, 0.0))

    def inject(self, targets: Mapping[str, int]) -> Rows:
        makers = {
            "card_testing": self.card_testing,
            "takeover_burst": self.takeover_burst,
            "impossible_travel": self.impossible_travel,
            "amount_spike": self.amount_spike,
            "compromised_merchant": self.compromised_merchant,
        }
        parts = [makers[name](n) for name, n in targets.items() if n > 0]
        return Rows.concat(parts) if parts else self.legit.take(np.zeros(0, dtype=np.int64))

    def _sizes(self, n: int, draw: np.ndarray) -> np.ndarray:
        """Episode sizes drawn in `draw`, as many as needed for `n` rows, the last one cut to fit."""
        sizes = draw.astype(np.int64)
        while sizes.sum() < n:
            sizes = np.concatenate([sizes, sizes])
        cum = np.cumsum(sizes)
        k = int(np.searchsorted(cum, n, side="left")) + 1
        sizes = sizes[:k].copy()
        sizes[-1] -= int(cum[k - 1] - n)
        return sizes

    def _victims(self, k: int) -> np.ndarray:
        """`k` distinct cards not used by another episode, the busier ones more likely (they have history)."""
        p = np.where(self._used, 0.0, self._activity)
        free = int((p > 0).sum())
        if free < k:
            raise UsageError(
                f"{k} fraud episodes need {k} distinct cards, only {free} are left",
                hint="lower --fraud-rate or use more cards (--cards)",
            )
        cards = self.rng.choice(self.t.n_cards, size=k, replace=False, p=p / p.sum())
        self._used[cards] = True
        return cards

    def _rows(
        self,
        scenario: str,
        sizes: np.ndarray,
        *,
        card: np.ndarray,
        merchant: np.ndarray,
        time_ms: np.ndarray,
        amount_eur: np.ndarray,
        channel: np.ndarray,
        status: np.ndarray,
        device: np.ndarray,
        ip: np.ndarray,
    ) -> Rows:
        t, rng = self.t, self.rng
        n = len(card)
        episode = np.repeat(np.arange(self._episodes, self._episodes + len(sizes)), sizes)
        self._episodes += len(sizes)
        cat = t.category(merchant)
        currency = t._m_currency[merchant]
        lat, lon = t.position(merchant, channel, rng)
        return Rows(
            card=card, merchant=merchant, time_ms=np.minimum(time_ms.astype(np.int64), t.end_ms - 1),
            amount_minor=t.amount_minor(cat, currency, amount_eur, rng), channel=channel, status=status,
            currency=currency, device=device, ip=ip, lat=lat, lon=lon,
            scenario=np.full(n, SCENARIOS.index(scenario), dtype=np.int8), episode=episode,
        )  # fmt: skip

    def _offsets(self, sizes: np.ndarray, gap_ms: np.ndarray) -> np.ndarray:
        """Per row: time since its episode's first row, summing the gaps before it (an episode's first gap: none)."""
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        gap = gap_ms.astype(np.float64).copy()
        gap[starts] = 0.0
        cum = np.cumsum(gap)
        offsets: np.ndarray = cum - np.repeat(cum[starts], sizes)
        return offsets

    def _daytime(self, lo: np.ndarray | int, hi: np.ndarray | int, n: int) -> np.ndarray:
        """n times uniform in [lo, hi), thinned by the hour-of-day profile of legit traffic: people, not bots.

        (Card testing is scripted and keeps uniform times; every other scenario has a person behind it.)
        """
        lo_a = np.broadcast_to(np.asarray(lo, dtype=np.float64), (n,))
        hi_a = np.broadcast_to(np.asarray(hi, dtype=np.float64), (n,))
        accept = _DIURNAL / _DIURNAL.max()
        times = lo_a + self.rng.random(n) * (hi_a - lo_a)
        for _ in range(8):
            redo = self.rng.random(n) > accept[(times // _HOUR).astype(np.int64) % 24]
            if not redo.any():
                break
            times = np.where(redo, lo_a + self.rng.random(n) * (hi_a - lo_a), times)
        out: np.ndarray = times.astype(np.int64)
        return out

    def _status(self, n: int, declined: float, captured: float = 0.1) -> np.ndarray:
        r = self.rng.random(n)
        return np.where(r < declined, _DECLINED, np.where(r < declined + captured, _CAPTURED, _AUTHORIZED))

    def _per_episode(self, values: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        out: np.ndarray = np.repeat(values, sizes)
        return out

    def card_testing(self, n: int) -> Rows:
        rng = self.rng
        sizes = self._sizes(n, rng.integers(6, 21, n // 6 + 8))
        e = len(sizes)
        card = self._per_episode(self._victims(e), sizes)
        t0 = rng.integers(self.first_ms, self.last_ms, e)
        time_ms = self._per_episode(t0, sizes) + self._offsets(sizes, 4_000 + rng.exponential(30_000, n))
        m1 = _pick(self._ecom_cdf, rng.random(e))
        m2 = _pick(self._ecom_cdf, rng.random(e))
        merchant = np.where(rng.random(n) < 0.6, self._per_episode(m1, sizes), self._per_episode(m2, sizes))
        channel = np.where(rng.random(n) < 0.9, ECOM, MOTO)
        amount = np.round(rng.uniform(0.5, 4.0, n), 2)
        device = self._per_episode(self.t.fresh_devices(e), sizes)
        device[channel != ECOM] = -1
        ip = self._per_episode(self.t.fresh_ips(e), sizes)
        ip[channel != ECOM] = -1
        return self._rows(
            "card_testing", sizes, card=card, merchant=merchant, time_ms=time_ms, amount_eur=amount,
            channel=channel, status=self._status(n, 0.35, 0.0), device=device, ip=ip,
        )  # fmt: skip

    def takeover_burst(self, n: int) -> Rows:
        rng = self.rng
        sizes = self._sizes(n, rng.integers(3, 9, n // 3 + 8))
        e = len(sizes)
        card = self._per_episode(self._victims(e), sizes)
        t0 = self._daytime(self.first_ms, self.last_ms, e)
        offsets = self._offsets(sizes, _MINUTE + rng.exponential(7 * _MINUTE, n))
        span = np.maximum.reduceat(offsets, np.concatenate([[0], np.cumsum(sizes)[:-1]]))
        squeeze = np.minimum(1.0, 55 * _MINUTE / np.maximum(span, 1.0))  # the whole burst within the hour
        time_ms = self._per_episode(t0, sizes) + offsets * self._per_episode(squeeze, sizes)
        merchant = _pick(self._high_ecom_cdf, rng.random(n))
        amount = self.t.typical_eur(card, self.t.category(merchant)) * rng.uniform(3.0, 10.0, n)
        device = self._per_episode(self.t.fresh_devices(e), sizes)
        ip = self._per_episode(self.t.fresh_ips(e), sizes)
        return self._rows(
            "takeover_burst", sizes, card=card, merchant=merchant, time_ms=time_ms, amount_eur=amount,
            channel=np.full(n, ECOM), status=self._status(n, 0.1), device=device, ip=ip,
        )  # fmt: skip

    def impossible_travel(self, n: int) -> Rows:
        t, rng, legit = self.t, self.rng, self.legit
        sizes = self._sizes(n, rng.choice(np.array([1, 2, 3, 4]), n + 8, p=[0.35, 0.3, 0.2, 0.15]))
        e = len(sizes)
        # anchors: legit in-person payments of cards not used yet, inside the episode window
        located = np.flatnonzero(
            ((legit.channel == POS) | (legit.channel == CONTACTLESS))
            & (legit.time_ms >= self.first_ms) & (legit.time_ms < self.last_ms)
            & ~self._used[legit.card]
        )  # fmt: skip
        candidates = rng.permutation(located)
        _, first = np.unique(legit.card[candidates], return_index=True)
        candidates = candidates[np.sort(first)]  # one anchor per card
        anchor_place = t.m_place[legit.merchant[candidates]]
        # city centres 100 km further apart than promised: merchants sit up to a few tens of km from them
        far = (t.place_distance[anchor_place] >= IMPOSSIBLE_TRAVEL_MIN_KM + 100) & (
            t.place_country[None, :] != t.place_country[anchor_place][:, None]
        ) & t.present_index.has[None, :]  # fmt: skip
        candidates, far = candidates[far.any(axis=1)], far[far.any(axis=1)]
        if len(candidates) < e:
            raise UsageError(
                f"impossible_travel needs {e} cards with an in-person payment to start from, found {len(candidates)}",
                hint="lower --fraud-rate or the scenario's weight (--scenario), or generate more events; it also "
                f"needs merchants in countries ≥ {IMPOSSIBLE_TRAVEL_MIN_KM:,.0f} km apart with known positions",
            )
        anchors, far = candidates[:e], far[:e]
        self._used[legit.card[anchors]] = True
        dest = np.argmax(rng.random(far.shape) * far, axis=1)
        card = self._per_episode(legit.card[anchors], sizes)
        t0 = legit.time_ms[anchors] + rng.integers(5 * _MINUTE, 55 * _MINUTE, e)
        time_ms = self._per_episode(t0, sizes) + self._offsets(sizes, 2 * _MINUTE + rng.exponential(15 * _MINUTE, n))
        merchant = t.present_index.pick(self._per_episode(dest, sizes), rng.random(n))
        channel = np.where(rng.random(n) < 0.6, POS, CONTACTLESS)
        amount = t.typical_eur(card, t.category(merchant)) * rng.uniform(1.0, 4.0, n)
        none = np.full(n, -1, dtype=np.int64)
        return self._rows(
            "impossible_travel", sizes, card=card, merchant=merchant, time_ms=time_ms, amount_eur=amount,
            channel=channel, status=self._status(n, 0.15), device=none, ip=none.copy(),
        )  # fmt: skip

    def amount_spike(self, n: int) -> Rows:
        t, rng = self.t, self.rng
        sizes = self._sizes(n, rng.choice(np.array([1, 2]), n + 8, p=[0.8, 0.2]))
        e = len(sizes)
        victims = self._victims(e)
        card = self._per_episode(victims, sizes)
        t0 = self._daytime(self.first_ms, self.last_ms, e)
        time_ms = self._per_episode(t0, sizes) + self._offsets(sizes, rng.integers(10 * _MINUTE, 90 * _MINUTE, n))
        # a familiar merchant (a favourite that is not an ATM) or a high-value web shop
        favourites = t.card_favourites[card]
        ok = ~t._cat_is_atm[t._m_cat[favourites]]
        slot = np.argmax(rng.random(favourites.shape) * ok, axis=1)
        familiar = favourites[np.arange(n), slot]
        familiar_ok = ok[np.arange(n), slot]
        shop = _pick(self._high_ecom_cdf, rng.random(n))
        use_shop = (rng.random(n) < 0.4) | ~familiar_ok
        merchant = np.where(use_shop, shop, familiar)
        cat = t.category(merchant)
        channel = t.draw_channel(cat, rng)
        channel[use_shop] = ECOM
        amount = np.maximum(t.typical_eur(card, cat) * rng.uniform(12.0, 40.0, n), 300.0)
        device = np.where(channel == ECOM, card * 2, -1)
        return self._rows(
            "amount_spike", sizes, card=card, merchant=merchant, time_ms=time_ms, amount_eur=amount,
            channel=channel, status=self._status(n, 0.05, 0.15), device=device, ip=device.copy(),
        )  # fmt: skip

    def compromised_merchant(self, n: int) -> Rows:
        t, rng = self.t, self.rng
        # episode = one merchant; its rows are its victims' charges (one card: 1 or 2 rows)
        cards_per_episode = rng.integers(15, 51, n // 15 + 8)
        rows_per_episode = np.rint(cards_per_episode * 1.25)
        sizes = self._sizes(n, rows_per_episode)
        e = len(sizes)
        spread = t.end_ms - t.start_ms
        length = np.minimum(rng.uniform(5.0, 12.0, e) * _DAY, 0.6 * spread)
        t0 = t.start_ms + 0.2 * spread + rng.random(e) * (t.end_ms - t.start_ms - 0.2 * spread - length)
        start = self._per_episode(t0, sizes)
        time_ms = self._daytime(start, start + self._per_episode(length, sizes), n)
        mid_volume = np.flatnonzero(t.m_ecom)[30:800]  # neither a giant (its fraud share would drown) nor idle
        merchant = self._per_episode(rng.choice(mid_volume, e, replace=False), sizes)
        # the victims: any cards (several breaches may hit one card); a victim's second charge on the same card
        victim = rng.choice(t.n_cards, size=n, p=self._activity)
        ep = self._per_episode(np.arange(e), sizes)
        again = np.concatenate([[False], ep[1:] == ep[:-1]]) & (rng.random(n) < 0.25)
        victim = victim[np.maximum.accumulate(np.where(again, 0, np.arange(n)))]
        amount = t.typical_eur(victim, t.category(merchant)) * rng.uniform(2.0, 5.0, n)
        device = self._per_episode(t.fresh_devices(e), sizes)
        ip = self._per_episode(t.fresh_ips(e), sizes)
        return self._rows(
            "compromised_merchant", sizes, card=victim, merchant=merchant, time_ms=time_ms, amount_eur=amount,
            channel=np.full(n, ECOM), status=self._status(n, 0.05), device=device, ip=ip,
        )  # fmt: skip


def _cdf(weights: np.ndarray) -> np.ndarray:
    cdf: np.ndarray = np.cumsum(weights)
    normalised: np.ndarray = cdf / cdf[-1]
    return normalised


def _pick(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    picked: np.ndarray = np.minimum(np.searchsorted(cdf, u, side="right"), len(cdf) - 1)
    return picked


__all__ = ["DEFAULT_WEIGHTS", "SCENARIOS", "FraudInjector", "FraudSpec", "parse_scenarios"]
