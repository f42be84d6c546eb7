"""Per-card state and the features computed from it, one row at a time in offset order (numba).

Why numba: every feature is a recurrence over one card's earlier events, so it cannot be a
column operation; a compiled loop over the batch in offset order costs under a microsecond a
row and makes the output independent of batch boundaries by construction (the state after row
i depends only on rows ≤ i). The Python side only turns Arrow columns into numpy arrays.

State is one 320-byte row per card (`CardState`: its fields side by side, so a row costs a few
cache lines, not one miss per field); a card id is hashed (64-bit FNV-1a of its UTF-8 bytes,
deterministic across processes) and found in an open-addressing table. Two distinct card ids
with the same 64-bit hash would share state (chance ~3·10⁻⁸ for a million cards).

Windows are rings of buckets aligned to absolute event-time boundaries (bucket = t // width),
so a window's value at time t covers the buckets of the last `n` widths including t's own:

=========  ============  =====  ==============================  ================
window     bucket width  n      measures                        covers
=========  ============  =====  ==============================  ================
1 min      10 s          6      count                           50–60 s
10 min     1 min         10     count, small-amount count       9–10 min
1 h        10 min        6      count, small, declined, amount  50–60 min
24 h       4 h           6      count, amount                   20–24 h
7 d        1 d           7      count, amount                   6–7 d
30 d       5 d           6      count, amount                   25–30 d
=========  ============  =====  ==============================  ================

Counts per bucket saturate: at 255 in the 1 min–1 h windows, 65535 in the others. A row's
windows include the row itself.

Amounts are judged against the merchant category: the partition keeps each category's running
mean log amount (shrunk towards the overall mean while a category has few rows; counts capped
so it keeps adapting), and `amount_vs_mcc` is a row's log amount minus its category's. The
card's amount profile is an exponentially forgotten (τ = 30 d) mean and variance of that
relative amount — how much above or below its categories' typical this card spends — each new
value winsorised to ±3 σ of the profile so one spike does not widen it (σ floored at 0.5); the
z-score of a row uses the profile *before* the row. So a 400 EUR flight on a card that flies is
ordinary, and 400 EUR at its bakery is not. Without a category column every row is in one
category and the profile is the plain one of log amount.

Devices and IP addresses: the card's last 4 distinct of each, with when each was first seen
(minutes; the card's first device or IP counts as old as the card) and rows per device:
`device_age_h`, `ip_age_h`, `device_rows`. `device_cards` (the engine's `DeviceTable`, not the
card row) counts the partition's cards each device paid for.

Travel: an *impossible jump* is a located row ≥ JUMP_KM from the card's last located row at ≥
JUMP_KMH. It opens an "away" spell remembering where the card was before (its origin): later
located rows still ≥ JUMP_KM from the origin get `travel_away_h` (hours since the jump), and a
row back near the origin (`travel_return` = 1) closes it — which side of a jump is the clone
is the side away from where the card was; a spell is forgotten after 48 h.

Country: only card-present rows (channel not ECOM/MOTO, or unknown) move a card's country, and
only they are compared with it — an online shop's country says nothing of where the card is.

Out-of-order rows within a card (event time earlier than the card's latest): the row is added
to the buckets of its own event time (when they are still inside the ring, so later windows
count it exactly), but the windows it reads are those at the card's latest event time; the
profile adds it with the weight its age has at that time; "last position/country" keep the
latest by event time, and speed compares the row with that latest position (|Δt|). The result
is deterministic: it depends only on the rows in offset order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import numba
import numpy as np

from pipelines.errors import StoreError

# The model's input columns, in the kernel's output order. A model artifact records these; a
# change here is a new FEATURE_VERSION, and artifacts of the old one are refused on load.
FEATURE_NAMES: Final = (
    "log_amount",
    "card_n_1m",
    "card_n_10m",
    "card_n_1h",
    "card_n_1d",
    "card_n_7d",
    "card_n_30d",
    "card_avg_amount_1d",
    "card_avg_amount_7d",
    "card_avg_amount_30d",
    "card_sum_amount_1h",
    "amount_vs_30d",
    "amount_z",
    "amount_vs_profile",
    "card_small_10m",
    "card_small_1h",
    "card_declined_1h",
    "new_device",
    "card_devices",
    "new_channel",
    "card_present",
    "speed_kmh",
    "distance_km",
    "country_changed",
    "country_gap_h",
    "log_gap_s",
    "log_card_history",
    "merchant_risk",
    "merchant_risk_known",
    "amount_vs_mcc",
    "device_age_h",
    "device_rows",
    "ip_age_h",
    "travel_away_h",
    "origin_km",
    "travel_return",
    # Written by the engine, not by the kernel: the device's fan-out (device_cards), the
    # merchant risk of set_merchant_risk(by_window=…) and the rules' noisy-OR score (so a model
    # learns how far to trust the rules, rule by rule of evidence, on its own labelled history):
    "device_cards",
    "merchant_risk_1d",
    "merchant_risk_7d",
    "merchant_risk_30d",
    "rules_score",
)
MERCHANT_RISK_WINDOWS: Final = ("1d", "7d", "30d")
ENGINE_COLUMNS: Final = 2 + len(MERCHANT_RISK_WINDOWS)  # device_cards, the windows, rules_score
FEATURE_VERSION: Final = 3
# Layout of CardState (its arrays and their shapes); a snapshot of another layout is refused.
STATE_VERSION: Final = 2
F: Final = {name: i for i, name in enumerate(FEATURE_NAMES)}
# numba reads module globals as compile-time constants: one per output column.
(
    _O_LOG_AMOUNT, _O_N_1M, _O_N_10M, _O_N_1H, _O_N_1D, _O_N_7D, _O_N_30D, _O_AVG_1D, _O_AVG_7D, _O_AVG_30D,
    _O_SUM_1H, _O_VS_30D, _O_Z, _O_VS_PROFILE, _O_SMALL_10M, _O_SMALL_1H, _O_DECLINED_1H, _O_NEW_DEVICE,
    _O_DEVICES, _O_NEW_CHANNEL, _O_PRESENT, _O_SPEED, _O_DISTANCE, _O_COUNTRY_CHANGED, _O_COUNTRY_GAP_H,
    _O_LOG_GAP_S, _O_HISTORY, _O_RISK, _O_RISK_KNOWN, _O_VS_MCC, _O_DEVICE_AGE_H, _O_DEVICE_ROWS, _O_IP_AGE_H,
    _O_AWAY_H, _O_ORIGIN_KM, _O_RETURN,
) = range(len(FEATURE_NAMES) - ENGINE_COLUMNS)  # fmt: skip
# An impossible jump (the travel features): at least this far, faster than this. Fixed, like the
# windows: part of what the features mean, so a model's input does not move with the rules' config.
JUMP_KM: Final = 100.0
JUMP_KMH: Final = 900.0
_JUMP_HOLD_MIN = 48 * 60  # a jump not returned from is forgotten after this (minutes)
# Merchant-category amount profile: a category's mean log amount is shrunk towards the overall
# mean with this many rows' weight, and counts are capped here so the mean keeps adapting.
_MCC_PRIOR = 20.0
_MCC_CAP = 20_000.0
_OLD_H = 365 * 24.0  # device_age_h / ip_age_h of a card's first device or IP (and the cap of every age)
_SD_FLOOR = 0.5  # log-amount spread below this is treated as this (a card with very regular amounts)

_MS_10S, _MS_1M, _MS_10M, _MS_4H, _MS_1D, _MS_5D = 10_000, 60_000, 600_000, 14_400_000, 86_400_000, 432_000_000
_B0, _B1, _B2, _B3, _B4, _B5 = 6, 10, 6, 6, 7, 6
_DEVICES = 4  # a card's known devices: the last 4 distinct ones
_PROFILE_TAU_MS = 30 * 86_400_000.0
_NO_GAP_S = 30 * 86_400.0  # log_gap_s of a card's first row: as if its last row were 30 days ago
_EMPTY: Final = np.uint64(0)


# One card's state is one 320-byte row (5 cache lines: a row's fields are read together, so
# keeping them adjacent beats one array per field). (name, dtype, width), widest types first so
# every field is aligned; width 0: a scalar per card.
_LAYOUT: Final[tuple[tuple[str, str, int], ...]] = (
    ("last_ms", "i8", 0),  # latest event time of the card
    ("loc_ms", "i8", 0),  # event time of the latest located row
    ("country_ms", "i8", 0),  # event time of the latest row with a country
    ("n_total", "u4", 0),  # rows seen (saturating)
    ("country", "u4", 0),  # 32-bit hash of the latest row's country (0: none yet)
    ("lat", "f4", 0),
    ("lon", "f4", 0),
    ("p0", "f4", 0),  # amount profile (log amount minus its category's): decayed count,
    ("p1", "f4", 0),  # decayed sum,
    ("p2", "f4", 0),  # decayed sum of squares
    ("olat", "f4", 0),  # where the card was before that jump (its origin)
    ("olon", "f4", 0),
    ("devices", "u4", _DEVICES),  # 32-bit hashes of the last distinct devices
    ("ips", "u4", _DEVICES),  # ... and IP addresses
    # Times in whole minutes of event time + 1 (0: none; for a device or IP, 0 is the card's first one,
    # as old as anything known of the card):
    ("jump_min", "u4", 0),  # an impossible jump not yet returned from
    ("dev_min", "u4", _DEVICES),  # when each known device was first seen on the card
    ("ip_min", "u4", _DEVICES),  # when each known IP was
    ("a10m", "f4", _B2),  # amount per 10-min bucket (1 h window)
    ("a4h", "f4", _B3),  # amount per 4-h bucket (24 h)
    ("a1d", "f4", _B4),  # amount per day (7 d)
    ("a5d", "f4", _B5),  # amount per 5 days (30 d)
    ("c4h", "u2", _B3),  # counts per bucket of the 24 h, 7 d and 30 d windows
    ("c1d", "u2", _B4),
    ("c5d", "u2", _B5),
    ("n_devices", "u1", 0),  # distinct devices seen (saturating)
    ("dev_rows", "u1", _DEVICES),  # rows per known device (saturating)
    ("n_ips", "u1", 0),  # distinct IPs seen (saturating)
    ("channels", "u1", 0),  # bit mask of channels seen
    ("c10s", "u1", _B0),  # counts per bucket of the 1 min, 10 min and 1 h windows (saturating at 255)
    ("c1m", "u1", _B1),
    ("s1m", "u1", _B1),  # small-amount counts
    ("c10m", "u1", _B2),
    ("s10m", "u1", _B2),
    ("d10m", "u1", _B2),  # declined counts
)
ROW_BYTES: Final = 320


def _offsets() -> dict[str, tuple[int, np.dtype[np.generic], int]]:
    out: dict[str, tuple[int, np.dtype[np.generic], int]] = {}
    at = 0
    for name, code, width in _LAYOUT:
        dt = np.dtype(code)
        assert at % dt.itemsize == 0, f"{name} is misaligned"
        out[name] = (at, dt, width)
        at += dt.itemsize * max(width, 1)
    assert at <= ROW_BYTES, f"card state needs {at} bytes, more than ROW_BYTES"
    return out


_OFFSETS: Final = _offsets()


INITIAL_CARDS: Final = 1024  # room a new detector starts with


def table_size(cards: int) -> int:
    """Slots of the hash table for `cards` cards: the smallest power of two at least twice as many.

    A power of two because probing wraps with `& (size - 1)`: any other size masks some slots
    out of reach. At most half full, so a probe meets an empty slot after a couple of steps.
    """
    return 1 << max(1, (2 * max(cards, 1) - 1).bit_length())


def _blank_row() -> np.ndarray:
    row = np.zeros((1, ROW_BYTES), dtype=np.uint8)
    for name in ("lat", "lon", "olat", "olon"):  # no position yet
        at, dt, _ = _OFFSETS[name]
        row[:, at : at + dt.itemsize].view(dt)[:] = np.nan
    return row


_BLANK_ROW: Final = _blank_row()


def _blank_rows(capacity: int) -> np.ndarray:
    rows = np.empty((capacity, ROW_BYTES), dtype=np.uint8)
    rows[:] = _BLANK_ROW  # one broadcast copy: ~10x faster than filling four strided fields
    return rows


def _table_for(keys: np.ndarray, vals: np.ndarray, need: int, held: int) -> tuple[np.ndarray, np.ndarray]:
    """The hash table (keys, vals) with room for `need` keys at most half full: these, or a rehashed bigger one."""
    size = table_size(need)
    if size <= len(keys):
        return keys, vals
    new_keys = np.zeros(size, dtype=np.uint64)
    new_vals = np.zeros(size, dtype=np.int32)
    moved = _rehash(keys, vals, new_keys, new_vals)
    assert moved == held, f"rehash moved {moved} of {held} keys"
    return new_keys, new_vals


def _keys_by_slot(keys: np.ndarray, vals: np.ndarray, held: int) -> np.ndarray:
    """Each key of the table in slot order: its content whatever its size or probe order."""
    used = keys != 0
    out = np.zeros(held, dtype=np.uint64)
    out[vals[used]] = keys[used]
    return out


@dataclass
class CardState:
    """Cards' rows (one per slot, growing by half) and the hash table that finds a card's slot."""

    rows: np.ndarray  # uint8 [capacity, ROW_BYTES]
    keys: np.ndarray  # uint64 [table_size]: open-addressing table of card-id hashes (0 = empty)
    vals: np.ndarray  # int32 [table_size]: slot of the key
    cards: int = 0

    def __post_init__(self) -> None:
        size = len(self.keys)
        if size < 2 or size & (size - 1) or len(self.vals) != size:
            raise ValueError(f"card hash table has {size} keys and {len(self.vals)} values; it needs a power of two")

    @classmethod
    def empty(cls, capacity: int = INITIAL_CARDS) -> CardState:
        size = table_size(capacity)
        return cls(_blank_rows(capacity), np.zeros(size, dtype=np.uint64), np.zeros(size, dtype=np.int32))

    @classmethod
    def restored(cls, rows: np.ndarray, keys: np.ndarray, vals: np.ndarray) -> CardState:
        """The state of a snapshot's card rows and (hash, slot) pairs, sized as if its cards were inserted.

        StoreError when the pairs are not one distinct non-zero hash per card, each with its own
        slot: such a table would be a wrong state, not a smaller one.
        """
        cards = len(rows)
        keys = np.ascontiguousarray(keys, dtype=np.uint64)
        vals = np.ascontiguousarray(vals, dtype=np.int64)
        fix = "drop the snapshot and rebuild the state by replay"
        if len(keys) != cards or len(vals) != cards:
            raise StoreError(
                f"detector snapshot has {cards} card rows but {len(keys)} table keys and {len(vals)} slots",
                hint=fix,
            )
        taken = np.zeros(cards, dtype=np.bool_)
        if cards and (vals.min() < 0 or vals.max() >= cards or np.any(keys == 0)):
            raise StoreError(f"detector snapshot's table points outside its {cards} card rows", hint=fix)
        taken[vals] = True
        if not taken.all():
            raise StoreError(f"detector snapshot's table gives two cards the same one of {cards} slots", hint=fix)
        state = cls.empty()
        state.reserve(cards)  # the same growth as inserting the cards one batch at a time
        state.rows[:cards] = rows
        state.cards = cards
        if _rehash(keys, vals.astype(np.int32), state.keys, state.vals) != cards:
            raise StoreError(f"detector snapshot's table holds the same card hash twice ({cards} cards)", hint=fix)
        return state

    @property
    def capacity(self) -> int:
        return len(self.rows)

    def field(self, name: str) -> np.ndarray:
        """A strided view of one field of every row: shape (capacity,) or (capacity, width)."""
        at, dt, width = _OFFSETS[name]
        view = self.rows[:, at : at + dt.itemsize * max(width, 1)].view(dt)
        return view[:, 0] if width == 0 else view

    def fields(self) -> list[np.ndarray]:
        """Every field's view, in _LAYOUT order (the kernel's state arguments)."""
        return [self.field(name) for name, _, _ in _LAYOUT]

    def keys_by_slot(self) -> np.ndarray:
        """Each card's hash, in slot order: the table's content whatever its size or probe order."""
        return _keys_by_slot(self.keys, self.vals, self.cards)

    def reserve(self, new_cards: int) -> None:
        """Room for `new_cards` more cards: rows, and a hash table at most half full."""
        need = self.cards + new_cards
        if need > self.capacity:
            cap = max(need, self.capacity * 3 // 2)  # x1.5, not x2: a million cards should not hold room for two
            rows = _blank_rows(cap)
            rows[: self.cards] = self.rows[: self.cards]
            self.rows = rows
        self.keys, self.vals = _table_for(self.keys, self.vals, need, self.cards)

    def nbytes(self) -> int:
        """Bytes allocated for the state (rows at capacity, plus the table)."""
        return int(self.rows.nbytes + self.keys.nbytes + self.vals.nbytes)


class DeviceTable:
    """A partition's devices: how many of its cards each one paid for (device fan-out).

    A device is a card's own (one card) or a shop's terminal, a family tablet (a few), or a fraud
    ring's (many victims). Counted per partition, in offset order, so it is deterministic and
    snapshotted with the cards: a card change counts when the card is neither of the device's
    last two, which counts distinct cards exactly for up to two and closely beyond.
    """

    def __init__(self, keys: np.ndarray, vals: np.ndarray, last: np.ndarray, count: np.ndarray) -> None:
        self.keys, self.vals, self.last, self.count = keys, vals, last, count
        self.devices = int(np.count_nonzero(keys))

    @classmethod
    def empty(cls, capacity: int = INITIAL_CARDS) -> DeviceTable:
        size = table_size(capacity)
        return cls(
            np.zeros(size, dtype=np.uint64),
            np.zeros(size, dtype=np.int32),
            np.full((capacity, 2), -1, dtype=np.int32),
            np.zeros(capacity, dtype=np.uint16),
        )

    @classmethod
    def restored(cls, keys: np.ndarray, last: np.ndarray, count: np.ndarray) -> DeviceTable:
        n = len(keys)
        if last.shape != (n, 2) or len(count) != n or (n and np.any(keys == 0)):
            raise StoreError(
                f"detector snapshot's device table has {n} keys, {last.shape} cards and {len(count)} counts",
                hint="drop the snapshot and rebuild the state by replay",
            )
        table = cls.empty()
        table.reserve(n)
        table.last[:n] = last
        table.count[:n] = count
        placed = _rehash(np.ascontiguousarray(keys, np.uint64), np.arange(n, dtype=np.int32), table.keys, table.vals)
        if placed != n:
            raise StoreError(
                "detector snapshot's device table holds a device twice", hint="rebuild the state by replay"
            )
        table.devices = n
        return table

    def reserve(self, new: int) -> None:
        need = self.devices + new
        if need > len(self.count):
            cap = max(need, len(self.count) * 3 // 2)
            last = np.full((cap, 2), -1, dtype=np.int32)
            last[: self.devices] = self.last[: self.devices]
            count = np.zeros(cap, dtype=np.uint16)
            count[: self.devices] = self.count[: self.devices]
            self.last, self.count = last, count
        self.keys, self.vals = _table_for(self.keys, self.vals, need, self.devices)

    def update(self, device_hashes: np.ndarray, card_slots: np.ndarray) -> np.ndarray:
        """Fold the rows (in order) in; each row's fan-out after it (0 for a row without a device)."""
        out = np.zeros(len(device_hashes), dtype=np.float32)
        has = np.flatnonzero(device_hashes != 0)
        if len(has) == 0:
            return out
        self.reserve(len(has))
        slots, self.devices = assign_slots(self.keys, self.vals, device_hashes[has], self.devices)
        out[has] = _fanout(slots, np.ascontiguousarray(card_slots[has], np.int32), self.last, self.count)
        return out

    def keys_by_slot(self) -> np.ndarray:
        return _keys_by_slot(self.keys, self.vals, self.devices)

    def nbytes(self) -> int:
        return int(self.keys.nbytes + self.vals.nbytes + self.last.nbytes + self.count.nbytes)


