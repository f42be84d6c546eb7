"""The synthetic model: seeded, vectorised card transactions as columns.

The generator works a block of events at a time with numpy and hands them out as columns in
the compact forms ``contracts.columnar_writer`` encodes without a Python call per field. The
stream depends on the seed alone (not on how it is sliced or paced): the same seed gives the same
transaction ids, cards, merchants and amounts. What it models:

- merchants Zipf-distributed by their rank in `merchants.csv` (s≈1.1: the top 1% carry ~half),
- ~100k tokenised cards (a fixed population, the same for every seed), each in one account
  (~1.3 cards per account), activity skewed per card, two devices and home IPs per card,
- amounts log-normal per merchant category (transit fares to airline tickets; ATM withdrawals
  are round sums in the local currency),
- channels weighted per category (ATM only at MCC 6011), statuses weighted per channel, both
  vocabularies being the contract's enums,
- the merchant's home currency, plus some cross-border (dynamic currency conversion),
- device and IP for ECOM, geo (near the merchant) for POS and CONTACTLESS.

Producing them to Kafka, with a malformed mix, is ``produce``'s job; this module knows no Kafka.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import numpy as np

from pipelines.config import PACKAGE_ROOT
from pipelines.contracts.codec import enum_symbols
from pipelines.contracts.columnar_writer import Coded, Column, Fixed, Floats, concat_columns, materialize, slice_column
from pipelines.errors import ConfigError, UsageError

if TYPE_CHECKING:
    from pipelines.contracts.reference import FxRate, Merchant

# The contract the model was written for: its fields are the columns the generator makes, its
# enums the channel and status vocabularies (in symbol order, which the seeded stream depends
# on). v1 never changes (ids are pinned in git); a later version is another file, and symbols it
# adds get no weight here.
CONTRACT_FILE: Final = PACKAGE_ROOT / "configs" / "schemas" / "transaction-v1.avsc"
_CONTRACT = json.loads(CONTRACT_FILE.read_text())
FIELDS: Final = tuple(str(f["name"]) for f in _CONTRACT["fields"])
CHANNELS: Final = enum_symbols(_CONTRACT, "channel")
STATUSES: Final = enum_symbols(_CONTRACT, "status")

BLOCK = 8192  # events generated per numpy pass; the stream is the same whatever chunk size callers ask for
CARD_POPULATION_SEED = 7_340_033  # cards are a fixed population, independent of the event seed
DEFAULT_CARDS = 100_000


class _Profile(NamedTuple):
    """A merchant category's amounts (log-normal around a median in EUR) and channel mix."""

    median_eur: float
    sigma: float
    channels: dict[str, float]  # weight per channel symbol; a channel not named: 0


_PROFILES: dict[str, _Profile] = {
    "5411": _Profile(32.0, 0.75, {"POS": 0.38, "ECOM": 0.06, "CONTACTLESS": 0.56}),  # grocery
    "5812": _Profile(38.0, 0.65, {"POS": 0.35, "ECOM": 0.10, "CONTACTLESS": 0.55}),  # restaurants
    "5814": _Profile(11.0, 0.50, {"POS": 0.20, "ECOM": 0.15, "CONTACTLESS": 0.65}),  # fast food
    "5999": _Profile(42.0, 1.00, {"POS": 0.25, "ECOM": 0.45, "MOTO": 0.05, "CONTACTLESS": 0.25}),  # misc retail
    "5311": _Profile(65.0, 0.90, {"POS": 0.40, "ECOM": 0.25, "CONTACTLESS": 0.35}),  # department stores
    "5651": _Profile(70.0, 0.80, {"POS": 0.35, "ECOM": 0.40, "CONTACTLESS": 0.25}),  # clothing
    "4111": _Profile(3.2, 0.55, {"POS": 0.10, "ECOM": 0.15, "CONTACTLESS": 0.75}),  # transit
    "4121": _Profile(19.0, 0.60, {"POS": 0.05, "ECOM": 0.80, "CONTACTLESS": 0.15}),  # taxis / rideshare apps
    "5541": _Profile(58.0, 0.40, {"POS": 0.50, "CONTACTLESS": 0.50}),  # fuel
    "5732": _Profile(190.0, 1.10, {"POS": 0.30, "ECOM": 0.55, "MOTO": 0.02, "CONTACTLESS": 0.13}),  # electronics
    "7011": _Profile(260.0, 0.75, {"POS": 0.35, "ECOM": 0.45, "MOTO": 0.10, "CONTACTLESS": 0.10}),  # hotels
    "4511": _Profile(380.0, 0.85, {"POS": 0.03, "ECOM": 0.87, "MOTO": 0.10}),  # airlines
    "5912": _Profile(21.0, 0.80, {"POS": 0.40, "ECOM": 0.08, "CONTACTLESS": 0.52}),  # pharmacy
    "6011": _Profile(0.0, 0.00, {"ATM": 1.0}),  # ATM cash: round sums, see _ATM_SUMS_EUR
    "7832": _Profile(24.0, 0.45, {"POS": 0.30, "ECOM": 0.40, "CONTACTLESS": 0.30}),  # cinemas
}
_DEFAULT_PROFILE = _Profile(45.0, 1.0, {"POS": 0.30, "ECOM": 0.30, "MOTO": 0.05, "CONTACTLESS": 0.35})
_ATM_MCC = "6011"
_ATM_SUMS_EUR = np.array([20, 50, 100, 150, 200, 300, 400, 500], dtype=np.float64)
_ATM_SUM_WEIGHTS = np.array([0.14, 0.26, 0.24, 0.08, 0.15, 0.06, 0.03, 0.04])

