"""The detector core (pipelines/detect): each rule on hand-built card histories, determinism, state, config, model.

Pure units: no service is needed. Every sequence is built by hand so the right answer is known:
a rule must fire on the fraudulent pattern and stay quiet on its benign look-alike.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.config import load_settings
from pipelines.detect.config import DetectionConfig, load_detection_config, parse_detection_config
from pipelines.detect.engine import Detector, Scored
from pipelines.detect.features import FEATURE_NAMES, INITIAL_CARDS, CardState, table_size
from pipelines.detect.model import FraudModel, _threshold_alone, train_model
from pipelines.errors import ConfigError, StoreError

T0 = 1_767_225_600_000  # 2026-01-01T00:00Z
MIN, HOUR, DAY = 60_000, 3_600_000, 86_400_000
PARIS, LYON, NEW_YORK = (48.8566, 2.3522), (45.7640, 4.8357), (40.7128, -74.0060)

_DEFAULTS: dict[str, Any] = {
    "merchant_id": "m_plain",
    "merchant_category": "5999",
    "currency": "EUR",
    "country": "FR",
    "channel": "POS",
    "status": "CAPTURED",
    "device_id": None,
    "ip_address": None,
    "latitude": None,
    "longitude": None,
}


def table(rows: Sequence[dict[str, Any]]) -> pa.Table:
    """Rows (card_id, t ms, amount minor, overrides) → a batch shaped like the worker's."""
    full = [{**_DEFAULTS, **r} for r in rows]
    n = len(full)
    return pa.table(
        {
            "transaction_id": pa.array([f"tx{i}" for i in range(n)], pa.string()),
            "event_time": pa.array([r["t"] for r in full], pa.timestamp("ms", tz="UTC")),
            "card_id": pa.array([r.get("card_id", "card_a") for r in full], pa.string()),
            "merchant_id": pa.array([r["merchant_id"] for r in full], pa.string()),
            "merchant_category": pa.array([r["merchant_category"] for r in full], pa.string()),
            "amount_minor": pa.array([r["amount"] for r in full], pa.int64()),
            "amount_reporting_minor": pa.array([r["amount"] for r in full], pa.int64()),
            "currency": pa.array([r["currency"] for r in full], pa.string()),
            "country": pa.array([r["country"] for r in full], pa.string()),
            "channel": pa.array([r["channel"] for r in full], pa.string()),
            "status": pa.array([r["status"] for r in full], pa.string()),
            "device_id": pa.array([r["device_id"] for r in full], pa.string()),
            "ip_address": pa.array([r["ip_address"] for r in full], pa.string()),
            "latitude": pa.array([r["latitude"] for r in full], pa.float64()),
            "longitude": pa.array([r["longitude"] for r in full], pa.float64()),
        }
    )


def history(days: int = 20, amount: int = 4_000, **extra: Any) -> list[dict[str, Any]]:
    """A habitual card: one purchase a day around `amount` (±25%), at noon."""
    spread = [0.75, 1.0, 1.25, 0.9, 1.1]
    return [{"t": T0 + d * DAY + 12 * HOUR, "amount": int(amount * spread[d % 5]), **extra} for d in range(days)]


def last(rows: Sequence[dict[str, Any]], det: Detector | None = None) -> tuple[set[str], float, Scored]:
    det = det or Detector(DetectionConfig())
    scored = det.process(table(rows))
    return set(scored.rules[-1]), float(scored.score[-1]), scored


def fires(rule: str, rows: Sequence[dict[str, Any]], det: Detector | None = None) -> bool:
    return rule in last(rows, det)[0]


def test_card_testing_fires_on_small_probes_not_on_ordinary_small_purchases() -> None:
    base = T0 + 20 * DAY
    probes = [{"t": base + i * 40_000, "amount": 50} for i in range(6)]
    names, score, scored = last(history() + probes)
    assert "card_testing" in names and scored.alert[-1] and score >= 0.7
    coffees = [{"t": base + i * 3 * HOUR, "amount": 90} for i in range(6)]  # small, but hours apart
    assert not fires("card_testing", history() + coffees)


def test_spend_burst_fires_on_a_spending_spree_not_on_the_same_spend_over_days() -> None:
    base = T0 + 20 * DAY
    spree = [{"t": base + i * 6 * MIN, "amount": 15_000} for i in range(6)]
    assert fires("spend_burst", history() + spree)
    spread = [{"t": base + i * DAY, "amount": 15_000} for i in range(6)]
    assert not fires("spend_burst", history() + spread)