@numba.njit(cache=True, nogil=True)
def _fanout(
    slots: np.ndarray, cards: np.ndarray, last: np.ndarray, count: np.ndarray
) -> np.ndarray:  # pragma: no cover
    out = np.empty(len(slots), dtype=np.float32)
    for i in range(len(slots)):
        d = slots[i]
        c = cards[i]
        if count[d] == 0:
            last[d, 0] = c
            count[d] = 1
        elif c != last[d, 0]:
            if c != last[d, 1] and count[d] < 65535:
                count[d] += 1
            last[d, 1] = last[d, 0]
            last[d, 0] = c
        out[i] = count[d]
    return out


@numba.njit(cache=True, nogil=True)
def hash_strings(offsets: np.ndarray, data: np.ndarray, valid: np.ndarray) -> np.ndarray:  # pragma: no cover
    """64-bit FNV-1a of each string of an Arrow string array (0 for null; never 0 otherwise)."""
    n = len(valid)
    out = np.zeros(n, dtype=np.uint64)
    for i in range(n):
        if not valid[i]:
            continue
        h = np.uint64(14695981039346656037)
        for j in range(offsets[i], offsets[i + 1]):
            h = (h ^ np.uint64(data[j])) * np.uint64(1099511628211)
        out[i] = h if h != 0 else np.uint64(1)
    return out