# status weights per channel
_STATUS_WEIGHTS: dict[str, dict[str, float]] = {
    "POS": {"AUTHORIZED": 0.60, "CAPTURED": 0.325, "DECLINED": 0.045, "REFUNDED": 0.02, "REVERSED": 0.01},
    "ECOM": {"AUTHORIZED": 0.56, "CAPTURED": 0.32, "DECLINED": 0.08, "REFUNDED": 0.03, "REVERSED": 0.01},
    "ATM": {"AUTHORIZED": 0.55, "CAPTURED": 0.40, "DECLINED": 0.04, "REVERSED": 0.01},
    "MOTO": {"AUTHORIZED": 0.58, "CAPTURED": 0.30, "DECLINED": 0.08, "REFUNDED": 0.03, "REVERSED": 0.01},
    "CONTACTLESS": {"AUTHORIZED": 0.62, "CAPTURED": 0.325, "DECLINED": 0.035, "REFUNDED": 0.01, "REVERSED": 0.01},
}
# share of cross-border (cardholder-currency) transactions per channel
_CROSS_BORDER = {"POS": 0.04, "ECOM": 0.15, "ATM": 0.0, "MOTO": 0.08, "CONTACTLESS": 0.04}
# which foreign currency a cross-border transaction is in
_FOREIGN_WEIGHT = {"EUR": 0.35, "USD": 0.30, "GBP": 0.20, "CHF": 0.05, "SEK": 0.03, "PLN": 0.04, "JPY": 0.03}

# Merchant locations: a few cities per country (lat, lon); merchants sit within a few km of one.
_CITIES: dict[str, list[tuple[float, float]]] = {
    "DE": [(52.520, 13.405), (48.137, 11.575), (53.551, 9.993), (50.937, 6.960), (50.110, 8.682)],
    "FR": [(48.857, 2.352), (45.764, 4.836), (43.296, 5.370), (43.605, 1.444)],
    "NL": [(52.370, 4.895), (51.924, 4.478), (52.090, 5.121)],
    "ES": [(40.417, -3.704), (41.385, 2.173), (39.470, -0.376)],
    "IT": [(41.903, 12.496), (45.464, 9.190), (40.852, 14.268)],
    "IE": [(53.350, -6.260), (51.899, -8.476)],
    "AT": [(48.208, 16.373), (47.070, 15.439)],
    "BE": [(50.850, 4.352), (51.219, 4.402)],
    "PT": [(38.722, -9.139), (41.158, -8.629)],
    "FI": [(60.170, 24.938), (61.498, 23.761)],
    "GB": [(51.507, -0.128), (53.481, -2.243), (52.486, -1.890), (55.953, -3.189)],
    "US": [(40.713, -74.006), (37.775, -122.419), (41.878, -87.630), (34.052, -118.244)],
    "CH": [(47.377, 8.541), (46.204, 6.143), (46.948, 7.447)],
    "SE": [(59.329, 18.069), (57.709, 11.975)],
    "PL": [(52.230, 21.012), (50.065, 19.945), (51.107, 17.039)],
    "JP": [(35.690, 139.692), (34.694, 135.502)],
}
# share of events per UTC hour of day, for events spread over past days
_DIURNAL = np.array(
    [0.8, 0.5, 0.35, 0.3, 0.35, 0.6, 1.2, 2.3, 3.6, 4.4, 5.0, 5.7,
     6.3, 6.0, 5.5, 5.4, 5.8, 6.4, 6.6, 6.0, 5.0, 3.8, 2.6, 1.5]
)  # fmt: skip
_NOW_JITTER_MS = 250.0  # mean lag of a "now" event behind the moment it is handed out
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
# first octets of the home IPs (European ISPs' ranges); any IP the generators make starts with one
IP_FIRST_OCTETS = np.array([31, 46, 62, 77, 81, 85, 86, 88, 89, 90, 93, 94, 95, 109, 141, 176, 178,
                            185, 188, 193, 194, 212, 213, 217])  # fmt: skip
