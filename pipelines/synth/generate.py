"""Synthetic card transactions: a vectorised generator and `generate()`, which produces them to Kafka.

The generator works a block of events at a time with numpy, and `ColumnarEncoder` turns its
columns into Confluent-framed Avro without a Python call per field, so the per-event Python
work left is slicing bytes and `produce()`. The stream depends on the seed alone (not on how
it is sliced or paced): the same seed gives the same transaction ids, cards, merchants and
amounts. What it models:

- merchants Zipf-distributed by their rank in `merchants.csv` (s≈1.1: the top 1% carry ~half),
- ~100k tokenised cards (a fixed population, the same for every seed), each in one account
  (~1.3 cards per account), activity skewed per card, two devices and home IPs per card,
- amounts log-normal per merchant category (transit fares to airline tickets; ATM withdrawals
  are round sums in the local currency),
- channels weighted per category (ATM only at MCC 6011), statuses weighted per channel,
- the merchant's home currency, plus some cross-border (dynamic currency conversion),
- device and IP for ECOM, geo (near the merchant) for POS and CONTACTLESS.

`generate()` adds a malformed mix for testing the dead-letter path; its report's `valid`
is exactly the number of events a correct ingest stores.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from pipelines import kafka
from pipelines.errors import ConfigError, KafkaError, RegistryError, UsageError

if TYPE_CHECKING:
    from pipelines.config import Settings
    from pipelines.contracts.reference import FxRate, Merchant, ReferenceData

FIELDS = (
    "transaction_id", "event_time", "card_id", "account_id", "merchant_id", "merchant_category", "amount_minor",
    "currency", "country", "channel", "status", "device_id", "ip_address", "latitude", "longitude",
)  # fmt: skip
CHANNELS = ("POS", "ECOM", "ATM", "MOTO", "CONTACTLESS")
STATUSES = ("AUTHORIZED", "CAPTURED", "DECLINED", "REFUNDED", "REVERSED")
MALFORMED_KINDS = ("bad_magic_byte", "unknown_schema_id", "truncated", "wrong_type", "rule_violation")

BLOCK = 8192  # events generated per numpy pass; the stream is the same whatever chunk size callers ask for
CARD_POPULATION_SEED = 7_340_033  # cards are a fixed population, independent of the event seed
DEFAULT_CARDS = 100_000


class _Profile(NamedTuple):
    median_eur: float
    sigma: float
    channels: tuple[float, float, float, float, float]  # POS, ECOM, ATM, MOTO, CONTACTLESS


_PROFILES: dict[str, _Profile] = {
    "5411": _Profile(32.0, 0.75, (0.38, 0.06, 0, 0.00, 0.56)),  # grocery
    "5812": _Profile(38.0, 0.65, (0.35, 0.10, 0, 0.00, 0.55)),  # restaurants
    "5814": _Profile(11.0, 0.50, (0.20, 0.15, 0, 0.00, 0.65)),  # fast food
    "5999": _Profile(42.0, 1.00, (0.25, 0.45, 0, 0.05, 0.25)),  # misc retail
    "5311": _Profile(65.0, 0.90, (0.40, 0.25, 0, 0.00, 0.35)),  # department stores
    "5651": _Profile(70.0, 0.80, (0.35, 0.40, 0, 0.00, 0.25)),  # clothing
    "4111": _Profile(3.2, 0.55, (0.10, 0.15, 0, 0.00, 0.75)),  # transit
    "4121": _Profile(19.0, 0.60, (0.05, 0.80, 0, 0.00, 0.15)),  # taxis / rideshare apps
    "5541": _Profile(58.0, 0.40, (0.50, 0.00, 0, 0.00, 0.50)),  # fuel
    "5732": _Profile(190.0, 1.10, (0.30, 0.55, 0, 0.02, 0.13)),  # electronics
    "7011": _Profile(260.0, 0.75, (0.35, 0.45, 0, 0.10, 0.10)),  # hotels
    "4511": _Profile(380.0, 0.85, (0.03, 0.87, 0, 0.10, 0.00)),  # airlines
    "5912": _Profile(21.0, 0.80, (0.40, 0.08, 0, 0.00, 0.52)),  # pharmacy
    "6011": _Profile(0.0, 0.00, (0.00, 0.00, 1, 0.00, 0.00)),  # ATM cash: round sums, see _ATM_SUMS_EUR
    "7832": _Profile(24.0, 0.45, (0.30, 0.40, 0, 0.00, 0.30)),  # cinemas
}
_DEFAULT_PROFILE = _Profile(45.0, 1.0, (0.30, 0.30, 0, 0.05, 0.35))
_ATM_MCC = "6011"
_ATM_SUMS_EUR = np.array([20, 50, 100, 150, 200, 300, 400, 500], dtype=np.float64)
_ATM_SUM_WEIGHTS = np.array([0.14, 0.26, 0.24, 0.08, 0.15, 0.06, 0.03, 0.04])

# status weights per channel (AUTHORIZED, CAPTURED, DECLINED, REFUNDED, REVERSED)
_STATUS_WEIGHTS = {
    "POS": (0.60, 0.325, 0.045, 0.02, 0.01),
    "ECOM": (0.56, 0.32, 0.08, 0.03, 0.01),
    "ATM": (0.55, 0.40, 0.04, 0.00, 0.01),
    "MOTO": (0.58, 0.30, 0.08, 0.03, 0.01),
    "CONTACTLESS": (0.62, 0.325, 0.035, 0.01, 0.01),
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
    octets[:, 0] = rng.choice(np.array([31, 46, 62, 77, 81, 85, 86, 88, 89, 90, 93, 94, 95, 109, 141, 176, 178,
                                        185, 188, 193, 194, 212, 213, 217]), size=cards * 2)  # fmt: skip
    ips = np.array([f"{a}.{b}.{c}.{d}" for a, b, c, d in octets.tolist()], dtype=object)
    activity = rng.gamma(0.7, size=cards)
    cdf = np.cumsum(activity)
    return _Cards(card_ids, account_ids, devices, ips, cdf / cdf[-1])


def zipf_weights(n: int, s: float = 1.1) -> np.ndarray:
    """P(rank k) ∝ k^-s for k = 1..n (a finite Zipf), normalised."""
    w = np.arange(1, n + 1, dtype=np.float64) ** -s
    return w / w.sum()


class Coded(NamedTuple):
    """A string column as indices into a vocabulary (code -1: null). Encoded once per vocabulary."""

    codes: np.ndarray
    vocab: np.ndarray  # object array of str


class Fixed(NamedTuple):
    """An ASCII string column of one width, as a (rows, width) byte matrix."""

    matrix: np.ndarray


class Floats(NamedTuple):
    """A nullable double column (NaN: null)."""

    values: np.ndarray


Column = np.ndarray | Coded | Fixed | Floats


def materialize(column: Column) -> np.ndarray:
    """A column as a plain array: strings and nulls as Python objects, numbers as numbers."""
    if isinstance(column, Coded):
        null = column.codes < 0
        if not null.any():
            return column.vocab[column.codes]  # type: ignore[no-any-return]
        out = np.full(len(column.codes), None, dtype=object)
        out[~null] = column.vocab[column.codes[~null]]
        return out
    if isinstance(column, Fixed):
        width = column.matrix.shape[1]
        return np.ascontiguousarray(column.matrix).view(f"S{width}").ravel().astype(f"U{width}").astype(object)
    if isinstance(column, Floats):
        out = column.values.astype(object)
        out[np.isnan(column.values)] = None
        return out  # type: ignore[no-any-return]
    return column


def _take(column: Column, item: slice) -> Column:
    if isinstance(column, Coded):
        return Coded(column.codes[item], column.vocab)
    if isinstance(column, Fixed):
        return Fixed(column.matrix[item])
    if isinstance(column, Floats):
        return Floats(column.values[item])
    return column[item]


def _concat(columns: Sequence[Column]) -> Column:
    first = columns[0]
    if isinstance(first, Coded):
        assert all(c.vocab is first.vocab for c in columns)  # type: ignore[union-attr]
        return Coded(np.concatenate([c.codes for c in columns]), first.vocab)  # type: ignore[union-attr]
    if isinstance(first, Fixed):
        return Fixed(np.concatenate([c.matrix for c in columns]))  # type: ignore[union-attr]
    if isinstance(first, Floats):
        return Floats(np.concatenate([c.values for c in columns]))  # type: ignore[union-attr]
    return np.concatenate(columns)  # type: ignore[arg-type]


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
        return self.column("card_id").tolist()  # type: ignore[no-any-return]

    def __getitem__(self, item: slice) -> TransactionChunk:
        return TransactionChunk({k: _take(v, item) for k, v in self.columns.items()})

    @staticmethod
    def concat(chunks: Sequence[TransactionChunk]) -> TransactionChunk:
        if len(chunks) == 1:
            return chunks[0]
        return TransactionChunk({k: _concat([c.columns[k] for c in chunks]) for k in chunks[0].columns})


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
        channel_w = np.array([p.channels if c == _ATM_MCC else (*p.channels[:2], 0.0, *p.channels[3:])
                              for c, p in zip(categories, profiles, strict=True)], dtype=np.float64)  # fmt: skip
        self._channel_cdf = np.cumsum(channel_w / channel_w.sum(axis=1, keepdims=True), axis=1)
        status_w = np.array([_STATUS_WEIGHTS[ch] for ch in CHANNELS])
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

    # ── one block ──────────────────────────────────────────────────────────────────────────

    def _block(self, n: int) -> tuple[dict[str, Column], np.ndarray | None]:
        """n events; in "now" mode event_time is left out and the lags are returned instead."""
        rng = self._rng
        cards = self._cards

        raw = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
        raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40  # version 4
        raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80  # RFC 4122 variant
        nibbles = np.empty((n, 32), dtype=np.uint8)
        nibbles[:, 0::2] = raw >> 4
        nibbles[:, 1::2] = raw & 0x0F
        text = np.full((n, 36), ord("-"), dtype=np.uint8)
        text[:, _UUID_POSITIONS] = _HEX[nibbles]

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


# ── encoding ────────────────────────────────────────────────────────────────────────────────


_NO_DEFAULT = object()


class ColumnarEncoder:
    """Encodes a TransactionChunk's columns straight into Confluent-framed Avro values with numpy.

    The codec's `encode_batch` calls fastavro once per record (~10 µs each); this builds every
    field of every row at once and slices one buffer apart, ~10x faster, which the load test
    needs. It covers the types a flat record of primitives uses (string, long/int, double/float,
    boolean, enum, and unions of null with one of those); `supports()` says whether a schema
    qualifies, and `generate()` falls back to the codec otherwise. Fields the chunk lacks are
    written with their schema default. A test checks it byte-for-byte against the codec.
    """

    _PRIMITIVES = ("string", "long", "int", "double", "float", "boolean")

    def __init__(self, schema_id: int, schema_json: Mapping[str, Any]) -> None:
        from pipelines.contracts.codec import raw_logical_schema, wire_header

        self.header = np.frombuffer(wire_header(schema_id), dtype=np.uint8)
        raw = raw_logical_schema(dict(schema_json))
        plan = self._plan(raw)
        if plan is None:
            raise ValueError("schema is not a flat record of primitives, enums and nullable primitives")
        self._fields = plan
        self._vocab_cache: dict[tuple[str, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    @classmethod
    def supports(cls, schema_json: Mapping[str, Any]) -> bool:
        from pipelines.contracts.codec import raw_logical_schema

        return cls._plan(raw_logical_schema(dict(schema_json))) is not None

    @classmethod
    def _plan(cls, raw: Any) -> list[tuple[str, str, bool, Any, Any]] | None:
        """Per field: (name, kind, nullable, enum symbols → index, default)."""
        if not isinstance(raw, dict) or raw.get("type") != "record":
            return None
        plan: list[tuple[str, str, bool, Any, Any]] = []
        for f in raw.get("fields", []):
            t, nullable = f["type"], False
            if isinstance(t, list):
                if len(t) != 2 or t[0] != "null":
                    return None
                t, nullable = t[1], True
            if isinstance(t, dict) and t.get("type") == "enum":
                symbols = {s: i for i, s in enumerate(t["symbols"])}
                plan.append((f["name"], "enum", nullable, symbols, f.get("default", _NO_DEFAULT)))
                continue
            if isinstance(t, dict) and set(t) == {"type"}:
                t = t["type"]
            if t not in cls._PRIMITIVES:
                return None
            plan.append((f["name"], t, nullable, None, f.get("default", _NO_DEFAULT)))
        return plan

    def encode_chunk(self, chunk: TransactionChunk) -> list[bytes]:
        n = len(chunk)
        if n == 0:
            return []
        parts: list[tuple[np.ndarray, np.ndarray]] = [(np.broadcast_to(self.header, (n, 5)), np.full(n, 5))]
        for field_plan in self._fields:
            name, default = field_plan[0], field_plan[4]
            column = chunk.columns.get(name)
            if column is None:
                if default is _NO_DEFAULT:
                    raise ValueError(f"the generator has no column for field {name!r}, which has no default")
                column = np.full(n, default, dtype=object)
            parts.extend(self._field(field_plan, column, n))
        flat, lengths = _join_rows(parts)
        data = flat.tobytes()
        bounds = np.concatenate(([0], np.cumsum(lengths))).tolist()
        return [data[bounds[i] : bounds[i + 1]] for i in range(n)]

    def _field(
        self, field_plan: tuple[str, str, bool, Any, Any], column: Column, n: int
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        name, kind, nullable, symbols, _ = field_plan
        if isinstance(column, Coded):
            # Encode the vocabulary once; then a value is a row lookup. The last row is null.
            key = (name, id(column.vocab))
            cached = self._vocab_cache.get(key)
            if cached is None or cached[0] is not column.vocab:
                vocab_parts = self._nullable(kind, column.vocab, symbols, nullable)
                matrix, lengths = _pad_rows(*_join_rows(vocab_parts))
                null_row = np.zeros((1, matrix.shape[1]), dtype=np.uint8)
                matrix = np.concatenate([matrix, null_row])
                lengths = np.concatenate([lengths, [1 if nullable else 0]])
                cached = (column.vocab, matrix, lengths)
                self._vocab_cache[key] = cached
            _, matrix, lengths = cached
            codes = column.codes
            if (codes < 0).any():
                if not nullable:
                    raise ValueError(f"field {name!r} is not nullable but the column has nulls")
                codes = np.where(codes < 0, len(lengths) - 1, codes)
            return [(matrix[codes], lengths[codes])]
        if isinstance(column, Fixed) and kind == "string":
            width = column.matrix.shape[1]
            prefix_matrix, prefix_len = _varints(np.array([width]))
            prefix = [(np.broadcast_to(prefix_matrix, (n, prefix_matrix.shape[1])), np.full(n, int(prefix_len[0])))]
            if nullable:
                prefix.insert(0, (np.full((n, 1), 2, dtype=np.uint8), np.ones(n, dtype=np.int64)))
            return [*prefix, (column.matrix, np.full(n, width))]
        if isinstance(column, Floats) and kind in ("double", "float") and nullable:
            present = ~np.isnan(column.values)
            dtype, size = ("<f8", 8) if kind == "double" else ("<f4", 4)
            values = column.values.astype(dtype).view(np.uint8).reshape(n, size)
            return [
                (present.astype(np.uint8)[:, None] * 2, np.ones(n, dtype=np.int64)),
                (values, present * size),
            ]
        return self._nullable(kind, materialize(column), symbols, nullable)

    @classmethod
    def _nullable(
        cls, kind: str, column: np.ndarray, symbols: Any, nullable: bool
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        if not nullable:
            return cls._values(kind, column, symbols)
        n = len(column)
        present = np.array([v is not None for v in column.tolist()], dtype=bool)
        parts = [(present.astype(np.uint8)[:, None] * 2, np.ones(n, dtype=np.int64))]  # union branch: 0 or 1
        if present.any():
            for matrix, lengths in cls._values(kind, column[present], symbols):
                full = np.zeros((n, matrix.shape[1]), dtype=np.uint8)
                full[present] = matrix
                full_lengths = np.zeros(n, dtype=np.int64)
                full_lengths[present] = lengths
                parts.append((full, full_lengths))
        return parts

    @classmethod
    def _values(cls, kind: str, column: np.ndarray, symbols: Any) -> list[tuple[np.ndarray, np.ndarray]]:
        n = len(column)
        if kind == "string":
            items = column.tolist()
            lengths = np.fromiter(map(len, items), dtype=np.int64, count=n)
            wide = np.array(items, dtype="U")
            codes = wide.view(np.uint32).reshape(n, -1)
            if codes.size and int(codes.max()) < 0x80:  # ASCII: characters are the bytes
                text = codes.astype(np.uint8)
            else:
                encoded = [v.encode() for v in items]
                lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=n)
                text = np.array(encoded, dtype=f"S{max(int(lengths.max()), 1)}").view(np.uint8).reshape(n, -1)
            return [_varints(lengths), (text, lengths)]
        if kind in ("long", "int"):
            return [_varints(np.asarray(column, dtype=np.int64))]
        if kind == "enum":
            return [_varints(np.array([symbols[v] for v in column.tolist()], dtype=np.int64))]
        if kind == "double":
            return [(np.asarray(column, dtype="<f8").view(np.uint8).reshape(n, 8), np.full(n, 8))]
        if kind == "float":
            return [(np.asarray(column, dtype="<f4").view(np.uint8).reshape(n, 4), np.full(n, 4))]
        if kind == "boolean":
            return [(np.asarray(column, dtype=bool).astype(np.uint8)[:, None], np.ones(n, dtype=np.int64))]
        raise ValueError(f"unsupported Avro type {kind}")


def _join_rows(parts: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Row i of every part, its first lengths[i] bytes each, concatenated: (all the bytes, row lengths)."""
    matrix = np.hstack([m for m, _ in parts])
    mask = np.hstack([np.arange(m.shape[1]) < lengths[:, None] for m, lengths in parts])
    return matrix[mask], np.sum([lengths for _, lengths in parts], axis=0)


