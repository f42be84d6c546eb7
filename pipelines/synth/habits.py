"""Legit traffic with per-card habits: the background a stateful detector learns profiles from.

The plain generator (``model``) draws card and merchant independently, so one card pays in Tokyo
and Lisbon in the same hour: fine for load, useless for fraud detection, where a card's history
is the signal. Here every card has a home city (weighted by its merchants' traffic), a dozen
favourite merchants there, an amount scale (a card spends 0.5x-2x the category's median), one or
two devices and the home IPs that go with them, and an activity rate (its cadence). A detector
can learn those profiles, and legit traffic does not look like fraud, apart from a few benign
outliers that keep precision honest:

- trips: ~3% of cards spend 1.5-6 days in another city (often abroad); no card-present payment
  happens during the flight (a gap of 3 h plus the distance at 800 km/h), so a trip is never
  "impossible travel";
- online purchases anywhere (~8%, ECOM only, any country);
- a large purchase now and then (4-12x the card's usual amount);
- a new device or a mobile IP now and then.

Rows come out as ``Rows`` (plain numpy columns, codes into the generator's vocabularies), which the
fraud injection (``fraud``) extends and the corpus (``corpus``) sorts into event-time order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import numpy as np

from pipelines.contracts.columnar_writer import Coded, Column, Floats
from pipelines.errors import UsageError
from pipelines.synth.model import (
    _CITIES,
    CHANNELS,
    IP_FIRST_OCTETS,
    TransactionGenerator,
    _stable_uniforms,
    card_population,
)

if TYPE_CHECKING:
    from pipelines.contracts.reference import FxRate, Merchant

FAVOURITES = 12  # favourite merchants per card, in its home city
_FAVOURITE_SHARE = 0.62  # of a card's at-home payments, at a favourite (the rest: anywhere in its city)
_ONLINE_ANYWHERE = 0.08  # ECOM at any merchant of any country
_AMOUNT_HABIT_SIGMA = 0.8  # a card's spread around its own scale, relative to the category's sigma
_EARTH_RADIUS_KM = 6371.0
_FLIGHT_KMH = 800.0
ECOM = CHANNELS.index("ECOM")
MOTO = CHANNELS.index("MOTO")
POS = CHANNELS.index("POS")
CONTACTLESS = CHANNELS.index("CONTACTLESS")
ATM = CHANNELS.index("ATM")


@dataclass
class Rows:
    """Transactions as codes and numbers (no strings yet), so fraud rows and legit rows concatenate.

    card: index into the card population; merchant: index into the merchant list; device/ip:
    index into the device/IP vocabulary (-1: none); lat/lon NaN: no position. scenario is an
    index into ``fraud.SCENARIOS`` (-1: legit); episode numbers a fraud episode (-1: legit).
    """

    card: np.ndarray
    merchant: np.ndarray
    time_ms: np.ndarray
    amount_minor: np.ndarray
    channel: np.ndarray
    status: np.ndarray
    currency: np.ndarray
    device: np.ndarray
    ip: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    scenario: np.ndarray
    episode: np.ndarray

    def __len__(self) -> int:
        return len(self.card)

    def take(self, index: np.ndarray | slice) -> Rows:
        """The rows at `index` (a permutation, a mask, a subset or a slice)."""
        return Rows(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    @staticmethod
    def concat(parts: Sequence[Rows]) -> Rows:
        return Rows(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(Rows)})


def haversine_km(lat1: np.ndarray, lon1: np.ndarray, lat2: np.ndarray, lon2: np.ndarray) -> np.ndarray:
    """Great-circle distance in km between points given in degrees (element-wise)."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dp, dl = p2 - p1, np.radians(lon2 - lon1)
    a = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    distance: np.ndarray = 2 * _EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))
    return distance