_UUID_POSITIONS = np.array([i for i in range(36) if i not in (8, 13, 18, 23)])


class _Cards(NamedTuple):
    card_ids: np.ndarray  # object (str)
    account_ids: np.ndarray  # object (str)
    devices: np.ndarray  # object (str), 2 per card: card i has 2i and 2i + 1
    ips: np.ndarray  # object (str), likewise
    cdf: np.ndarray  # activity: some cards are used far more than others


@functools.lru_cache(maxsize=4)
def card_population(cards: int = DEFAULT_CARDS) -> _Cards:
    """The fixed population of tokenised cards, accounts, devices and home IPs."""
    rng = np.random.default_rng(CARD_POPULATION_SEED)
    tokens = np.unique(rng.integers(1 << 60, 1 << 63, size=int(cards * 1.01) + 16, dtype=np.int64))
    tokens = rng.permutation(tokens)[:cards]
    card_ids = np.array([f"tok_{t:016x}" for t in tokens.tolist()], dtype=object)
    # ~1.3 cards per account: consecutive cards share an account now and then
    new_account = rng.random(cards) < 1 / 1.3
    new_account[0] = True
    account_no = np.cumsum(new_account) - 1
    account_base = int(rng.integers(10**8, 9 * 10**8))
    account_ids = np.array([f"ACC{account_base + a:09d}" for a in account_no.tolist()], dtype=object)
    dev = rng.integers(1 << 40, 1 << 47, size=cards * 2, dtype=np.int64)
    devices = np.array([f"dev_{d:012x}" for d in dev.tolist()], dtype=object)
    octets = rng.integers(1, 255, size=(cards * 2, 4))
    octets[:, 0] = rng.choice(IP_FIRST_OCTETS, size=cards * 2)
    ips = np.array([f"{a}.{b}.{c}.{d}" for a, b, c, d in octets.tolist()], dtype=object)
    activity = rng.gamma(0.7, size=cards)
    cdf = np.cumsum(activity)
    return _Cards(card_ids, account_ids, devices, ips, cdf / cdf[-1])


def uuid4_text(rng: np.random.Generator, n: int) -> np.ndarray:
    """n random (version 4) UUIDs in text form, as a (n, 36) ASCII byte matrix (a ``Fixed`` column)."""
    raw = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40  # version 4
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80  # RFC 4122 variant
    nibbles = np.empty((n, 32), dtype=np.uint8)
    nibbles[:, 0::2] = raw >> 4
    nibbles[:, 1::2] = raw & 0x0F
    text = np.full((n, 36), ord("-"), dtype=np.uint8)
    text[:, _UUID_POSITIONS] = _HEX[nibbles]
    return text


def zipf_weights(n: int, s: float = 1.1) -> np.ndarray:
    """P(rank k) ∝ k^-s for k = 1..n (a finite Zipf), normalised."""
    w: np.ndarray = np.arange(1, n + 1, dtype=np.float64) ** -s
    normalised: np.ndarray = w / w.sum()
    return normalised


@dataclass
class TransactionChunk:
    """A run of generated events as columns: numpy arrays, or the compact Coded / Fixed / Floats forms."""

    columns: dict[str, Column]

    def __len__(self) -> int:
        return len(materialize(self.columns["amount_minor"]))

    def column(self, name: str) -> np.ndarray:
        """One column as a plain array (strings as str, null as None)."""
        return materialize(self.columns[name])

    def records(self) -> list[dict[str, Any]]:
        """Avro-shaped dicts in FIELDS order (event_time as int ms, enums as symbols, None for null)."""
        lists = [self.column(name).tolist() for name in FIELDS]
        return [dict(zip(FIELDS, row, strict=True)) for row in zip(*lists, strict=True)]

    @property
    def keys(self) -> list[str]:
        """The Kafka keys: card ids, so one card's events keep their order in one partition."""
        return self.column("card_id").tolist()  # type: ignore[no-any-return]

    def __getitem__(self, item: slice) -> TransactionChunk:
        return TransactionChunk({k: slice_column(v, item) for k, v in self.columns.items()})

    @staticmethod
    def concat(chunks: Sequence[TransactionChunk]) -> TransactionChunk:
        if len(chunks) == 1:
            return chunks[0]
        return TransactionChunk({k: concat_columns([c.columns[k] for c in chunks]) for k in chunks[0].columns})