def test_takeover_burst_fires_on_big_spend_from_a_new_device_and_address_not_on_a_new_phone_at_home() -> None:
    online = {"channel": "ECOM", "device_id": "dev_home", "ip_address": "10.0.0.1"}
    habit = history(**online)
    base = T0 + 20 * DAY
    thief = {"channel": "ECOM", "device_id": "dev_thief", "ip_address": "203.0.113.9"}
    spend = [{"t": base + i * 7 * MIN, "amount": 24_000, **thief} for i in range(3)]
    det = Detector(DetectionConfig())
    scored = det.process(table(habit + spend))
    assert all("takeover_burst" in r for r in scored.rules[-3:]) and scored.alert[-3:].all()
    # the same new device and address, at the card's usual amount: nothing to see
    assert not fires("takeover_burst", [*habit, {"t": base, "amount": 4000, **thief}])
    # a new phone on the home network, even spending more: not a takeover
    new_phone = {"channel": "ECOM", "device_id": "dev_new_phone", "ip_address": "10.0.0.1"}
    assert not fires("takeover_burst", [*habit, {"t": base, "amount": 24000, **new_phone}])
    # the device is no longer new a day later
    later = [{"t": base, "amount": 4_000, **thief}, {"t": base + DAY, "amount": 24_000, **thief}]
    assert not fires("takeover_burst", habit + later)
    # a young card (few earlier rows) has no habit to break
    assert not fires("takeover_burst", [*history(days=4, **online), {"t": base, "amount": 24000, **thief}])


def test_card_testing_fires_on_the_first_probe_from_a_new_device() -> None:
    online = {"channel": "ECOM", "device_id": "dev_home", "ip_address": "10.0.0.1"}
    probe = {"t": T0 + 20 * DAY, "amount": 120, "channel": "ECOM", "device_id": "dev_bot", "ip_address": "198.51.100.7"}
    names, _score, scored = last([*history(**online), probe])
    assert "card_testing" in names and scored.alert[-1]
    # the same small amount from the card's own device is a coffee
    assert not fires("card_testing", [*history(**online), {**probe, **online}])


def test_amount_spike_is_relative_to_the_merchant_category() -> None:
    """A card that buys groceries and the odd flight: a flight is its habit there, 20x at the bakery is not."""
    rows: list[dict[str, Any]] = []
    for d in range(30):
        rows.append({"t": T0 + d * DAY + 10 * HOUR, "amount": 3_000 + 100 * (d % 5), "merchant_category": "5411"})
        if d % 6 == 0:
            rows.append({"t": T0 + d * DAY + 15 * HOUR, "amount": 40_000 + 500 * (d % 4), "merchant_category": "4511"})
    # other cards of the partition teach it what the categories cost
    others = [
        {"t": T0 + i * HOUR, "amount": a, "merchant_category": c, "card_id": f"other{i}"}
        for i in range(200)
        for a, c in [(3_000 + 10 * (i % 7), "5411"), (45_000 + 100 * (i % 9), "4511")]
    ]
    base = T0 + 31 * DAY
    flight = {"t": base, "amount": 45_000, "merchant_category": "4511"}
    bakery = {"t": base, "amount": 60_000, "merchant_category": "5411"}
    assert not fires("amount_spike", others + rows + [flight])
    assert fires("amount_spike", others + rows + [bakery])


def test_shared_device_fires_when_one_device_pays_for_many_cards() -> None:
    base = T0 + 20 * DAY
    ring = {"channel": "ECOM", "device_id": "dev_ring", "ip_address": "192.0.2.1"}
    rows = [{"t": base + i * HOUR, "amount": 9_000, "card_id": f"victim{i}", **ring} for i in range(4)]
    scored = Detector(DetectionConfig()).process(table(rows))
    assert ["shared_device" in r for r in scored.rules] == [False, False, True, True]
    own = [{"t": base + i * HOUR, "amount": 9_000, "card_id": "card_a", **ring} for i in range(4)]
    assert not any("shared_device" in r for r in Detector(DetectionConfig()).process(table(own)).rules)


def test_impossible_travel_fires_on_paris_to_new_york_in_an_hour_not_on_plausible_trips() -> None:
    def trip(frm: tuple[float, float], to: tuple[float, float], hours: float) -> list[dict[str, Any]]:
        start = T0 + 20 * DAY
        return [
            *history(),
            {"t": start, "amount": 3000, "latitude": frm[0], "longitude": frm[1]},
            {"t": start + int(hours * HOUR), "amount": 3000, "latitude": to[0], "longitude": to[1], "country": "US"},
        ]

    names, _score, scored = last(trip(PARIS, NEW_YORK, 1))
    assert "impossible_travel" in names and scored.alert[-1]
    assert scored.features is None
    assert not fires("impossible_travel", trip(PARIS, LYON, 3))  # ~390 km by train
    assert not fires("impossible_travel", trip(PARIS, NEW_YORK, 9))  # a flight: ~650 km/h


