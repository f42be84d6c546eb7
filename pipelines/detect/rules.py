"""The named rules over a batch's feature rows, and the score that combines them.

Each rule reduces a row to one number `x` (and a gate: when the rule applies at all); its
strength is ``clip((x − ramp_from) / (threshold − ramp_from), 0, 1)``, and it fires at
``x ≥ threshold`` (gate open). The rules' score is the noisy-OR ``1 − Π(1 − weight·strength)``:
graded, in [0, 1], and raised by every rule that sees something, so it ranks rows even below
the alert threshold. `config.DetectionConfig`'s docstring has the whole scoring story.

One compiled pass over the feature matrix (numba, like the features) rather than a dozen numpy
passes per rule: the rules cost tens of nanoseconds a row. `_measure` is the one place that says
what each rule looks at.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numba
import numpy as np

from pipelines.detect.config import DetectionConfig, Rule, Rules
from pipelines.detect.features import F

# Rule order = bit order in `RuleResult.fired`; the names are the YAML's keys.
RULE_NAMES: Final = tuple(Rules.model_fields)
_EXPECTED: Final = (
    "card_testing",
    "takeover_burst",
    "impossible_travel",
    "country_hop",
    "amount_spike",
    "compromised_merchant",
    "new_device",
    "channel_shift",
    "decline_burst",
    "high_amount",
    "shared_device",
    "spend_burst",
    "unusual_amount",
)
assert RULE_NAMES == _EXPECTED, "config.Rules and rules._measure must list the same rules in the same order"

# Columns of the parameter matrix, one row per rule.
_ENABLED, _WEIGHT, _RAMP, _THRESHOLD, _ALERT, _P1, _P2, _P3 = range(8)
# The feature columns the rules read. The kernels take their indices as an argument (`_COLS`)
# rather than as globals: numba freezes globals into its on-disk cache, which is invalidated only
# by a change to this file, so a new feature in features.py would leave cached code reading the
# wrong columns. Below, _X is a position in _COLS (a constant of this file, safe to freeze).
_COLUMN_NAMES: Final = (
    "card_small_10m", "card_n_1h", "card_small_1h", "card_sum_amount_1h", "speed_kmh", "distance_km",
    "country_changed", "country_gap_h", "amount_z", "log_card_history", "merchant_risk", "amount_vs_profile",
    "new_device", "new_channel", "card_declined_1h", "device_age_h", "device_rows", "device_cards", "ip_age_h",
    "travel_away_h", "travel_return",
)  # fmt: skip
(
    _SMALL_10M, _N_1H, _SMALL_1H, _SUM_1H, _SPEED, _DIST, _CHANGED, _GAP_H, _Z, _HISTORY, _RISK, _VS_PROFILE,
    _NEW_DEVICE, _NEW_CHANNEL, _DECLINED, _DEVICE_AGE_H, _DEVICE_ROWS, _DEVICE_CARDS, _IP_AGE_H, _AWAY_H,
    _RETURN,
) = range(len(_COLUMN_NAMES))  # fmt: skip
_COLS: Final = np.array([F[name] for name in _COLUMN_NAMES], dtype=np.int64)


@dataclass(frozen=True)
class RuleResult:
    score: np.ndarray  # float64 [n]: noisy-OR of the enabled rules
    fired: np.ndarray  # uint32 [n]: bit k set when RULE_NAMES[k] fired
    alerting: np.ndarray  # bool [n]: a rule with alert: true fired


def rule_params(config: DetectionConfig) -> np.ndarray:
    """The rules as the kernel's parameter matrix: rule × [enabled, weight, ramp, threshold, alert, p1, p2, p3]."""
    out = np.zeros((len(RULE_NAMES), 8), dtype=np.float64)
    for k, name in enumerate(RULE_NAMES):
        rule: Rule = getattr(config.rules, name)
        out[k, :_P1] = (rule.enabled, rule.weight, rule.ramp_from, rule.threshold, rule.alert)
    r = config.rules
    out[0, _P1] = r.card_testing.new_device_weight
    out[0, _P2] = r.card_testing.young_device_h
    out[0, _P3] = math.log1p(r.card_testing.device_min_history) - 1e-6
    out[1, _P1] = math.log1p(r.takeover_burst.min_history) - 1e-6
    out[11, _P1] = r.spend_burst.min_amount_minor
    out[1, _P2] = r.takeover_burst.young_device_h
    out[1, _P3] = math.log(r.takeover_burst.min_ratio) - 1e-9
    out[2, _P1] = r.impossible_travel.min_distance_km
    out[2, _P2] = r.impossible_travel.hold_h
    out[4, _P1] = math.log1p(r.amount_spike.min_history) - 1e-6
    out[4, _P2] = r.amount_spike.min_amount_minor
    out[4, _P3] = math.log(r.amount_spike.min_ratio) - 1e-9
    out[7, _P1] = math.log1p(r.channel_shift.min_history) - 1e-6
    out[12, _P1] = math.log1p(r.unusual_amount.min_history) - 1e-6
    return out