class TransactionGenerator:
    """An endless, seeded stream of synthetic transactions.

    `start_ms` + `spread_s`: event times over that window (busier by day than by night);
    otherwise event times are "now" (when a chunk is handed out) minus a small lag.
    """

    def __init__(
        self,
        *,
        seed: int,
        merchants: Mapping[str, Merchant],
        fx_rates: Mapping[str, FxRate],
        stream: int = 0,
        currencies: Sequence[str] | None = None,
        start_ms: int | None = None,
        spread_s: float | None = None,
        cards: int = DEFAULT_CARDS,
        zipf_s: float = 1.1,
        min_amount_minor: int = 1,
        max_amount_minor: int = 10**11,
    ) -> None:
        if not merchants:
            raise ConfigError("no merchants to generate transactions for")
        if (start_ms is None) != (spread_s is None):
            raise UsageError("start_ms and spread_s go together")
        if spread_s is not None and spread_s <= 0:
            raise UsageError(f"spread_s must be positive, got {spread_s}")
        self.seed = seed
        # `stream` gives independent streams for one seed (the malformed mix uses stream 1)
        self._rng = np.random.default_rng(seed if stream == 0 else [seed, stream])
        self._min_amount, self._max_amount = min_amount_minor, max_amount_minor
        self._cards = card_population(cards)
        self._start_ms, self._spread_ms = start_ms, None if spread_s is None else int(spread_s * 1000)

        # currencies: every merchant's home currency, plus foreign ones allowed for cross-border
        self.currencies = list(currencies) if currencies is not None else list(fx_rates)
        for c in self.currencies:
            if c not in fx_rates:
                raise ConfigError(f"currency {c} has no FX rate", hint="add it to the fx_rates file")
        items = list(merchants.items())
        for merchant_id, m in items:
            if m.currency not in self.currencies:
                raise ConfigError(
                    f"merchant {merchant_id} has currency {m.currency}, which is not among the accepted "
                    f"currencies ({', '.join(self.currencies)})",
                    hint="add it to pipeline.rules.currencies or fix the merchants file",
                )
        currency_index = {c: i for i, c in enumerate(self.currencies)}
        self._currency_names = np.array(self.currencies, dtype=object)
        self._rate = np.array([fx_rates[c].rate for c in self.currencies])
        self._scale = np.array([10.0 ** fx_rates[c].exponent for c in self.currencies])
        # the "nice" step of an ATM withdrawal in each currency: ~10 EUR, rounded to a power of ten
        self._atm_step = np.array([10.0 ** round(math.log10(10.0 / r)) for r in self._rate]) * self._scale
        foreign = np.array([_FOREIGN_WEIGHT.get(c, 0.02) for c in self.currencies])
        self._foreign_cdf = np.cumsum(foreign) / foreign.sum()

        categories = sorted({m.category for _, m in items})
        cat_index = {c: i for i, c in enumerate(categories)}
        profiles = [_PROFILES.get(c, _DEFAULT_PROFILE) for c in categories]
        self._cat_names = np.array(categories, dtype=object)
        self._cat_mu = np.array([math.log(p.median_eur) if p.median_eur > 0 else 0.0 for p in profiles])
        self._cat_sigma = np.array([p.sigma for p in profiles])
        self._cat_is_atm = np.array([c == _ATM_MCC for c in categories])
        # ATM only at ATM merchants, and ATM merchants only do ATM
        channel_w = np.array(
            [
                _by_symbol(p.channels, CHANNELS, f"channel weights of MCC {c}")
                for c, p in zip(categories, profiles, strict=True)
            ],
            dtype=np.float64,
        )
        channel_w[~self._cat_is_atm, CHANNELS.index("ATM")] = 0.0
        self._channel_cdf = np.cumsum(channel_w / channel_w.sum(axis=1, keepdims=True), axis=1)
        status_w = np.array([_by_symbol(_STATUS_WEIGHTS[ch], STATUSES, f"status weights of {ch}") for ch in CHANNELS])
        self._status_cdf = np.cumsum(status_w / status_w.sum(axis=1, keepdims=True), axis=1)
        self._cross_border = np.array([_CROSS_BORDER[ch] for ch in CHANNELS])
        self._channel_names = np.array(CHANNELS, dtype=object)
        self._status_names = np.array(STATUSES, dtype=object)

        self._m_ids = np.array([mid for mid, _ in items], dtype=object)
        self._m_cat = np.array([cat_index[m.category] for _, m in items])
        self._m_country = np.array([m.country for _, m in items], dtype=object)
        self._m_currency = np.array([currency_index[m.currency] for _, m in items])
        self._m_cdf = np.cumsum(zipf_weights(len(items), zipf_s))
        self._m_cdf[-1] = 1.0
        # merchant locations: fixed per merchant id (not per seed), near a city of its country
        lat = np.full(len(items), np.nan)
        lon = np.full(len(items), np.nan)
        for i, (mid, m) in enumerate(items):
            cities = _CITIES.get(m.country)
            if cities:
                u = _stable_uniforms(mid)
                city_lat, city_lon = cities[int(u[0] * len(cities))]
                radius = 0.05 * math.sqrt(-2.0 * math.log(u[1]))  # Box-Muller: a normal offset, σ≈5 km
                lat[i] = city_lat + radius * math.cos(2 * math.pi * u[2])
                lon[i] = city_lon + 1.5 * radius * math.sin(2 * math.pi * u[2])
        self._m_lat, self._m_lon = lat, lon

        if self._spread_ms is not None:
            assert self._start_ms is not None
            first_hour = self._start_ms // 3_600_000
            end = self._start_ms + self._spread_ms
            edges = np.arange(first_hour, (end - 1) // 3_600_000 + 2, dtype=np.int64) * 3_600_000
            edges[0], edges[-1] = self._start_ms, end
            hours = (edges[:-1] // 3_600_000) % 24
            weight = _DIURNAL[hours] * np.diff(edges)
            self._hour_edges = edges
            self._hour_cdf = np.cumsum(weight) / weight.sum()

    def _block(self, n: int) -> tuple[dict[str, Column], np.ndarray | None]:
        """n events; in "now" mode event_time is left out and the lags are returned instead."""
        rng = self._rng
        cards = self._cards

        text = uuid4_text(rng, n)

        m = np.searchsorted(self._m_cdf, rng.random(n), side="right")
        card = np.searchsorted(cards.cdf, rng.random(n), side="right")
        cat = self._m_cat[m]
        channel = (rng.random(n)[:, None] > self._channel_cdf[cat]).sum(axis=1)
        np.minimum(channel, len(CHANNELS) - 1, out=channel)
        status = (rng.random(n)[:, None] > self._status_cdf[channel]).sum(axis=1)
        np.minimum(status, len(STATUSES) - 1, out=status)

        home = self._m_currency[m]
        foreign = np.searchsorted(self._foreign_cdf, rng.random(n), side="right")
        np.minimum(foreign, len(self.currencies) - 1, out=foreign)
        currency = np.where(rng.random(n) < self._cross_border[channel], foreign, home)

        amount_eur = np.exp(self._cat_mu[cat] + self._cat_sigma[cat] * rng.standard_normal(n))
        minor = np.rint(amount_eur / self._rate[currency] * self._scale[currency])
        atm_pick = np.searchsorted(np.cumsum(_ATM_SUM_WEIGHTS), rng.random(n) * _ATM_SUM_WEIGHTS.sum())
        atm_sum = _ATM_SUMS_EUR[np.minimum(atm_pick, len(_ATM_SUMS_EUR) - 1)]
        step = self._atm_step[currency]
        atm_minor = np.maximum(np.rint(atm_sum / self._rate[currency] * self._scale[currency] / step), 1) * step
        minor = np.where(self._cat_is_atm[cat], atm_minor, minor)
        amount_minor = np.clip(minor, self._min_amount, self._max_amount).astype(np.int64)

        ecom = channel == CHANNELS.index("ECOM")
        device = np.where(ecom, card * 2 + rng.integers(0, 2, size=n), -1)  # devices and IPs: 2 per card
        located = (channel == CHANNELS.index("POS")) | (channel == CHANNELS.index("CONTACTLESS"))
        lat = np.round(self._m_lat[m] + rng.normal(0, 0.0004, n), 6)
        lon = np.round(self._m_lon[m] + rng.normal(0, 0.0006, n), 6)
        lat[~located] = np.nan
        lon[~located] = np.nan

        columns: dict[str, Column] = {
            "transaction_id": Fixed(text),
            "card_id": Coded(card, cards.card_ids),
            "account_id": Coded(card, cards.account_ids),
            "merchant_id": Coded(m, self._m_ids),
            "merchant_category": Coded(cat, self._cat_names),
            "amount_minor": amount_minor,
            "currency": Coded(currency, self._currency_names),
            "country": Coded(m, self._m_country),
            "channel": Coded(channel, self._channel_names),
            "status": Coded(status, self._status_names),
            "device_id": Coded(device, cards.devices),
            "ip_address": Coded(device, cards.ips),
            "latitude": Floats(lat),
            "longitude": Floats(lon),
        }
        if self._spread_ms is None:
            lag = np.minimum(rng.exponential(_NOW_JITTER_MS, n), 5_000).astype(np.int64)
            return columns, lag
        hour = np.searchsorted(self._hour_cdf, rng.random(n), side="right")
        np.minimum(hour, len(self._hour_cdf) - 1, out=hour)
        lo, hi = self._hour_edges[hour], self._hour_edges[hour + 1]
        columns["event_time"] = lo + (rng.random(n) * (hi - lo)).astype(np.int64)
        return columns, None

    def chunks(self, size: int = 10_000) -> Iterator[TransactionChunk]:
        """Endless chunks of `size` events. The stream does not depend on `size`."""
        if size < 1:
            raise UsageError(f"chunk size must be at least 1, got {size}")
        pending: list[TransactionChunk] = []
        pending_lags: list[np.ndarray] = []
        have = 0
        while True:
            while have < size:
                columns, lag = self._block(BLOCK)
                if lag is not None:
                    columns["event_time"] = np.zeros(BLOCK, dtype=np.int64)
                    pending_lags.append(lag)
                pending.append(TransactionChunk(columns))
                have += BLOCK
            chunk = TransactionChunk.concat(pending)
            out, rest = chunk[:size], chunk[size:]
            pending, have = [rest], len(rest)
            if pending_lags:
                lags = np.concatenate(pending_lags)
                pending_lags = [lags[size:]]
                out.columns["event_time"] = int(time.time() * 1000) - lags[:size]
            yield out


def _by_symbol(weights: Mapping[str, float], symbols: Sequence[str], what: str) -> list[float]:
    """``weights`` in the contract's symbol order (0 for a symbol not named).

    A name the contract's enum lacks is a model written for another contract: refuse it rather
    than silently never generate it.
    """
    unknown = sorted(set(weights) - set(symbols))
    if unknown:
        raise ConfigError(
            f"the generator's {what} name {unknown}, which the contract's enum ({', '.join(symbols)}) lacks",
            hint=f"fix the weights in pipelines/synth/model.py to match {CONTRACT_FILE.name}",
        )
    return [float(weights.get(s, 0.0)) for s in symbols]


def _stable_uniforms(text: str) -> tuple[float, float, float]:
    """Three uniforms in (0, 1] from a string, the same in every process (unlike hash())."""
    import hashlib

    digest = hashlib.blake2b(text.encode(), digest_size=12).digest()
    a, b, c = (int.from_bytes(digest[i : i + 4], "little") for i in (0, 4, 8))
    return ((a + 1) / 2**32, (b + 1) / 2**32, (c + 1) / 2**32)


def iter_transactions(
    *,
    seed: int,
    merchants: Mapping[str, Merchant],
    fx_rates: Mapping[str, FxRate],
    start_ms: int | None = None,
    spread_s: float | None = None,
    count: int | None = None,
    chunk_size: int = 10_000,
    **options: Any,
) -> Iterator[dict[str, Any]]:
    """Avro-shaped transaction dicts (see TransactionGenerator for `options`); endless unless `count`."""
    gen = TransactionGenerator(
        seed=seed, merchants=merchants, fx_rates=fx_rates, start_ms=start_ms, spread_s=spread_s, **options
    )
    remaining = count
    for chunk in gen.chunks(chunk_size if count is None else max(1, min(chunk_size, count))):
        records = chunk.records()
        if remaining is not None:
            records = records[:remaining]
            remaining -= len(records)
        yield from records
        if remaining == 0:
            return