def test_impossible_travel_holds_while_the_card_stays_away_and_not_when_its_holder_pays_at_home() -> None:
    start = T0 + 20 * DAY
    at = lambda place, t, **kw: {"t": t, "amount": 3000, "latitude": place[0], "longitude": place[1], **kw}  # noqa: E731
    rows = [
        *history(),
        at(PARIS, start),  # the holder
        at(NEW_YORK, start + 30 * MIN, country="US"),  # the clone: the jump
        at(NEW_YORK, start + 50 * MIN, country="US"),  # still there, a few minutes later: km/h is nothing now
        at(PARIS, start + 70 * MIN),  # the holder again, back at the origin
        at(PARIS, start + 90 * MIN),
    ]
    scored = Detector(DetectionConfig()).process(table(rows))
    assert ["impossible_travel" in r for r in scored.rules[-5:]] == [False, True, True, False, False]
    assert list(scored.alert[-5:]) == [False, True, True, False, False]
    # a plausible trip is never a jump, so a week in New York never holds
    trip = [*history(), at(PARIS, start), at(NEW_YORK, start + 9 * HOUR, country="US"), at(NEW_YORK, start + DAY)]
    assert not any("impossible_travel" in r for r in Detector(DetectionConfig()).process(table(trip)).rules)


def test_country_hop_without_positions_fires_within_minutes_not_after_a_day() -> None:
    start = T0 + 20 * DAY
    hop = [*history(), {"t": start, "amount": 3000}, {"t": start + 20 * MIN, "amount": 3000, "country": "BR"}]
    assert fires("country_hop", hop)
    travel = [*history(), {"t": start, "amount": 3000}, {"t": start + 20 * HOUR, "amount": 3000, "country": "BR"}]
    assert not fires("country_hop", travel)


def test_amount_spike_fires_far_outside_the_cards_habit_not_within_it() -> None:
    spike = [*history(), {"t": T0 + 21 * DAY, "amount": 250000}]
    names, _, scored = last(spike)
    assert "amount_spike" in names and scored.alert[-1]
    assert not fires("amount_spike", [*history(), {"t": T0 + 21 * DAY, "amount": 5500}])
    # a new card has no habit to break
    assert not fires("amount_spike", [{"t": T0, "amount": 4_000}, {"t": T0 + DAY, "amount": 250_000}])


def test_unusual_amount_ranks_a_multiple_of_the_habit_without_alerting_alone() -> None:
    """4x the habit ranks above the card's ordinary purchases but does not alert; at 6x it is named."""
    ordinary = last([*history(), {"t": T0 + 21 * DAY, "amount": 4_400}])
    four = last([*history(), {"t": T0 + 21 * DAY, "amount": 16_000}])
    seven = last([*history(), {"t": T0 + 21 * DAY, "amount": 28_000}])
    assert "unusual_amount" not in ordinary[0] and ordinary[1] < 0.05
    assert "unusual_amount" not in four[0] and 0.1 < four[1] < 0.3 and not four[2].alert[-1]
    assert "unusual_amount" in seven[0] and not seven[2].alert[-1]
    assert 0.3 <= seven[1] < 0.7  # its full weight (and a little high_amount)
    # a card with too little history has no habit to compare with
    assert "unusual_amount" not in last([{"t": T0, "amount": 4_000}, {"t": T0 + DAY, "amount": 40_000}])[0]


def test_compromised_merchant_follows_the_merchant_risk_set() -> None:
    det = Detector(DetectionConfig())
    det.set_merchant_risk({"m_bad": 0.45, "m_plain": 0.0}, as_of_ms=T0 + 19 * DAY)
    rows = [*history(), {"t": T0 + 21 * DAY, "amount": 4000, "merchant_id": "m_bad"}]
    scored = det.process(table(rows), features=True)
    assert "compromised_merchant" in scored.rules[-1]
    assert scored.features is not None
    assert scored.features["merchant_risk"][-1] == pytest.approx(0.45)
    assert scored.features["merchant_risk_known"][-1] == 1.0
    quiet = Detector(DetectionConfig())
    quiet.set_merchant_risk({"m_bad": 0.45}, as_of_ms=T0)
    assert not fires("compromised_merchant", [*history(), {"t": T0 + 21 * DAY, "amount": 4000}], quiet)
    with pytest.raises(ConfigError, match="m_x"):
        det.set_merchant_risk({"m_x": 1.5}, as_of_ms=T0)


def test_new_device_and_channel_shift_fire_on_the_first_unknown_one_only() -> None:
    ecom = history(channel="ECOM", device_id="dev_home")
    assert fires("new_device", [*ecom, {"t": T0 + 21 * DAY, "amount": 4000, "channel": "ECOM", "device_id": "dev_x"}])
    assert not fires(
        "new_device", [*ecom, {"t": T0 + 21 * DAY, "amount": 4000, "channel": "ECOM", "device_id": "dev_home"}]
    )
    pos = history()
    assert fires("channel_shift", [*pos, {"t": T0 + 21 * DAY, "amount": 4000, "channel": "MOTO"}])
    assert not fires("channel_shift", [*pos, {"t": T0 + 21 * DAY, "amount": 4000, "channel": "POS"}])


def test_decline_burst_and_high_amount() -> None:
    base = T0 + 20 * DAY
    declines = [{"t": base + i * 5 * MIN, "amount": 8_000, "status": "DECLINED"} for i in range(3)]
    assert fires("decline_burst", history() + declines)
    assert not fires("decline_burst", history() + declines[:1])
    assert fires("high_amount", [{"t": base, "amount": 300_000}])
    assert not fires("high_amount", [{"t": base, "amount": 10_000}])