@numba.njit(cache=True, nogil=True)
def _rehash(old_keys: np.ndarray, old_vals: np.ndarray, keys: np.ndarray, vals: np.ndarray) -> int:  # pragma: no cover
    """Insert the non-zero `old_keys` into the empty power-of-two table `keys`; returns how many went in.

    Fewer than given when a key repeats (kept once) or the table fills up (the rest dropped):
    each probe visits at most every slot once, so it ends whatever the input.
    """
    size = len(keys)
    mask = np.uint64(size - 1)
    placed = 0
    for i in range(len(old_keys)):
        k = old_keys[i]
        if k == 0:
            continue
        j = (k * np.uint64(0x9E3779B97F4A7C15)) & mask
        for _ in range(size):
            if keys[j] == 0:
                keys[j] = k
                vals[j] = old_vals[i]
                placed += 1
                break
            if keys[j] == k:
                break
            j = (j + np.uint64(1)) & mask
    return placed


@numba.njit(cache=True, nogil=True)
def assign_slots(
    keys: np.ndarray, vals: np.ndarray, hashes: np.ndarray, cards: int
) -> tuple[np.ndarray, int]:  # pragma: no cover
    """Each hash's slot, new cards getting the next free ones in order of first appearance.

    The caller reserves room first (`CardState.reserve`), so the table stays at most half full;
    a probe still stops after visiting every slot once, and a full table raises.
    """
    size = len(keys)
    mask = np.uint64(size - 1)
    out = np.empty(len(hashes), dtype=np.int64)
    for i in range(len(hashes)):
        k = hashes[i]
        if k == 0:
            k = np.uint64(1)  # a null card id: one shared slot
        j = (k * np.uint64(0x9E3779B97F4A7C15)) & mask
        found = False
        for _ in range(size):
            if keys[j] == k:
                out[i] = vals[j]
                found = True
                break
            if keys[j] == 0:
                keys[j] = k
                vals[j] = cards
                out[i] = cards
                cards += 1
                found = True
                break
            j = (j + np.uint64(1)) & mask
        if not found:
            raise RuntimeError("card hash table is full: CardState.reserve was not called before assign_slots")
    return out, cards