class PlaceIndex:
    """Weighted sampling of a merchant within a given place, for many places at once.

    Merchants are sorted by place and each place's cumulative weights offset by the place's number,
    so one ``searchsorted`` of ``place + u`` picks within the right place. A place whose merchants
    all weigh 0 has none to give (``has`` says which).
    """

    def __init__(self, m_place: np.ndarray, weights: np.ndarray, n_places: int) -> None:
        order = np.argsort(m_place, kind="stable")
        order = order[weights[order] > 0]
        place = m_place[order]
        w = weights[order]
        mass = np.bincount(place, weights=w, minlength=n_places)
        cum = np.cumsum(w)
        start = np.searchsorted(place, np.arange(n_places), side="left")
        before = np.concatenate([[0.0], cum])[start]
        within = (cum - before[place]) / mass[place]
        last = np.flatnonzero(np.diff(np.concatenate([place, [n_places]])) != 0)
        within[last] = 1.0
        self._order = order
        self._key = place + within
        self.has = mass > 0

    def pick(self, place: np.ndarray, u: np.ndarray) -> np.ndarray:
        i = np.searchsorted(self._key, place + u, side="right")
        picked: np.ndarray = self._order[np.minimum(i, len(self._order) - 1)]
        return picked


class HabitualTraffic(TransactionGenerator):
    """Legit transactions over a past window, each card keeping to its habits (see the module doc).

    Built on the plain generator's merchant model (categories, channels, statuses, currencies,
    merchant positions), so the two streams share their vocabularies and contract checks.
    """

    def __init__(
        self,
        *,
        seed: int,
        merchants: Mapping[str, Merchant],
        fx_rates: Mapping[str, FxRate],
        start_ms: int,
        spread_s: float,
        cards: int,
        currencies: Sequence[str] | None = None,
        min_amount_minor: int = 1,
        max_amount_minor: int = 10**11,
        trip_share: float = 0.03,
        large_purchase_share: float = 0.0025,
        new_device_share: float = 0.004,
        mobile_ip_share: float = 0.04,
    ) -> None:
        if cards < 10:
            raise UsageError(f"labelled traffic needs at least 10 cards, got {cards}")
        super().__init__(
            seed=seed, merchants=merchants, fx_rates=fx_rates, currencies=currencies, start_ms=start_ms,
            spread_s=spread_s, cards=cards, min_amount_minor=min_amount_minor, max_amount_minor=max_amount_minor,
        )  # fmt: skip
        self.start_ms = start_ms
        self.end_ms = start_ms + int(spread_s * 1000)
        self.large_purchase_share = large_purchase_share
        self.new_device_share = new_device_share
        self.mobile_ip_share = mobile_ip_share
        self.population = card_population(cards)
        self.n_cards = cards
        rng = np.random.default_rng([seed, 0x68616269])  # "habi": independent of the plain stream
        self._rng_habits = rng

        # Places: (country, city) of every merchant, as model.py placed it.
        m_zipf = np.diff(np.concatenate([[0.0], self._m_cdf]))
        place_of: dict[tuple[str, int], int] = {}
        m_place = np.empty(len(self._m_ids), dtype=np.int64)
        for i, mid in enumerate(self._m_ids.tolist()):
            country = str(self._m_country[i])
            cities = _CITIES.get(country) or [(float("nan"), float("nan"))]
            city = int(_stable_uniforms(mid)[0] * len(cities))
            m_place[i] = place_of.setdefault((country, city), len(place_of))
        keys = list(place_of)
        self.place_country = np.array([k[0] for k in keys], dtype=object)
        self.place_lat = np.array([(_CITIES.get(c) or [(np.nan, np.nan)])[j][0] for c, j in keys])
        self.place_lon = np.array([(_CITIES.get(c) or [(np.nan, np.nan)])[j][1] for c, j in keys])
        self.m_place = m_place
        self.m_zipf = m_zipf
        channel_w = np.diff(np.concatenate([np.zeros((len(self._channel_cdf), 1)), self._channel_cdf], axis=1), axis=1)
        self.m_ecom = channel_w[self._m_cat, ECOM] > 0
        n_places = len(keys)
        self.place_index = PlaceIndex(m_place, m_zipf, n_places)
        # card-present payments (impossible travel's) need a merchant that takes cards in person
        self.present_index = PlaceIndex(m_place, np.where(self._cat_is_atm[self._m_cat], 0.0, m_zipf), n_places)
        mass = np.bincount(m_place, weights=m_zipf, minlength=n_places)
        self.place_mass = mass
        self.place_distance = haversine_km(
            self.place_lat[:, None], self.place_lon[:, None], self.place_lat[None, :], self.place_lon[None, :]
        )
        self._ecom_cdf = np.cumsum(np.where(self.m_ecom, m_zipf, 0.0))
        self._ecom_cdf /= self._ecom_cdf[-1]

        # Cards: home, favourites, amount scale, devices, trips.
        home_w = mass**0.7
        self.card_home = rng.choice(n_places, size=cards, p=home_w / home_w.sum())
        self.card_favourites = self.merchants_in(
            np.repeat(self.card_home, FAVOURITES), rng.random(cards * FAVOURITES)
        ).reshape(cards, FAVOURITES)
        self.card_scale = np.exp(rng.normal(0.0, 0.45, cards))
        self.card_two_devices = rng.random(cards) < 0.45
        self.card_trip = rng.random(cards) < trip_share
        dest = rng.choice(n_places, size=cards, p=mass / mass.sum())
        clash = dest == self.card_home
        if n_places > 1:  # a trip goes somewhere else
            dest[clash] = (dest[clash] + 1 + rng.integers(0, n_places - 1, clash.sum())) % n_places
        self.card_trip &= dest != self.card_home
        self.card_dest = dest
        spread_ms = self.end_ms - self.start_ms
        self.trip_start = self.start_ms + (0.15 + 0.7 * rng.random(cards)) * spread_ms
        self.trip_end = self.trip_start + rng.uniform(1.5, 6.0, cards) * 86_400_000
        distance = self.place_distance[self.card_home, dest]
        self.trip_gap_ms = (3.0 + np.nan_to_num(distance, nan=0.0) / _FLIGHT_KMH) * 3_600_000
        # Fresh device and IP ids (benign new devices, fraudsters' devices) come after the population's.
        self._fresh_devices = 0
        self._fresh_ips = 0

    def merchants_in(self, place: np.ndarray, u: np.ndarray) -> np.ndarray:
        """A merchant of each `place`, Zipf-weighted within it (u: uniforms in [0, 1))."""
        return self.place_index.pick(place, u)

    def ecom_merchants(self, u: np.ndarray) -> np.ndarray:
        """Merchants of any country that sell online, Zipf-weighted."""
        i = np.searchsorted(self._ecom_cdf, u, side="right")
        picked: np.ndarray = np.minimum(i, len(self._ecom_cdf) - 1)
        return picked

    def fresh_devices(self, n: int) -> np.ndarray:
        """Codes of `n` never-seen devices (their ids are made when the vocabulary is built)."""
        first = 2 * self.n_cards + self._fresh_devices
        self._fresh_devices += n
        return np.arange(first, first + n, dtype=np.int64)

    def fresh_ips(self, n: int) -> np.ndarray:
        """Codes of `n` never-seen IPs."""
        first = 2 * self.n_cards + self._fresh_ips
        self._fresh_ips += n
        return np.arange(first, first + n, dtype=np.int64)

    def vocabularies(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(devices, ips): the population's, then the fresh ones handed out so far."""
        rng = np.random.default_rng([seed, 0x66726573])
        dev = rng.integers(1 << 40, 1 << 47, size=self._fresh_devices, dtype=np.int64)
        octets = rng.integers(1, 255, size=(self._fresh_ips, 4))
        octets[:, 0] = rng.choice(IP_FIRST_OCTETS, size=self._fresh_ips)  # like the home IPs: no tell-tale range
        devices = np.concatenate(
            [self.population.devices, np.array([f"dev_{d:012x}" for d in dev.tolist()], dtype=object)]
        )
        ips = np.concatenate(
            [self.population.ips, np.array([f"{a}.{b}.{c}.{d}" for a, b, c, d in octets.tolist()], dtype=object)]
        )
        return devices, ips

    def columns(self, rows: Rows, *, seed: int) -> dict[str, Column]:
        """Rows → the generator's compact columns (all but transaction_id), with every vocabulary."""
        devices, ips = self.vocabularies(seed)
        pop = self.population
        return {
            "event_time": rows.time_ms,
            "card_id": Coded(rows.card, pop.card_ids),
            "account_id": Coded(rows.card, pop.account_ids),
            "merchant_id": Coded(rows.merchant, self._m_ids),
            "merchant_category": Coded(self._m_cat[rows.merchant], self._cat_names),
            "amount_minor": rows.amount_minor,
            "currency": Coded(rows.currency, self._currency_names),
            "country": Coded(rows.merchant, self._m_country),
            "channel": Coded(rows.channel, self._channel_names),
            "status": Coded(rows.status, self._status_names),
            "device_id": Coded(rows.device, devices),
            "ip_address": Coded(rows.ip, ips),
            "latitude": Floats(rows.lat),
            "longitude": Floats(rows.lon),
        }

    def amount_minor(
        self, cat: np.ndarray, currency: np.ndarray, amount_eur: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        """EUR amounts → minor units of `currency`, ATM withdrawals as round sums (as model.py does)."""
        from pipelines.synth.model import _ATM_SUM_WEIGHTS, _ATM_SUMS_EUR

        minor = np.rint(amount_eur / self._rate[currency] * self._scale[currency])
        is_atm = self._cat_is_atm[cat]
        if is_atm.any():
            pick = np.searchsorted(np.cumsum(_ATM_SUM_WEIGHTS), rng.random(int(is_atm.sum())) * _ATM_SUM_WEIGHTS.sum())
            sums = _ATM_SUMS_EUR[np.minimum(pick, len(_ATM_SUMS_EUR) - 1)]
            cur = currency[is_atm]
            step = self._atm_step[cur]
            minor[is_atm] = np.maximum(np.rint(sums / self._rate[cur] * self._scale[cur] / step), 1) * step
        clipped: np.ndarray = np.clip(minor, self._min_amount, self._max_amount).astype(np.int64)
        return clipped

    def typical_eur(self, card: np.ndarray, cat: np.ndarray) -> np.ndarray:
        """The card's median amount in EUR at a merchant category (ATM: 100 EUR)."""
        median = np.where(self._cat_is_atm[cat], math.log(100.0), self._cat_mu[cat])
        typical: np.ndarray = np.exp(median) * self.card_scale[card]
        return typical

    def draw_channel(self, cat: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        channel = (rng.random(len(cat))[:, None] > self._channel_cdf[cat]).sum(axis=1)
        out: np.ndarray = np.minimum(channel, len(CHANNELS) - 1)
        return out

    def draw_status(self, channel: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        status = (rng.random(len(channel))[:, None] > self._status_cdf[channel]).sum(axis=1)
        out: np.ndarray = np.minimum(status, self._status_cdf.shape[1] - 1)
        return out

    def draw_currency(self, merchant: np.ndarray, channel: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        home = self._m_currency[merchant]
        foreign = np.minimum(
            np.searchsorted(self._foreign_cdf, rng.random(len(merchant)), side="right"), len(self.currencies) - 1
        )
        out: np.ndarray = np.where(rng.random(len(merchant)) < self._cross_border[channel], foreign, home)
        return out

    def position(
        self, merchant: np.ndarray, channel: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """(lat, lon) near the merchant for card-present channels with a position (POS, CONTACTLESS), else NaN."""
        located = (channel == POS) | (channel == CONTACTLESS)
        lat = np.round(self._m_lat[merchant] + rng.normal(0, 0.0004, len(merchant)), 6)
        lon = np.round(self._m_lon[merchant] + rng.normal(0, 0.0006, len(merchant)), 6)
        lat[~located] = np.nan
        lon[~located] = np.nan
        return lat, lon

    def event_times(self, n: int, rng: np.random.Generator) -> np.ndarray:
        hour = np.minimum(np.searchsorted(self._hour_cdf, rng.random(n), side="right"), len(self._hour_cdf) - 1)
        lo, hi = self._hour_edges[hour], self._hour_edges[hour + 1]
        times: np.ndarray = lo + (rng.random(n) * (hi - lo)).astype(np.int64)
        return times

    def category(self, merchant: np.ndarray) -> np.ndarray:
        cat: np.ndarray = self._m_cat[merchant]
        return cat

    def legit(self, n: int) -> Rows:
        """Exactly `n` legit rows over the window (not yet in time order)."""
        parts: list[Rows] = []
        have = 0
        while have < n:
            want = n - have
            part = self._legit_block(int(want * 1.02) + 64)
            parts.append(part)
            have += len(part)
        rows = Rows.concat(parts) if len(parts) > 1 else parts[0]
        # rows are independent draws, not yet in time order: the first n are a fair sample of them
        return rows.take(slice(0, n)) if len(rows) > n else rows

    def _legit_block(self, n: int) -> Rows:
        rng = self._rng_habits
        t = self.event_times(n, rng)
        card = np.minimum(np.searchsorted(self.population.cdf, rng.random(n), side="right"), self.n_cards - 1)
        trip = self.card_trip[card]
        ts, te, gap = self.trip_start[card], self.trip_end[card], self.trip_gap_ms[card]
        on_trip = trip & (t >= ts) & (t < te)
        in_gap = trip & (((t >= ts - gap) & (t < ts)) | ((t >= te) & (t < te + gap)))
        r = rng.random(n)
        online = r < _ONLINE_ANYWHERE
        favourite = ~online & ~on_trip & (r < _ONLINE_ANYWHERE + (1 - _ONLINE_ANYWHERE) * _FAVOURITE_SHARE)
        slot = np.minimum((rng.pareto(1.2, n)).astype(np.int64), FAVOURITES - 1)
        place = np.where(on_trip, self.card_dest[card], self.card_home[card])
        merchant = self.merchants_in(place, rng.random(n))
        merchant = np.where(favourite, self.card_favourites[card, slot], merchant)
        anywhere = self.ecom_merchants(rng.random(n))
        merchant = np.where(online, anywhere, merchant)
        cat = self._m_cat[merchant]
        channel = self.draw_channel(cat, rng)
        channel[online] = ECOM
        status = self.draw_status(channel, rng)
        currency = self.draw_currency(merchant, channel, rng)
        amount_eur = self.typical_eur(card, cat) * np.exp(
            _AMOUNT_HABIT_SIGMA * self._cat_sigma[cat] * rng.standard_normal(n)
        )
        large = rng.random(n) < self.large_purchase_share
        amount_eur[large] *= rng.uniform(4.0, 12.0, int(large.sum()))
        amount = self.amount_minor(cat, currency, amount_eur, rng)
        ecom = channel == ECOM
        device = np.where(ecom, card * 2 + (self.card_two_devices[card] & (rng.random(n) < 0.4)), -1)
        ip = device.copy()
        new_device = ecom & (rng.random(n) < self.new_device_share)
        device[new_device] = self.fresh_devices(int(new_device.sum()))
        mobile = ecom & (rng.random(n) < self.mobile_ip_share)
        ip[mobile] = self.fresh_ips(int(mobile.sum()))
        lat, lon = self.position(merchant, channel, rng)
        rows = Rows(
            card=card, merchant=merchant, time_ms=t, amount_minor=amount, channel=channel, status=status,
            currency=currency, device=device, ip=ip, lat=lat, lon=lon,
            scenario=np.full(n, -1, dtype=np.int8), episode=np.full(n, -1, dtype=np.int64),
        )  # fmt: skip
        # no card-present payment while the cardholder is in the air
        return rows.take(~(in_gap & ~ecom & (channel != MOTO)))