def test_a_legit_habit_scores_low_and_the_score_ranks_partial_evidence() -> None:
    _, score, scored = last(history(days=30))
    assert not scored.alert.any()
    assert score < 0.1
    # two small probes: below the card_testing threshold, but already above an ordinary row
    probes = history() + [{"t": T0 + 20 * DAY + i * MIN, "amount": 50} for i in range(2)]
    names, partial, _ = last(probes)
    assert "card_testing" not in names and score < partial < 0.7


def test_disabled_rule_neither_scores_nor_fires() -> None:
    config = parse_detection_config({"rules": {"high_amount": {"enabled": False}}})
    names, score, _ = last([{"t": T0, "amount": 300_000}], Detector(config))
    assert "high_amount" not in names and score == 0.0


def test_rule_alerting_alone_alerts_below_the_threshold() -> None:
    config = parse_detection_config({"rules": {"new_device": {"alert": True}}})
    rows = [
        *history(channel="ECOM", device_id="d1"),
        {"t": T0 + 21 * DAY, "amount": 4000, "channel": "ECOM", "device_id": "d2"},
    ]
    names, score, scored = last(rows, Detector(config))
    assert names == {"new_device"} and score < config.alert_threshold and scored.alert[-1]


def test_corpus_with_only_card_merchant_time_and_amount() -> None:
    n = 200
    rng = np.random.default_rng(3)
    batch = pa.table(
        {
            "event_time": pa.array(T0 + np.sort(rng.integers(0, 30 * DAY, n)), pa.timestamp("ms", tz="UTC")),
            "card_id": pa.array([f"C{i % 9}" for i in range(n)]),
            "merchant_id": pa.array([f"T{i % 13}" for i in range(n)]),
            "amount_minor": pa.array(rng.integers(100, 30_000, n), pa.int64()),
        }
    )
    det = Detector(DetectionConfig())
    det.set_merchant_risk({"T3": 0.6}, as_of_ms=T0)
    scored = det.process(batch, features=True)
    assert scored.features is not None and set(scored.features) == set(FEATURE_NAMES)
    assert np.all((scored.score >= 0) & (scored.score <= 1))
    assert scored.features["card_n_30d"].max() > 10  # the cards' windows fill
    t3 = np.asarray(batch["merchant_id"].to_pylist()) == "T3"
    assert all("compromised_merchant" in r for r in np.asarray(scored.rules, dtype=object)[t3])
    assert det.cards == 9 and det.watermark_ms == int(batch["event_time"].cast(pa.int64()).to_numpy().max())


def _stream(seed: int, n: int = 240) -> pa.Table:
    """Mixed traffic of a few cards: jittered (slightly out-of-order) times, geo, devices, IPs, categories, declines."""
    rng = np.random.default_rng(seed)
    t = T0 + np.cumsum(rng.exponential(4 * MIN, n)).astype(np.int64)
    t = t - (rng.random(n) < 0.1) * rng.integers(0, 20 * MIN, n)  # some rows arrive late within their card
    rows = []
    for i in range(n):
        located = rng.random() < 0.5
        rows.append(
            {
                "card_id": f"card_{rng.integers(0, 6)}",
                "t": int(t[i]),
                "amount": int(rng.choice([50, 900, 4_000, 25_000, 400_000])),
                "merchant_id": f"m_{rng.integers(0, 4)}",
                "country": str(rng.choice(["FR", "DE", "US"])),
                "channel": str(rng.choice(["POS", "ECOM", "ATM", "CONTACTLESS"])),
                "status": str(rng.choice(["CAPTURED", "DECLINED"], p=[0.8, 0.2])),
                "device_id": None if rng.random() < 0.5 else f"dev_{rng.integers(0, 5)}",  # shared: fan-out
                "ip_address": None if rng.random() < 0.5 else f"10.0.0.{rng.integers(0, 5)}",
                "merchant_category": str(rng.choice(["5411", "4511", "5999"])),  # the category profile
                "latitude": float(rng.uniform(40, 50)) if located else None,
                "longitude": float(rng.uniform(-75, 5)) if located else None,
            }
        )
    return table(rows)


def _run(batches: Sequence[pa.Table], det: Detector | None = None) -> tuple[Detector, dict[str, np.ndarray]]:
    det = det or Detector(DetectionConfig())
    det.set_merchant_risk({"m_1": 0.3}, as_of_ms=T0)
    parts = [det.process(b, features=True) for b in batches]
    out = {
        "score": np.concatenate([p.score for p in parts]),
        "alert": np.concatenate([p.alert for p in parts]),
        "rules": np.array([",".join(r) for p in parts for r in p.rules], dtype=object),
    }
    for name in FEATURE_NAMES:
        out[name] = np.concatenate([p.features[name] for p in parts if p.features is not None])
    return det, out


STREAM = _stream(5)
_, WHOLE = _run([STREAM])


# CI: the same examples every run, no example database (like test_columnar_fuzz); a long run explores.
_SPLIT_EXAMPLES = int(os.environ.get("DETECT_SPLIT_EXAMPLES", "0"))