def _pad_rows(flat: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated rows back into a zero-padded (rows, longest) matrix."""
    width = int(lengths.max()) if len(lengths) else 0
    out = np.zeros((len(lengths), width), dtype=np.uint8)
    out[np.arange(width) < lengths[:, None]] = flat
    return out, lengths


def _varints(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Avro zigzag varints of int64s, as a (n, width) byte matrix and each row's length."""
    v = values.astype(np.int64)
    z = ((v << 1) ^ (v >> 63)).view(np.uint64)
    lengths = np.ones(len(z), dtype=np.int64)
    rest = z >> np.uint64(7)
    width = 1
    while rest.any():
        lengths += rest > 0
        rest = rest >> np.uint64(7)
        width += 1
    shifts = (np.arange(width, dtype=np.uint64) * np.uint64(7))[None, :]
    matrix = ((z[:, None] >> shifts) & np.uint64(0x7F)).astype(np.uint8)
    matrix |= (np.arange(width)[None, :] < (lengths - 1)[:, None]).astype(np.uint8) << 7
    return matrix, lengths


class _Encoder:
    """The fastest encoder for the schema: columnar when it can, the codec's batch encoder otherwise."""

    def __init__(self, schema_id: int, schema: Any) -> None:
        from pipelines.contracts.codec import Encoder

        schema = getattr(schema, "raw", schema)  # a registry's RegisteredSchema: its text
        schema_json = json.loads(schema) if isinstance(schema, str) else schema
        self.codec = Encoder(schema_id, schema_json)
        self.columnar = ColumnarEncoder(schema_id, schema_json) if ColumnarEncoder.supports(schema_json) else None

    def encode_chunk(self, chunk: TransactionChunk) -> list[bytes]:
        if self.columnar is not None:
            return self.columnar.encode_chunk(chunk)
        return self.codec.encode_batch(chunk.records())

    def encode_one(self, record: dict[str, Any]) -> bytes:
        return self.codec.encode(record)


# ── producing to Kafka ──────────────────────────────────────────────────────────────────────


@dataclass
class GenerateReport:
    """What `generate()` produced. `valid` is exactly what a correct ingest stores."""

    topic: str
    schema_id: int
    seed: int
    produced: int = 0
    valid: int = 0
    malformed: dict[str, int] = field(default_factory=dict)
    first_event_ms: int | None = None
    last_event_ms: int | None = None
    elapsed_s: float = 0.0

    @property
    def events_per_s(self) -> float:
        return self.produced / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "schema_id": self.schema_id,
            "seed": self.seed,
            "produced": self.produced,
            "valid": self.valid,
            "malformed": dict(self.malformed),
            "first_event_ms": self.first_event_ms,
            "last_event_ms": self.last_event_ms,
            "elapsed_s": round(self.elapsed_s, 3),
            "events_per_s": round(self.events_per_s, 1),
        }