@numba.njit(cache=True)
def _roll(arr: np.ndarray, s: int, old_b: int, new_b: int) -> None:  # pragma: no cover
    width = arr.shape[1]
    steps = new_b - old_b
    if steps >= width:
        for j in range(width):
            arr[s, j] = 0
    else:
        for j in range(1, steps + 1):
            arr[s, (old_b + j) % width] = 0


@numba.njit(cache=True)
def _total(arr: np.ndarray, s: int) -> float:  # pragma: no cover
    t = 0.0
    for j in range(arr.shape[1]):
        t += arr[s, j]
    return t


@numba.njit(cache=True)
def _bump(arr: np.ndarray, s: int, j: int, limit: int) -> None:  # pragma: no cover
    if arr[s, j] < limit:
        arr[s, j] += 1


@numba.njit(cache=True)
def _remember(  # pragma: no cover
    known: np.ndarray, first_min: np.ndarray, seen: np.ndarray, s: int, value: np.uint32, t_min: np.uint32
) -> tuple[int, bool]:
    """The slot of `value` among card s's last _DEVICES distinct ones (devices or IPs), and whether it is new.

    A new one replaces the oldest, first seen now (0: the card's first one, as old as the card).
    """
    for k in range(min(int(seen[s]), _DEVICES)):
        if known[s, k] == value:
            return k, False
    at = int(seen[s]) % _DEVICES
    known[s, at] = value
    first_min[s, at] = t_min if seen[s] > 0 else 0
    if seen[s] < 255:
        seen[s] += 1
    return at, True