@settings(
    max_examples=_SPLIT_EXAMPLES or 25,
    deadline=None,
    derandomize=not _SPLIT_EXAMPLES,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.lists(st.integers(min_value=0, max_value=STREAM.num_rows), max_size=6))
def test_outputs_do_not_depend_on_batch_boundaries(cuts: list[int]) -> None:
    edges = [0, *sorted(cuts), STREAM.num_rows]
    batches = [STREAM.slice(a, b - a) for a, b in itertools.pairwise(edges)]
    _, split = _run(batches)
    for key, expected in WHOLE.items():
        np.testing.assert_array_equal(split[key], expected, err_msg=key)
    assert any(WHOLE["rules"]), "the stream should make some rules fire"


def test_replay_without_outputs_builds_the_same_state() -> None:
    det_a, _ = _run([STREAM.slice(0, 150)])
    det_b = Detector(DetectionConfig())
    det_b.set_merchant_risk({"m_1": 0.3}, as_of_ms=T0)
    quiet = det_b.process(STREAM.slice(0, 150), emit=False)
    assert not quiet.alert.any() and quiet.rules == [()] * 150
    rest = STREAM.slice(150)
    a, b = det_a.process(rest, features=True), det_b.process(rest, features=True)
    np.testing.assert_array_equal(a.score, b.score)
    assert a.rules == b.rules