@numba.njit(cache=True)
def _measure(
    f: np.ndarray, c: np.ndarray, amount: float, small: float, p: np.ndarray, x: np.ndarray, gate: np.ndarray
) -> None:  # pragma: no cover
    """Every rule's x and gate for one feature row `f` (rule k in x[k], gate[k]), in straight-line code."""
    # a device new to the card, from an address new to it too (a new phone at home is not a takeover)
    age, ip_age = f[c[_DEVICE_AGE_H]], f[c[_IP_AGE_H]]
    young_ct = 0.0 <= age < p[0, _P2] and ip_age < p[0, _P2]
    young_tb = 0.0 <= age < p[1, _P2] and ip_age < p[1, _P2]
    vs_profile, history = f[c[_VS_PROFILE]], f[c[_HISTORY]]
    # card_testing: small amounts in 10 min (+ a bonus on a device new to an established card), this row small
    x[0] = f[c[_SMALL_10M]] + (p[0, _P1] if young_ct and history >= p[0, _P3] else 0.0)
    gate[0] = amount <= small
    # takeover_burst: rows on a device new to an established card, each well above its habit
    x[1] = f[c[_DEVICE_ROWS]] if young_tb else 0.0
    gate[1] = amount > small and history >= p[1, _P1] and vs_profile >= p[1, _P3]
    # impossible_travel: km/h over a long enough distance, then rows still away from the origin; a row
    # back where the card was before the jump is its holder's, not the clone's
    travel = f[c[_SPEED]] if f[c[_DIST]] >= p[2, _P1] else 0.0
    if 0.0 <= f[c[_AWAY_H]] <= p[2, _P2]:
        travel = max(travel, p[2, _THRESHOLD])
    x[2] = travel
    gate[2] = f[c[_RETURN]] <= 0
    # country_hop: country changes per hour, only without positions
    x[3] = 1.0 / max(f[c[_GAP_H]], 1.0 / 60.0)
    gate[3] = f[c[_CHANGED]] > 0 and f[c[_DIST]] < 0
    # amount_spike: z-score vs the card's profile; enough history, big enough, a real multiple
    x[4] = f[c[_Z]]
    gate[4] = history >= p[4, _P1] and amount >= p[4, _P2] and vs_profile >= p[4, _P3]
    x[5] = f[c[_RISK]]  # compromised_merchant
    gate[5] = True
    x[6] = f[c[_NEW_DEVICE]]  # new_device
    gate[6] = True
    x[7] = f[c[_NEW_CHANNEL]]  # channel_shift, enough history
    gate[7] = history >= p[7, _P1]
    x[8] = f[c[_DECLINED]]  # decline_burst
    gate[8] = True
    x[9] = amount  # high_amount
    gate[9] = True
    x[10] = f[c[_DEVICE_CARDS]]  # shared_device: cards the device paid for
    gate[10] = True
    # spend_burst: ordinary-sized rows in 1 h, and the hour's spend
    x[11] = f[c[_N_1H]] - f[c[_SMALL_1H]]
    gate[11] = f[c[_SUM_1H]] >= p[11, _P1] and amount > small
    # unusual_amount: the amount as a multiple of the card's habit for the category, graded
    x[12] = math.exp(min(vs_profile, 30.0))
    gate[12] = history >= p[12, _P1]


@numba.njit(cache=True, nogil=True)
def _evaluate(
    features: np.ndarray,
    c: np.ndarray,
    amount: np.ndarray,
    small: float,
    p: np.ndarray,
    score: np.ndarray,
    fired: np.ndarray,
) -> None:  # pragma: no cover
    rules = p.shape[0]
    x = np.zeros(rules, dtype=np.float64)
    gate = np.zeros(rules, dtype=np.bool_)
    for i in range(len(amount)):
        keep = 1.0
        bits = 0
        _measure(features[i], c, amount[i], small, p, x, gate)
        for k in range(rules):
            if p[k, _ENABLED] == 0.0 or not gate[k]:
                continue
            ramp, threshold = p[k, _RAMP], p[k, _THRESHOLD]
            strength = min(max((x[k] - ramp) / (threshold - ramp), 0.0), 1.0)
            keep *= 1.0 - p[k, _WEIGHT] * strength
            if x[k] >= threshold:
                bits |= 1 << k
        score[i] = 1.0 - keep
        fired[i] = bits


def evaluate_rules(
    config: DetectionConfig, features: np.ndarray, amount: np.ndarray, params: np.ndarray | None = None
) -> RuleResult:
    """Score, firing and alert-alone flags of every row; `features` is the kernel's matrix, `amount` minor units.

    `params`: `rule_params(config)`, when the caller keeps it.
    """
    params = rule_params(config) if params is None else params
    n = len(amount)
    score = np.empty(n, dtype=np.float64)
    fired = np.empty(n, dtype=np.uint32)
    _evaluate(
        features,
        _COLS,
        np.require(amount, np.float64, ["C", "W", "A"]),
        float(config.small_amount_minor),
        params,
        score,
        fired,
    )
    alert_mask = sum(1 << k for k in range(len(RULE_NAMES)) if params[k, _ALERT] and params[k, _ENABLED])
    alerting = (fired & np.uint32(alert_mask)) != 0 if alert_mask else np.zeros(n, dtype=bool)
    return RuleResult(score=score, fired=fired, alerting=alerting)


def rule_names(mask: int) -> tuple[str, ...]:
    """The names of the rules whose bits are set in `mask`, in RULE_NAMES order."""
    return tuple(name for bit, name in enumerate(RULE_NAMES) if mask >> bit & 1)