class _Deliveries:
    """The producer's delivery reports, counted; one bound callback for every message."""

    __slots__ = ("failed", "first_error")

    def __init__(self) -> None:
        self.failed = 0
        self.first_error: str | None = None

    def __call__(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self.failed += 1
            if self.first_error is None:
                self.first_error = err.str() if hasattr(err, "str") else str(err)


class _MalformedMaker:
    """Messages for the dead-letter path, each failing in exactly one, known way."""

    def __init__(
        self,
        *,
        generator: TransactionGenerator,
        encode: Callable[[dict[str, Any]], bytes],
        unknown_schema_id: int,
        settings: Settings,
    ) -> None:
        self._records = (r for chunk in generator.chunks(256) for r in chunk.records())
        self._unknown_id = unknown_schema_id
        self._encode = encode
        rules = settings.pipeline.rules
        self._rules = rules
        self._bad_currency = next(c for c in ("XXX", "XXY", "XXZ", "ZZZ") if c not in rules.currencies)
        self._rule_turn = 0

    def make(self, kind: str) -> tuple[str, bytes]:
        record = next(self._records)
        key = record["card_id"]
        if kind == "rule_violation":
            return key, self._encode(self._break_rule(record))
        value = self._encode(record)
        if kind == "bad_magic_byte":
            return key, b"\x01" + value[1:]
        if kind == "unknown_schema_id":
            return key, b"\x00" + self._unknown_id.to_bytes(4, "big") + value[5:]
        if kind == "truncated":
            body = len(value) - 5
            return key, value[: 5 + body // 2]  # a prefix of a valid body: only running out of bytes can fail
        if kind == "wrong_type":
            return key, self._undecodable(value)
        raise UsageError(f"unknown malformed kind {kind!r}; choose from {', '.join(MALFORMED_KINDS)}")

    @staticmethod
    def _undecodable(value: bytes) -> bytes:
        # The valid message with its transaction_id's 36 characters replaced by bytes that are
        # never UTF-8 (0xFF): the length prefix and every later field stay in place, so the
        # decoder fails on the type of the very first field, not by running out of bytes. (For
        # a schema that doesn't start with the 36-character id: trailing bytes after a complete
        # record, which a decoder must refuse too.)
        if len(value) > 42 and value[5] == 72:  # zigzag varint of the length 36
            return value[:6] + b"\xff" * 36 + value[42:]
        return value + b"\xff\xff\xff\xff"

    def _break_rule(self, record: dict[str, Any]) -> dict[str, Any]:
        turn = self._rule_turn % 3
        self._rule_turn += 1
        record = dict(record)
        if turn == 0:
            low = self._rules.min_amount_minor - 1
            record["amount_minor"] = low if low >= -(2**63) else self._rules.max_amount_minor + 1
        elif turn == 1:
            record["currency"] = self._bad_currency
        else:
            ahead_ms = self._rules.max_future_s * 1000 + 86_400_000
            record["event_time"] = int(time.time() * 1000) + ahead_ms
        return record


def _check_malformed(malformed: Mapping[str, int] | None) -> dict[str, int]:
    wanted = {k: 0 for k in MALFORMED_KINDS}
    for kind, n in (malformed or {}).items():
        if kind not in wanted:
            raise UsageError(f"unknown malformed kind {kind!r}", hint=f"choose from {', '.join(MALFORMED_KINDS)}")
        if not isinstance(n, int) or n < 0:
            raise UsageError(f"malformed count for {kind} must be a non-negative integer, got {n!r}")
        wanted[kind] = n
    return wanted


def _unknown_schema_id(registry: Any) -> int:
    """An id the registry has no schema for (999999 unless, improbably, it has one)."""
    from pipelines.contracts.registry import SchemaNotFoundError

    for candidate in (999_999, 999_998, 2**31 - 1, 123_456_789):
        try:
            registry.get_schema(candidate)
        except SchemaNotFoundError:
            return candidate
    raise RegistryError("could not find a schema id the registry does not know, for unknown_schema_id")


class MessageStream:
    """The messages of one run, without Kafka: valid events and the malformed mix, interleaved.

    `next_batch()` hands out (keys, values) of up to `batch_size` valid events plus the malformed
    messages due among them; the counters say what was handed out. By count, malformed messages
    sit at seeded-random positions of the whole stream; by duration (`count=None`), at
    seeded-random moments in the first 90% of it, the rest going out with `finish()`.
    """

    def __init__(
        self,
        *,
        settings: Settings,
        reference: ReferenceData,
        schema_id: int,
        schema: Any,
        seed: int = 0,
        count: int | None = None,
        duration_s: float | None = None,
        malformed: Mapping[str, int] | None = None,
        start_ms: int | None = None,
        spread_s: float | None = None,
        unknown_schema_id: int = 999_999,
        batch_size: int = 10_000,
    ) -> None:
        if seed < 0:
            raise UsageError(f"the seed must be a non-negative integer, got {seed}")
        rules = settings.pipeline.rules
        wanted = _check_malformed(malformed)
        options: dict[str, Any] = {
            "merchants": reference.merchants, "fx_rates": reference.fx_rates,
            "currencies": [c for c in rules.currencies if c in reference.fx_rates],
            "start_ms": start_ms, "spread_s": spread_s,
            "min_amount_minor": rules.min_amount_minor, "max_amount_minor": rules.max_amount_minor,
        }  # fmt: skip
        self.schema_id = schema_id
        self.count = count
        self._encoder = _Encoder(schema_id, schema)
        self._chunks = TransactionGenerator(seed=seed, **options).chunks(batch_size)
        self.valid = 0
        self.malformed = {k: 0 for k in MALFORMED_KINDS}
        self.first_event_ms: int | None = None
        self.last_event_ms: int | None = None

        total = sum(wanted.values())
        rng = np.random.default_rng([seed, 0x6D61])
        self._kinds = rng.permutation(np.array([k for k in MALFORMED_KINDS for _ in range(wanted[k])], dtype=object))
        if count is not None:
            # stream position of each malformed message → "goes right before valid event #i"
            positions = np.sort(rng.choice(count + total, size=total, replace=False))
            self._due: np.ndarray = positions - np.arange(total)
        else:
            self._due = np.sort(rng.uniform(0, (duration_s or 0) * 0.9, size=total))
        self._next = 0
        self._maker = (
            _MalformedMaker(
                generator=TransactionGenerator(seed=seed, stream=1, **options),
                encode=self._encoder.encode_one,
                unknown_schema_id=unknown_schema_id,
                settings=settings,
            )
            if total
            else None
        )

    @property
    def produced(self) -> int:
        return self.valid + sum(self.malformed.values())

    @property
    def done(self) -> bool:
        return self.count is not None and self.valid >= self.count and self._next == len(self._kinds)

    def next_batch(self, elapsed_s: float = 0.0) -> tuple[list[str], list[bytes]]:
        """The next valid events with the malformed ones due among them (by duration: due by `elapsed_s`)."""
        if self.count is not None and self.valid >= self.count:
            return self.finish()
        chunk = next(self._chunks)
        if self.count is not None:
            chunk = chunk[: self.count - self.valid]
        values = self._encoder.encode_chunk(chunk)
        keys = chunk.keys
        n = len(values)
        if n:
            times = chunk.column("event_time")
            lo, hi = int(times.min()), int(times.max())
            self.first_event_ms = lo if self.first_event_ms is None else min(self.first_event_ms, lo)
            self.last_event_ms = hi if self.last_event_ms is None else max(self.last_event_ms, hi)
        if self.count is None:
            self.valid += n
            upto = int(np.searchsorted(self._due, elapsed_s, side="right"))
            extra_keys, extra_values = self._malformed(upto)
            return keys + extra_keys, values + extra_values
        out_keys: list[str] = []
        out_values: list[bytes] = []
        start = self.valid
        done = 0
        end = int(np.searchsorted(self._due, start + n, side="left"))  # due before this chunk's last event
        while self._next < end:
            at = int(self._due[self._next]) - start
            out_keys += keys[done:at]
            out_values += values[done:at]
            done = at
            k, v = self._malformed(self._next + 1)
            out_keys += k
            out_values += v
        out_keys += keys[done:]
        out_values += values[done:]
        self.valid += n
        if self.valid >= self.count:  # those placed after the last valid event
            k, v = self._malformed(len(self._kinds))
            out_keys += k
            out_values += v
        return out_keys, out_values

    def finish(self) -> tuple[list[str], list[bytes]]:
        """Whatever malformed messages are still due."""
        return self._malformed(len(self._kinds))

    def _malformed(self, upto: int) -> tuple[list[str], list[bytes]]:
        keys: list[str] = []
        values: list[bytes] = []
        while self._next < upto:
            assert self._maker is not None
            kind = str(self._kinds[self._next])
            key, value = self._maker.make(kind)
            keys.append(key)
            values.append(value)
            self.malformed[kind] += 1
            self._next += 1
        return keys, values


def _event_window(
    *, settings: Settings, start_ms: int | None, spread_days: float | None
) -> tuple[int | None, float | None]:
    """(start_ms, spread_s) checked against the rules, so no spread event is invalid."""
    if spread_days is None:
        if start_ms is not None:
            raise UsageError("a start needs spread days (events are spread over [start, start + spread days))")
        return None, None
    if not spread_days > 0:
        raise UsageError(f"spread days must be positive, got {spread_days}")
    rules = settings.pipeline.rules
    now_ms = int(time.time() * 1000)
    spread_s = spread_days * 86_400
    if start_ms is None:
        start_ms = now_ms - int(spread_s * 1000)
    if start_ms + spread_s * 1000 > now_ms:
        raise UsageError(
            "start + spread days reaches into the future; ingest would reject those events",
            hint="pick an earlier start or fewer spread days",
        )
    if start_ms < now_ms - rules.max_past_days * 86_400_000 + 3_600_000:
        raise UsageError(
            f"the start is about pipeline.rules.max_past_days ({rules.max_past_days}) days ago or more; "
            "ingest would reject those events",
            hint="pick a later start",
        )
    return start_ms, spread_s


def open_message_stream(
    *,
    settings: Settings,
    seed: int = 0,
    count: int | None = None,
    duration_s: float | None = None,
    malformed: Mapping[str, int] | None = None,
    start_ms: int | None = None,
    spread_days: float | None = None,
    batch_size: int = 10_000,
) -> MessageStream:
    """The configured run's messages, encoded with the subject's latest schema: `generate()` without Kafka.

    With neither `count` nor `duration_s` the stream is endless (the load test's producers use
    that: `keys, values = stream.next_batch()`).
    """
    from pipelines.contracts.reference import load_reference
    from pipelines.contracts.registry import open_registry

    wanted = _check_malformed(malformed)
    start_ms, spread_s = _event_window(settings=settings, start_ms=start_ms, spread_days=spread_days)
    reference = load_reference(settings)
    registry = open_registry(settings)
    schema_id, _version, schema = registry.latest(settings.pipeline.subject)
    return MessageStream(
        settings=settings, reference=reference, schema_id=schema_id, schema=schema, seed=seed, count=count,
        duration_s=duration_s, malformed=wanted, start_ms=start_ms, spread_s=spread_s,
        unknown_schema_id=_unknown_schema_id(registry) if wanted["unknown_schema_id"] else 999_999,
        batch_size=batch_size,
    )  # fmt: skip


def generate(
    *,
    settings: Settings,
    count: int | None = None,
    duration_s: float | None = None,
    rate: float | None = None,
    seed: int = 0,
    topic: str | None = None,
    malformed: Mapping[str, int] | None = None,
    start_ms: int | None = None,
    spread_days: float | None = None,
    on_progress: Callable[[int, float], None] | None = None,
) -> GenerateReport:
    """Produce synthetic transactions (plus an exact malformed mix) to Kafka; every message acknowledged.

    Values are Confluent-framed Avro with the latest schema of `settings.pipeline.subject`, keys
    the card id. Stops after `count` valid events or `duration_s` seconds (exactly one of them),
    at most `rate` messages/s. Malformed messages are interleaved at seeded-random positions.
    `start_ms` / `spread_days` spread event times over a past window (`spread_days` alone: the
    last `spread_days` days); otherwise event times are now. `on_progress(produced, elapsed_s)`
    is called a few times a second. Raises `KafkaError` if any message is not delivered.
    """

    if (count is None) == (duration_s is None):
        raise UsageError("give exactly one of count or duration_s")
    if count is not None and count < 0:
        raise UsageError(f"count must be non-negative, got {count}")
    if duration_s is not None and not duration_s > 0:
        raise UsageError(f"duration must be positive, got {duration_s}")
    if rate is not None and not rate > 0:
        raise UsageError(f"rate must be positive, got {rate}")
    topic = topic or settings.pipeline.topic
    # Pace in slices of ~20 ms of traffic; unpaced, batches of 10k keep "now" event times fresh.
    batch_size = 10_000 if rate is None else int(max(1, min(10_000, rate / 50)))
    stream = open_message_stream(
        settings=settings, seed=seed, count=count, duration_s=duration_s, malformed=malformed,
        start_ms=start_ms, spread_days=spread_days, batch_size=batch_size,
    )  # fmt: skip

    kafka.check_reachable(settings)
    if topic not in kafka.describe_topics(settings, [topic]):
        raise KafkaError(
            f"topic '{topic}' does not exist on {settings.kafka.bootstrap_servers}",
            hint="create it with `nova provision --yes`, or pass an existing topic",
        )
    deliveries = _Deliveries()
    # Delivery reports of failures only, to one callback set at creation: a Python call per
    # delivered message, or a callback passed per produce(), would cost 15–30% of the rate.
    producer = kafka.producer(settings, **{"delivery.report.only.error": True, "on_delivery": deliveries})
    produce, poll = producer.produce, producer.poll
    sent = 0

    def send(keys: list[str], values: list[bytes]) -> None:
        nonlocal sent
        for key, value in zip(keys, values, strict=True):
            try:
                produce(topic, value, key)
            except BufferError:  # the local queue is full: let librdkafka drain it, then retry
                while True:
                    poll(0.05)
                    try:
                        produce(topic, value, key)
                        break
                    except BufferError:
                        continue
            sent += 1

    started = time.perf_counter()
    last_progress = started
    try:
        while not stream.done:
            elapsed = time.perf_counter() - started
            if duration_s is not None and elapsed >= duration_s:
                break
            if rate is not None:  # token bucket: message k may leave at started + k / rate
                wait = sent / rate - elapsed
                if wait > 0:
                    time.sleep(wait)
                    elapsed = time.perf_counter() - started
            send(*stream.next_batch(elapsed))
            poll(0)
            if deliveries.failed:
                break
            if on_progress is not None and time.perf_counter() - last_progress >= 0.1:
                last_progress = time.perf_counter()
                on_progress(sent, last_progress - started)
        if not deliveries.failed:
            send(*stream.finish())
        while producer.flush(1.0) > 0:
            pass
    except KeyboardInterrupt:
        producer.flush(10.0)
        raise
    except kafka.KafkaException as exc:  # e.g. a fatal idempotence error: nothing more can be sent
        reason = exc.args[0].str() if exc.args and hasattr(exc.args[0], "str") else str(exc)
        raise KafkaError(f"producing to topic '{topic}' failed: {reason}") from None
    elapsed = time.perf_counter() - started
    if deliveries.failed:
        raise KafkaError(
            f"{deliveries.failed} of {sent} message(s) to topic '{topic}' were not delivered: {deliveries.first_error}",
            hint="check the broker (`nova stack status`) and re-run; delivered messages stay on the topic",
        )
    if on_progress is not None:
        on_progress(sent, elapsed)
    return GenerateReport(
        topic=topic, schema_id=stream.schema_id, seed=seed, produced=sent, valid=stream.valid,
        malformed=dict(stream.malformed), first_event_ms=stream.first_event_ms,
        last_event_ms=stream.last_event_ms, elapsed_s=elapsed,
    )  # fmt: skip