def test_snapshot_restore_is_exact() -> None:
    det, _ = _run([STREAM.slice(0, 170)])
    data = det.snapshot()
    again = Detector.restore(DetectionConfig(), data)
    assert again.watermark_ms == det.watermark_ms and again.cards == det.cards
    assert again.merchant_risk_as_of_ms == T0
    rest = STREAM.slice(170)
    a, b = det.process(rest, features=True), again.process(rest, features=True)
    np.testing.assert_array_equal(a.score, b.score)
    assert a.rules == b.rules
    assert a.features is not None and b.features is not None
    for name in FEATURE_NAMES:
        np.testing.assert_array_equal(a.features[name], b.features[name], err_msg=name)
    np.testing.assert_array_equal(a.score, WHOLE["score"][170:])
    assert again.snapshot() == det.snapshot()
    with pytest.raises(StoreError, match="unreadable"):
        Detector.restore(DetectionConfig(), data[: len(data) // 2])


def _many_cards(first: int, count: int, t: int, *, repeat: int = 0) -> pa.Table:
    """`count` new cards (ids from `first`) and `repeat` rows of earlier cards, a second apart."""
    rows = [
        {
            "card_id": f"card_{c}",
            "t": t + i * 1_000,
            "amount": 500 + (c * 7919) % 90_000,
            "country": ("FR", "DE", "US")[c % 3],
            "channel": ("POS", "ECOM", "ATM")[c % 3],
            "device_id": f"dev_{c % 5}",
            "latitude": PARIS[0] if c % 2 else None,
            "longitude": PARIS[1] if c % 2 else None,
        }
        for i, c in enumerate([*range(first, first + count), *range(0, min(repeat, first))])
    ]
    return table(rows)


@pytest.mark.parametrize("cards", [0, 1024, 1025, 3000])
def test_restore_sizes_the_table_for_the_snapshots_cards(cards: int) -> None:
    """A snapshot of more cards than a new table holds restores (this hung forever), and continues exactly.

    0 and 1024 (the initial room, its table exactly half full) are the edges; 3000 was inserted
    across two growths of rows and table, by batches of up to 1000.
    """
    det = Detector(DetectionConfig())
    for first in range(0, cards, 1000):
        det.process(_many_cards(first, min(1000, cards - first), T0 + first * 1_000, repeat=200))
    assert det.cards == cards
    again = Detector.restore(DetectionConfig(), det.snapshot())
    assert again.cards == cards and again.watermark_ms == det.watermark_ms
    keys = again._state.keys
    assert len(keys) == table_size(max(cards, INITIAL_CARDS)) and np.count_nonzero(keys) == cards
    assert again.snapshot() == det.snapshot()
    more = _many_cards(cards, 1500, T0 + 5 * DAY, repeat=1500)  # grows the restored table again
    a, b = det.process(more, features=True), again.process(more, features=True)
    np.testing.assert_array_equal(a.score, b.score)
    assert a.rules == b.rules
    assert a.features is not None and b.features is not None
    for name in FEATURE_NAMES:
        np.testing.assert_array_equal(a.features[name], b.features[name], err_msg=name)
    assert again.cards == det.cards == cards + 1500
    assert again.snapshot() == det.snapshot()


def test_restore_refuses_a_table_that_is_not_one_hash_per_card() -> None:
    det = Detector(DetectionConfig())
    det.process(_many_cards(0, 50, T0))
    st_ = det._state
    rows, keys, slots = st_.rows[: st_.cards], st_.keys_by_slot(), np.arange(st_.cards)
    order = np.random.default_rng(7).permutation(st_.cards)  # older snapshots: pairs in table order
    assert CardState.restored(rows, keys[order], slots[order]).keys_by_slot().tolist() == keys.tolist()
    extra = np.concatenate([keys, keys[:1] + np.uint64(1)])
    with pytest.raises(StoreError, match="50 card rows but 51 table keys"):
        CardState.restored(rows, extra, np.arange(51))
    with pytest.raises(StoreError, match="same card hash twice"):
        CardState.restored(rows, np.concatenate([keys[:-1], keys[:1]]), slots)
    with pytest.raises(StoreError, match="same one of 50 slots"):
        CardState.restored(rows, keys, np.concatenate([slots[:-1], slots[:1]]))
    with pytest.raises(StoreError, match="outside its 50 card rows"):
        CardState.restored(rows, keys, slots + 1)


def test_out_of_order_row_counts_in_later_windows() -> None:
    late_first = [{"t": T0 + 30 * MIN, "amount": 1_000}, {"t": T0, "amount": 1_000}, {"t": T0 + 40 * MIN, "amount": 1}]
    det = Detector(DetectionConfig())
    scored = det.process(table(late_first), features=True)
    assert scored.features is not None
    assert scored.features["card_n_1h"].tolist() == [1, 2, 3]  # the late row is inside the hour
    assert det.watermark_ms == T0 + 40 * MIN
    assert scored.features["log_gap_s"][1] == 0.0  # older than the card's latest row


def test_shipped_config_is_valid_and_documents_the_defaults() -> None:
    shipped = load_detection_config()
    assert shipped == DetectionConfig()
    text = Path("configs/detection.yaml").read_text()
    for name in type(DetectionConfig().rules).model_fields:
        assert f"  {name}:" in text


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"rules": {"card_testing": {"treshold": 5}}}, "unknown key 'rules.card_testing.treshold'"),
        ({"rules": {"card_testing": {"ramp_from": 5, "threshold": 3}}}, "ramp_from (5.0) must be below threshold"),
        ({"rules": {"amount_spike": {"weight": 1.5}}}, "key 'rules.amount_spike.weight'"),
        ({"alert_threshold": 0}, "key 'alert_threshold'"),
        ({"rules": {"no_such_rule": {}}}, "unknown key 'rules.no_such_rule'"),
        ([1, 2], "must be a mapping"),
    ],
)
def test_config_errors_name_the_key_and_the_fix(raw: object, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_detection_config(raw, source="d.yaml")
    assert expected in str(err.value)
    assert err.value.exit_code == 2


def test_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_detection_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules: {card_testing: {weight: [}")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_detection_config(bad)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("alert_threshold: high\n")
    with pytest.raises(ConfigError, match=r"wrong.yaml: key 'alert_threshold'"):
        load_detection_config(wrong)


def test_settings_have_a_detection_section_with_env_overrides() -> None:
    env = {"NOVA_DETECTION__ENABLED": "false", "NOVA_DETECTION__MODEL": "models/fraud.model"}
    settings = load_settings("configs/nova.yaml", environ=env)
    assert settings.detection.enabled is False and settings.detection.model == "models/fraud.model"
    assert load_settings("configs/nova.yaml", environ={}).detection.labels_topic == "transactions.labels"
    with pytest.raises(ConfigError, match=r"detection\.merchant_risk_refresh_s"):
        load_settings("configs/nova.yaml", environ={"NOVA_DETECTION__MERCHANT_RISK_REFRESH_S": "0"})


def _training_data() -> tuple[dict[str, np.ndarray], np.ndarray]:
    _det, out = _run([_stream(seed) for seed in range(1, 4)])
    labels = out["score"] > 0.3
    return {name: out[name] for name in FEATURE_NAMES}, labels


@pytest.mark.parametrize("method", ["lightgbm", "hgb"])
def test_model_round_trip_and_blend(tmp_path: Path, method: str) -> None:
    features, labels = _training_data()
    model = train_model(features, labels, method=method, trees=20)  # type: ignore[arg-type]
    path = model.save(tmp_path / "fraud.model")
    loaded = FraudModel.load(path)
    assert loaded.version == model.version and loaded.version.startswith(method)
    np.testing.assert_array_equal(loaded.predict(features), model.predict(features))
    det = Detector(DetectionConfig(), loaded)
    scored = det.process(STREAM)
    assert det.model_version == model.version
    assert scored.model_score is not None and scored.rule_score is not None
    expected = 1 - (1 - scored.rule_score.astype(np.float64)) * (1 - scored.model_score.astype(np.float64))
    np.testing.assert_allclose(scored.score, expected, atol=1e-6)
    model_only = Detector(parse_detection_config({"model": {"rules_weight": 0}}), loaded).process(STREAM)
    np.testing.assert_allclose(model_only.score, scored.model_score, atol=1e-6)
    assert model_only.rules == scored.rules


def test_rules_score_is_a_feature_and_the_model_chooses_its_rules_weight(tmp_path: Path) -> None:
    features, labels = _training_data()
    scored = Detector(DetectionConfig()).process(STREAM, features=True)
    assert scored.features is not None and scored.rule_score is not None
    np.testing.assert_allclose(scored.features["rules_score"], scored.rule_score, atol=1e-6)
    replayed = Detector(DetectionConfig()).process(STREAM, emit=False, features=True)  # training's path
    assert replayed.features is not None
    np.testing.assert_array_equal(replayed.features["rules_score"], scored.features["rules_score"])
    n = len(labels)
    t = np.arange(n, dtype=np.int64) * MIN
    # the labels are the rules' verdict: the model alone ranks them as well as beside the rules
    chosen = train_model(features, labels, trees=20, event_time_ms=t)
    v = chosen.summary["validation"]
    assert v["frauds"] == int(labels[np.argsort(t)[int(n * 0.75) :]].sum()) >= 20
    assert chosen.rules_weight == (0.0 if v["ap_model"] > v["ap_rules_and_model"] else 1.0)
    assert {"ap_rules", "ap_model", "ap_rules_and_model", "chosen"} <= set(v)
    # frauds the rules get wrong (the big amounts here, and the rules shout on the others): beside the model
    # they only push legitimate rows to the top
    big = features["log_amount"] > np.median(features["log_amount"])
    noisy = {**features, "rules_score": np.where(big, 0.0, 1.0).astype(np.float32)}
    alone = train_model(noisy, big, trees=20, event_time_ms=t)
    assert alone.rules_weight == 0.0 and alone.summary["validation"]["chosen"] == "model"
    # too few frauds to judge on: the rules stay
    few = labels & (np.arange(n) < n // 2)
    kept = train_model(features, few, trees=20, event_time_ms=t)
    assert kept.rules_weight == 1.0 and "too few" in kept.summary["validation"]["chosen"]
    # the choice is in the artifact and the detector follows it unless the config sets rules_weight
    loaded = FraudModel.load(alone.save(tmp_path / "alone.model"))
    assert loaded.rules_weight == 0.0
    by_model = Detector(DetectionConfig(), loaded).process(STREAM)
    assert by_model.model_score is not None
    np.testing.assert_allclose(by_model.score, by_model.model_score, atol=1e-6)
    # an alert says why: "model" where the model's probability alone reached the threshold
    sure = by_model.model_score >= np.float32(0.7)
    assert sure.any() and (~sure).any()
    assert [("model" in r) for r in by_model.rules] == sure.tolist()
    assert by_model.alert[sure].all()
    both = Detector(parse_detection_config({"model": {"rules_weight": 1}}), loaded).process(STREAM)
    assert both.rule_score is not None and both.model_score is not None
    expected = 1 - (1 - both.rule_score.astype(np.float64)) * (1 - both.model_score.astype(np.float64))
    np.testing.assert_allclose(both.score, expected, atol=1e-6)


def test_a_model_ranking_alone_alerts_at_its_own_threshold_keeping_the_recall_of_rules_and_model(
    tmp_path: Path,
) -> None:
    features, _ = _training_data()
    n = len(features["log_amount"])
    t = np.arange(n, dtype=np.int64) * MIN
    big = features["log_amount"] > np.median(features["log_amount"])
    # the frauds are the big amounts, but 40 % of them are not reported yet (labelled legitimate), so the
    # model's probability on them is ~0.6; the rules shout on the small ones and see half of the big ones
    reported = big & (np.random.default_rng(0).random(n) < 0.6)
    half = np.arange(n) % 2 == 0
    partial = {**features, "rules_score": np.where(big, np.where(half, 0.75, 0.0), 1.0).astype(np.float32)}
    model = train_model(partial, reported, trees=20, event_time_ms=t)
    v = model.summary["validation"]
    assert model.rules_weight == 0.0 and v["chosen"] == "model"
    assert model.alert_threshold is not None and model.alert_threshold == v["alert_threshold"] < 0.7
    assert v["recall_model"] >= v["recall_rules_and_model"] > 0.2
    loaded = FraudModel.load(model.save(tmp_path / "alone.model"))
    assert loaded.alert_threshold == model.alert_threshold
    det = Detector(DetectionConfig(), loaded)
    assert det.alert_threshold == model.alert_threshold
    scored = det.process(STREAM)
    assert scored.model_score is not None
    mine = scored.model_score >= np.float32(model.alert_threshold)
    assert mine.any() and (scored.alert == mine).all()
    # the config's model.alert_threshold overrides it; beside the rules the config's alert_threshold holds
    fixed = Detector(parse_detection_config({"model": {"alert_threshold": 0.9}}), loaded)
    assert fixed.alert_threshold == 0.9
    half_weight = Detector(parse_detection_config({"model": {"weight": 0.5}}), loaded)
    assert half_weight.alert_threshold == pytest.approx(0.5 * model.alert_threshold)
    beside = Detector(parse_detection_config({"model": {"rules_weight": 1}}), loaded)
    assert beside.alert_threshold == 0.7
    assert Detector(DetectionConfig()).alert_threshold == 0.7
    # frauds only in the latest part of the history: nothing to fit the judging model on, the rules stay
    late_only = reported & (t >= np.percentile(t, 80))
    assert int(late_only.sum()) >= 20
    kept = train_model(partial, late_only, trees=20, event_time_ms=t)
    assert kept.rules_weight == 1.0 and kept.alert_threshold is None
    assert "too few" in kept.summary["validation"]["chosen"]


def test_the_threshold_alone_keeps_the_recall_of_rules_and_model_unless_it_costs_their_precision() -> None:
    fraud = np.array([True, True, True, True, False, False, False, False, False, False])
    together = np.array([0.9, 0.9, 0.8, 0.1, 0.9, 0.1, 0.1, 0.1, 0.1, 0.1])  # 3 of 4 frauds, precision 3/4
    # the model puts those 3 frauds at 0.5, 0.4, 0.3 and the legitimate rows below: 0.3 keeps the recall
    p = np.array([0.5, 0.4, 0.3, 0.01, 0.2, 0.1, 0.05, 0.04, 0.03, 0.02])
    assert _threshold_alone(fraud, p, together, 0.7) == pytest.approx(0.3)
    # ...and never above the config's threshold
    assert _threshold_alone(fraud, p * 3, together, 0.7) == pytest.approx(0.7)
    # the other frauds below every legitimate row: catching a third would cost precision (3/9 < 3/4), so
    # the lowest probability that keeps 3/4 (the first two frauds alone: 2/2; with the 0.2 row 2/3)
    buried = np.array([0.5, 0.4, 0.001, 0.01, 0.2, 0.1, 0.05, 0.04, 0.03, 0.02])
    assert _threshold_alone(fraud, buried, together, 0.7) == pytest.approx(0.4)
    # the rules and the model caught nothing: the config's threshold
    assert _threshold_alone(fraud, p, np.zeros(10), 0.7) == 0.7


def test_model_with_other_features_or_damaged_is_refused(tmp_path: Path) -> None:
    features, labels = _training_data()
    model = train_model(features, labels, trees=5)
    model.feature_names = (*FEATURE_NAMES[:-1], "terminal_risk_90d")
    with pytest.raises(ConfigError, match="terminal_risk_90d") as err:
        Detector(DetectionConfig(), model)
    assert f"lacks {FEATURE_NAMES[-1]}" in str(err.value) and "nova fraud train" in str(err.value)
    path = train_model(features, labels, trees=5).save(tmp_path / "m.model")
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="damaged"):
        FraudModel.load(path)
    (tmp_path / "x.model").write_text("hello\n")
    with pytest.raises(ConfigError, match="not a nova fraud model"):
        FraudModel.load(tmp_path / "x.model")
    with pytest.raises(ConfigError, match="does not exist"):
        FraudModel.load(tmp_path / "none.model")


def test_an_online_purchase_abroad_is_no_country_hop() -> None:
    start = T0 + 20 * DAY
    shop = [{"t": start, "amount": 3_000}, {"t": start + 10 * MIN, "amount": 3_000, "country": "US", "channel": "ECOM"}]
    names, _, _scored = last(history() + shop)
    assert "country_hop" not in names
    back_home = [*shop, {"t": start + 30 * MIN, "amount": 3_000}]  # the card never left FR
    assert "country_hop" not in last(history() + back_home)[0]


def test_compiled_trees_equal_lightgbm_predict() -> None:
    features, labels = _training_data()
    model = train_model(features, labels, trees=30, leaves=7)
    matrix = np.column_stack([features[n] for n in FEATURE_NAMES])
    np.testing.assert_allclose(
        model.predict(matrix), model.estimator.predict(matrix, num_threads=1), rtol=0, atol=1e-12
    )


def test_merchant_risk_windows_feed_their_features_and_survive_a_snapshot() -> None:
    det = Detector(DetectionConfig())
    det.set_merchant_risk(
        {"m_bad": 0.3}, as_of_ms=T0, by_window={"1d": {"m_bad": 0.9}, "7d": {"m_bad": 0.5, "m_plain": 0.01}}
    )
    rows = [{"t": T0, "amount": 4_000, "merchant_id": "m_bad"}, {"t": T0 + MIN, "amount": 4_000}]
    scored = det.process(table(rows), features=True)
    assert scored.features is not None
    f = scored.features
    assert f["merchant_risk_1d"].tolist() == pytest.approx([0.9, 0.0])
    assert f["merchant_risk_7d"].tolist() == pytest.approx([0.5, 0.01])
    assert f["merchant_risk_30d"].tolist() == pytest.approx([0.3, 0.0])  # not given: the main risk
    again = Detector.restore(DetectionConfig(), det.snapshot())
    more = table([{"t": T0 + 2 * MIN, "amount": 4_000, "merchant_id": "m_bad"}])
    a, b = det.process(more, features=True), again.process(more, features=True)
    assert a.features is not None and b.features is not None
    for name in FEATURE_NAMES:
        np.testing.assert_array_equal(a.features[name], b.features[name], err_msg=name)
    with pytest.raises(ConfigError, match="'90d'"):
        det.set_merchant_risk({}, as_of_ms=T0, by_window={"90d": {}})