@numba.njit(cache=True)
def _age_h(first_min: np.uint32, t_min: np.uint32) -> float:  # pragma: no cover
    """Hours since a device or IP was first seen (a card's first one: _OLD_H), capped at _OLD_H."""
    if first_min == 0:
        return _OLD_H
    return min(max(int(t_min) - int(first_min), 0) / 60.0, _OLD_H)


@numba.njit(cache=True)
def _haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:  # pragma: no cover
    p1 = math.radians(lat1)
    p2 = math.radians(lat2)
    dp = p2 - p1
    dl = math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2.0 * 6371.0088 * math.asin(min(1.0, math.sqrt(a)))


@numba.njit(cache=True, nogil=True)
def update_and_featurize(  # pragma: no cover
    slots: np.ndarray,
    t_ms: np.ndarray,
    amount: np.ndarray,
    small: np.ndarray,
    declined: np.ndarray,
    device: np.ndarray,
    country: np.ndarray,
    lat: np.ndarray,
    lon: np.ndarray,
    channel_bit: np.ndarray,
    present: np.ndarray,
    merchant_risk: np.ndarray,
    mcc: np.ndarray,
    mcc_n: np.ndarray,
    mcc_mu: np.ndarray,
    ip: np.ndarray,
    last_ms: np.ndarray,
    loc_ms: np.ndarray,
    country_ms: np.ndarray,
    n_total: np.ndarray,
    s_country: np.ndarray,
    s_lat: np.ndarray,
    s_lon: np.ndarray,
    p0: np.ndarray,
    p1: np.ndarray,
    p2: np.ndarray,
    olat: np.ndarray,
    olon: np.ndarray,
    devices: np.ndarray,
    ips: np.ndarray,
    jump_min: np.ndarray,
    dev_min: np.ndarray,
    ip_min: np.ndarray,
    a10m: np.ndarray,
    a4h: np.ndarray,
    a1d: np.ndarray,
    a5d: np.ndarray,
    c4h: np.ndarray,
    c1d: np.ndarray,
    c5d: np.ndarray,
    n_devices: np.ndarray,
    dev_rows: np.ndarray,
    n_ips: np.ndarray,
    channels: np.ndarray,
    c10s: np.ndarray,
    c1m: np.ndarray,
    s1m: np.ndarray,
    c10m: np.ndarray,
    s10m: np.ndarray,
    d10m: np.ndarray,
    out: np.ndarray,
    write: bool,
) -> None:
    """Fold each row into its card's state (in the given order) and write its features to `out`.

    `mcc[i]`: the row's merchant-category index into `mcc_n`/`mcc_mu` (0: unknown; slot 0 is also
    the overall profile), which this updates too.
    """
    for i in range(len(slots)):
        s = slots[i]
        t = t_ms[i]
        amt = amount[i]
        x = math.log(amt + 1.0)
        # The category's typical log amount before this row (shrunk towards the overall one), then
        # the row folded in: the card's profile is of the amount relative to its category.
        k = mcc[i]
        n_all = mcc_n[0]
        if n_all > 0:
            n_k = mcc_n[k] if k != 0 else 0.0
            base = (n_k * mcc_mu[k] + _MCC_PRIOR * mcc_mu[0]) / (n_k + _MCC_PRIOR)
        else:
            base = x
        vs_mcc = x - base
        mcc_n[0] = min(n_all + 1.0, _MCC_CAP)
        mcc_mu[0] += (x - mcc_mu[0]) / mcc_n[0]
        if k != 0:
            mcc_n[k] = min(mcc_n[k] + 1.0, _MCC_CAP)
            mcc_mu[k] += (x - mcc_mu[k]) / mcc_n[k]
        prior = n_total[s]
        is_new = prior == 0
        old = last_ms[s]
        if is_new:
            old = t
        now = max(t, old)
        gap_s = _NO_GAP_S if is_new else max(t - old, 0) / 1000.0

        # Buckets: roll every ring forward to the card's new latest time, then add the row to its own.
        if is_new:
            ob0 = ob1 = ob2 = ob3 = ob4 = ob5 = -(1 << 40)
        else:
            ob0, ob1, ob2 = old // _MS_10S, old // _MS_1M, old // _MS_10M
            ob3, ob4, ob5 = old // _MS_4H, old // _MS_1D, old // _MS_5D
        nb0, nb1, nb2 = now // _MS_10S, now // _MS_1M, now // _MS_10M
        nb3, nb4, nb5 = now // _MS_4H, now // _MS_1D, now // _MS_5D
        if nb0 > ob0:
            _roll(c10s, s, ob0, nb0)
        if nb1 > ob1:
            _roll(c1m, s, ob1, nb1)
            _roll(s1m, s, ob1, nb1)
        if nb2 > ob2:
            _roll(c10m, s, ob2, nb2)
            _roll(s10m, s, ob2, nb2)
            _roll(d10m, s, ob2, nb2)
            _roll(a10m, s, ob2, nb2)
        if nb3 > ob3:
            _roll(c4h, s, ob3, nb3)
            _roll(a4h, s, ob3, nb3)
        if nb4 > ob4:
            _roll(c1d, s, ob4, nb4)
            _roll(a1d, s, ob4, nb4)
        if nb5 > ob5:
            _roll(c5d, s, ob5, nb5)
            _roll(a5d, s, ob5, nb5)
        b = t // _MS_10S
        if b > nb0 - _B0:
            _bump(c10s, s, b % _B0, 255)
        b = t // _MS_1M
        if b > nb1 - _B1:
            j = b % _B1
            _bump(c1m, s, j, 255)
            if small[i]:
                _bump(s1m, s, j, 255)
        b = t // _MS_10M
        if b > nb2 - _B2:
            j = b % _B2
            _bump(c10m, s, j, 255)
            if small[i]:
                _bump(s10m, s, j, 255)
            if declined[i]:
                _bump(d10m, s, j, 255)
            a10m[s, j] += amt
        b = t // _MS_4H
        if b > nb3 - _B3:
            j = b % _B3
            _bump(c4h, s, j, 65535)
            a4h[s, j] += amt
        b = t // _MS_1D
        if b > nb4 - _B4:
            j = b % _B4
            _bump(c1d, s, j, 65535)
            a1d[s, j] += amt
        b = t // _MS_5D
        if b > nb5 - _B5:
            j = b % _B5
            _bump(c5d, s, j, 65535)
            a5d[s, j] += amt

        # Amount profile (of the amount relative to its category): z-score against the profile
        # before this row, then fold the row in.
        w = p0[s]
        z = 0.0
        vs_profile = 0.0
        if w > 0:
            mu = p1[s] / w
            sd = math.sqrt(max(p2[s] / w - mu * mu, 0.0))
            sd_floor = max(sd, _SD_FLOOR)
            vs_profile = vs_mcc - mu if prior >= 3 else 0.0
            z = vs_profile / sd_floor
            xc = min(max(vs_mcc, mu - 3.0 * sd_floor), mu + 3.0 * sd_floor) if prior >= 3 else vs_mcc
        else:
            xc = vs_mcc
        if t >= old:
            decay = math.exp(-(t - old) / _PROFILE_TAU_MS)
            p0[s] = w * decay + 1.0
            p1[s] = p1[s] * decay + xc
            p2[s] = p2[s] * decay + xc * xc
        else:
            age = math.exp(-(old - t) / _PROFILE_TAU_MS)
            p0[s] = w + age
            p1[s] = p1[s] + age * xc
            p2[s] = p2[s] + age * xc * xc

        # Devices and channels.
        t_min = np.uint32(max(t // 60_000, 0) + 1)
        dev = device[i]
        new_dev = 0.0
        dev_age_h = -1.0
        dev_n = 0.0
        if dev != 0:
            at, first = _remember(devices, dev_min, n_devices, s, dev, t_min)
            if first:
                new_dev = 1.0 if n_devices[s] > 1 else 0.0
                dev_rows[s, at] = 0
            if dev_rows[s, at] < 255:
                dev_rows[s, at] += 1
            dev_age_h = _age_h(dev_min[s, at], t_min)
            dev_n = float(dev_rows[s, at])
        addr = ip[i]
        ip_age_h = -1.0
        if addr != 0:
            at, _ = _remember(ips, ip_min, n_ips, s, addr, t_min)
            ip_age_h = _age_h(ip_min[s, at], t_min)
        bit = channel_bit[i]
        new_chan = 1.0 if (bit != 0 and (channels[s] & bit) == 0 and not is_new) else 0.0
        channels[s] |= bit

        # Travel: distance and implied speed from the latest located row.
        # An impossible jump opens a "away" spell that later rows far from its origin continue and a
        # row back near the origin (the card's real holder, most likely) closes.
        speed = 0.0
        dist = -1.0
        away_h = -1.0
        origin_km = -1.0
        returned = 0.0
        la, lo = lat[i], lon[i]
        if not (math.isnan(la) or math.isnan(lo)):
            if not math.isnan(s_lat[s]):
                dist = _haversine_km(s_lat[s], s_lon[s], la, lo)
                dt_h = max(abs(t - loc_ms[s]), 60_000) / 3_600_000.0
                speed = dist / dt_h
            if jump_min[s] != 0 and abs(int(t_min) - int(jump_min[s])) > _JUMP_HOLD_MIN:
                jump_min[s] = 0
            if jump_min[s] != 0:
                origin_km = _haversine_km(olat[s], olon[s], la, lo)
                if origin_km < JUMP_KM:
                    returned = 1.0
                    jump_min[s] = 0
                else:
                    away_h = max(int(t_min) - int(jump_min[s]), 0) / 60.0
            elif speed >= JUMP_KMH and dist >= JUMP_KM:
                olat[s] = s_lat[s]
                olon[s] = s_lon[s]
                jump_min[s] = t_min
                origin_km = dist
                away_h = 0.0
            if t >= loc_ms[s] or math.isnan(s_lat[s]):
                s_lat[s] = la
                s_lon[s] = lo
                loc_ms[s] = t
        ctry = country[i]
        changed = 0.0
        ctry_gap_h = -1.0
        if ctry != 0 and present[i]:  # an online merchant's country says nothing of where the card is
            if s_country[s] != 0 and ctry != s_country[s]:
                changed = 1.0
                ctry_gap_h = abs(t - country_ms[s]) / 3_600_000.0
            if t >= country_ms[s] or s_country[s] == 0:
                s_country[s] = ctry
                country_ms[s] = t

        last_ms[s] = now
        if n_total[s] < 4294967295:
            n_total[s] += 1
        if not write:
            continue

        n10m = _total(c1m, s)
        n1h = _total(c10m, s)
        a1h = _total(a10m, s)
        n1d = _total(c4h, s)
        a1d_ = _total(a4h, s)
        n7d = _total(c1d, s)
        a7d = _total(a1d, s)
        n30 = _total(c5d, s)
        a30 = _total(a5d, s)
        out[i, _O_LOG_AMOUNT] = x
        out[i, _O_N_1M] = _total(c10s, s)
        out[i, _O_N_10M] = n10m
        out[i, _O_N_1H] = n1h
        out[i, _O_N_1D] = n1d
        out[i, _O_N_7D] = n7d
        out[i, _O_N_30D] = n30
        out[i, _O_AVG_1D] = a1d_ / n1d if n1d > 0 else 0.0
        out[i, _O_AVG_7D] = a7d / n7d if n7d > 0 else 0.0
        out[i, _O_AVG_30D] = a30 / n30 if n30 > 0 else 0.0
        out[i, _O_SUM_1H] = a1h
        if n30 > 1:
            avg_prev = (a30 - amt) / (n30 - 1)
            out[i, _O_VS_30D] = x - math.log(max(avg_prev, 0.0) + 1.0)
        else:
            out[i, _O_VS_30D] = 0.0
        out[i, _O_Z] = z
        out[i, _O_VS_PROFILE] = vs_profile
        out[i, _O_SMALL_10M] = _total(s1m, s)
        out[i, _O_SMALL_1H] = _total(s10m, s)
        out[i, _O_DECLINED_1H] = _total(d10m, s)
        out[i, _O_NEW_DEVICE] = new_dev
        out[i, _O_DEVICES] = min(int(n_devices[s]), _DEVICES)
        out[i, _O_NEW_CHANNEL] = new_chan
        out[i, _O_PRESENT] = 1.0 if present[i] else 0.0
        out[i, _O_SPEED] = speed
        out[i, _O_DISTANCE] = dist
        out[i, _O_COUNTRY_CHANGED] = changed
        out[i, _O_COUNTRY_GAP_H] = ctry_gap_h
        out[i, _O_LOG_GAP_S] = math.log1p(gap_s)
        out[i, _O_HISTORY] = math.log1p(prior)
        r = merchant_risk[i]
        out[i, _O_RISK] = 0.0 if math.isnan(r) else r
        out[i, _O_RISK_KNOWN] = 0.0 if math.isnan(r) else 1.0
        out[i, _O_VS_MCC] = vs_mcc
        out[i, _O_DEVICE_AGE_H] = dev_age_h
        out[i, _O_IP_AGE_H] = ip_age_h
        out[i, _O_DEVICE_ROWS] = dev_n
        out[i, _O_AWAY_H] = away_h
        out[i, _O_ORIGIN_KM] = origin_km
        out[i, _O_RETURN] = returned


def as_feature_dict(matrix: np.ndarray) -> dict[str, np.ndarray]:
    """The kernel's output matrix as named columns (views, no copy)."""
    return {name: matrix[:, i] for i, name in enumerate(FEATURE_NAMES)}


def feature_matrix(features: Mapping[str, np.ndarray]) -> np.ndarray:
    """Named feature columns back to a float32 matrix in FEATURE_NAMES order."""
    missing = [n for n in FEATURE_NAMES if n not in features]
    if missing:
        raise KeyError(f"feature columns missing: {', '.join(missing)}")
    return np.column_stack([np.asarray(features[n], dtype=np.float32) for n in FEATURE_NAMES])
