"""The detector's rules and thresholds: `configs/detection.yaml`, validated by pydantic.

Every rule has a name (recognisable against the synthetic scenarios' names), an `enabled` flag,
a `weight`, and a graded threshold: its strength ramps linearly from 0 at `ramp_from` to 1 at
`threshold` (where it *fires* and is named in the alert), so rows below the threshold still
get a partial score and the score ranks rows (ROC AUC, average precision) instead of being 0/1.
The score combines the rules' `weight × strength` by noisy-OR: ``r = 1 − Π(1 − wᵢ·sᵢ)``; a
loaded model's probability `p` joins it: ``1 − (1 − model.rules_weight·r)(1 − model.weight·p)``, where an
unset rules_weight is the model's own (0 or 1, chosen on held-out labelled rows when it was trained).
A row alerts when its score reaches `alert_threshold` (a model ranking alone: `model.alert_threshold`,
by default the one it chose when trained), or when a rule marked `alert: true` fires.

The windows (1 min … 30 d) and features are fixed in code (`features.FEATURE_NAMES`): a model is
trained on them, and a state snapshot holds them. Changing rules here never invalidates state.
A bad file raises `ConfigError` (exit 2) naming the file, the key and the fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipelines.config import PACKAGE_ROOT
from pipelines.errors import ConfigError

DEFAULT_PATH: Final = PACKAGE_ROOT / "configs" / "detection.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Rule(_Strict):
    """What every rule has: on/off, weight, the graded threshold, and whether it alerts alone."""

    enabled: bool = Field(True, description="Off: the rule neither scores nor fires.")
    weight: float = Field(0.5, ge=0, le=1, description="Its score at full strength (noisy-OR with the others).")
    ramp_from: float = Field(0.0, description="Strength 0 here, rising linearly to 1 at threshold.")
    threshold: float = Field(1.0, description="Strength 1 here: the rule fires and is named.")
    alert: bool = Field(False, description="Alert whenever it fires, whatever the score.")

    @model_validator(mode="after")
    def _ramp_below_threshold(self) -> Self:
        if not self.ramp_from < self.threshold:
            raise ValueError(
                f"ramp_from ({self.ramp_from}) must be below threshold ({self.threshold}): "
                "lower ramp_from or raise threshold"
            )
        return self


class CardTesting(Rule):
    """Small authorisations in quick succession (x = small-amount count in 10 min, this row included,
    plus `new_device_weight` when the row's device is new to a card with `device_min_history` rows)."""

    weight: float = Field(0.9, ge=0, le=1)
    ramp_from: float = 1.0
    threshold: float = 3.0
    new_device_weight: float = Field(
        2.0, ge=0, description="Added to x on a device the card first used less than young_device_h ago."
    )
    young_device_h: float = Field(1.0, gt=0, description="A device first seen on the card this recently is new.")
    device_min_history: int = Field(
        10, ge=0, description="Earlier rows the card needs for the bonus (a young card's second device is not news)."
    )


class TakeoverBurst(Rule):
    """Spend on a device new to an established card, well above its habit (x = the device's rows so far,
    this one included, while the device, and its IP address if any, are younger than `young_device_h`)."""

    weight: float = Field(0.8, ge=0, le=1)
    ramp_from: float = 0.0
    threshold: float = 1.0
    young_device_h: float = Field(1.0, gt=0, description="A device first seen on the card this recently is new.")
    min_ratio: float = Field(
        2.0, ge=1, description="Only rows at least this many times the card's typical amount (for its category)."
    )
    min_history: int = Field(
        10,
        ge=3,
        description="Only for cards with at least this many earlier events (a young card's second device is not news).",
    )


class ImpossibleTravel(Rule):
    """An impossible jump (x = km/h from the card's last located event), and the card's rows while it
    stays away from where it jumped from (x = threshold for `hold_h` hours); a row back near the origin is
    its holder's and never fires."""

    weight: float = Field(0.95, ge=0, le=1)
    ramp_from: float = 300.0
    threshold: float = 900.0
    min_distance_km: float = Field(
        100.0, ge=0, description="Ignore moves shorter than this (geo noise, neighbouring terminals)."
    )
    hold_h: float = Field(
        24.0, ge=0, description="Rows this many hours after a jump, still ≥ 100 km from its origin, fire too (0: off)."
    )


class CountryHop(Rule):
    """Country change without positions (x = changes per hour: 3600 / seconds since the other country)."""

    weight: float = Field(0.5, ge=0, le=1)
    ramp_from: float = 0.25
    threshold: float = 1.0


class AmountSpike(Rule):
    """An amount far outside the card's habit (x = z-score of log amount vs the card's 30-day profile, both
    relative to the merchant category's typical amount: 300 EUR is a spike at a bakery, not at an airline)."""

    weight: float = Field(0.8, ge=0, le=1)
    ramp_from: float = 2.0
    threshold: float = 4.0
    min_history: int = Field(5, ge=1, description="Only for cards with at least this many earlier events.")
    min_amount_minor: int = Field(5_000, ge=0, description="Only for amounts of at least this (minor units).")
    min_ratio: float = Field(
        10.0, ge=1, description="…and at least this many times the card's typical amount (its profile's mean)."
    )


class UnusualAmount(Rule):
    """An amount well above the card's habit, graded (x = the amount as a multiple of the card's typical
    amount, both relative to the merchant category): weak alone, so a 3x purchase ranks above the card's
    ordinary ones without alerting, and lends weight to the other rules' evidence."""

    weight: float = Field(0.3, ge=0, le=1)
    ramp_from: float = 1.5
    threshold: float = 6.0
    min_history: int = Field(5, ge=1, description="Only for cards with at least this many earlier events.")


class CompromisedMerchant(Rule):
    """A merchant many later-confirmed frauds passed through (x = its fraud share, from set_merchant_risk)."""

    weight: float = Field(0.8, ge=0, le=1)
    ramp_from: float = 0.02
    threshold: float = 0.4


class NewDevice(Rule):
    """A device the card never used, on a card that has used one (x = 1 for a new device)."""

    weight: float = Field(0.3, ge=0, le=1)
    ramp_from: float = 0.0
    threshold: float = 1.0


class ChannelShift(Rule):
    """A channel the card never used, after enough history (x = 1 for a new channel)."""

    weight: float = Field(0.2, ge=0, le=1)
    ramp_from: float = 0.0
    threshold: float = 1.0
    min_history: int = Field(5, ge=1, description="Only for cards with at least this many earlier events.")


class DeclineBurst(Rule):
    """Repeated declines (x = declined count in 1 h, this row included)."""

    weight: float = Field(0.5, ge=0, le=1)
    ramp_from: float = 1.0
    threshold: float = 3.0


class HighAmount(Rule):
    """A large amount on its own (x = amount in minor units of the reporting currency)."""

    weight: float = Field(0.3, ge=0, le=1)
    ramp_from: float = 20_000.0
    threshold: float = 200_000.0


class SharedDevice(Rule):
    """A device that paid for many of the partition's cards (x = cards seen on it, this row's included)."""

    weight: float = Field(0.9, ge=0, le=1)
    ramp_from: float = 1.0
    threshold: float = 3.0


class SpendBurst(Rule):
    """A burst of ordinary-sized spend within an hour, whatever the device (x = non-small count in 1 h,
    this row included)."""

    weight: float = Field(0.4, ge=0, le=1)
    ramp_from: float = 2.0
    threshold: float = 5.0
    min_amount_minor: int = Field(
        20_000, ge=0, description="…and the hour's spend (this row included) at least this much (minor units)."
    )


class Rules(_Strict):
    card_testing: CardTesting = Field(default_factory=CardTesting)  # type: ignore[arg-type]
    takeover_burst: TakeoverBurst = Field(default_factory=TakeoverBurst)  # type: ignore[arg-type]
    impossible_travel: ImpossibleTravel = Field(default_factory=ImpossibleTravel)  # type: ignore[arg-type]
    country_hop: CountryHop = Field(default_factory=CountryHop)  # type: ignore[arg-type]
    amount_spike: AmountSpike = Field(default_factory=AmountSpike)  # type: ignore[arg-type]
    compromised_merchant: CompromisedMerchant = Field(default_factory=CompromisedMerchant)  # type: ignore[arg-type]
    new_device: NewDevice = Field(default_factory=NewDevice)  # type: ignore[arg-type]
    channel_shift: ChannelShift = Field(default_factory=ChannelShift)  # type: ignore[arg-type]
    decline_burst: DeclineBurst = Field(default_factory=DeclineBurst)  # type: ignore[arg-type]
    high_amount: HighAmount = Field(default_factory=HighAmount)  # type: ignore[arg-type]
    shared_device: SharedDevice = Field(default_factory=SharedDevice)  # type: ignore[arg-type]
    spend_burst: SpendBurst = Field(default_factory=SpendBurst)  # type: ignore[arg-type]
    unusual_amount: UnusualAmount = Field(default_factory=UnusualAmount)  # type: ignore[arg-type]


class ModelBlend(_Strict):
    weight: float = Field(
        1.0, ge=0, le=1, description="The model's probability joins the rules' noisy-OR as weight × p (0: ignore it)."
    )
    rules_weight: float | None = Field(
        None,
        ge=0,
        le=1,
        description=(
            "With a model loaded, the rules' score counts this much: score = 1 − (1 − rules_weight·r)(1 − weight·p). "
            "0 ranks by the model alone (rules still fire, are named, and alert if marked alert). Unset: the "
            "model's own choice, made when it was trained (see model.train_model): 0 if on the latest part of "
            "its training history the model alone ranked the frauds better than with the rules beside it, else 1."
        ),
    )
    alert_threshold: float | None = Field(
        None,
        gt=0,
        le=1,
        description=(
            "With a model ranking alone (rules_weight 0), alert when weight × p reaches this. Unset: the model's "
            "own, chosen when it was trained (see model.train_model): the highest probability that catches as "
            "many frauds of its validation part as the rules and the model together did at alert_threshold, "
            "and never above alert_threshold; a model without one uses alert_threshold."
        ),
    )


class DetectionConfig(_Strict):
    """The whole of configs/detection.yaml."""

    version: int = Field(1, ge=1, le=1, description="Format version of this file (1).")
    alert_threshold: float = Field(0.7, gt=0, le=1, description="Alert when the score reaches this.")
    small_amount_minor: int = Field(
        500, ge=1, description="An amount up to this (minor units, reporting currency) is 'small' (card testing)."
    )
    rules: Rules = Field(default_factory=Rules)
    model: ModelBlend = Field(default_factory=ModelBlend)  # type: ignore[arg-type]


def _describe(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def parse_detection_config(raw: object, *, source: str = "detection config") -> DetectionConfig:
    """Validate an already-parsed mapping; errors name `source`, the key and the fix."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, got {type(raw).__name__}")
    try:
        return DetectionConfig.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            key = _describe(err["loc"])
            if err["type"] == "extra_forbidden":
                lines.append(f"{source}: unknown key '{key}' — remove it or check its spelling")
                continue
            msg = str(err["ctx"]["error"]) if err["type"] == "value_error" else err["msg"]
            got = err.get("input")
            quoted = got is None or isinstance(got, dict) or repr(got) in msg
            lines.append(f"{source}: key '{key}': {msg}{'' if quoted else f' (got {got!r})'}")
        raise ConfigError(
            "invalid detection configuration:\n  " + "\n  ".join(lines),
            hint="fix the keys above (configs/detection.yaml documents each)",
        ) from None


def load_detection_config(path: str | Path | None = None) -> DetectionConfig:
    """Read and validate a detection config (default `configs/detection.yaml`). Raises `ConfigError`."""
    config_path = Path(path) if path is not None else DEFAULT_PATH
    try:
        raw = yaml.safe_load(config_path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"detection config {config_path} does not exist",
            hint="set detection.config in configs/nova.yaml to an existing file",
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{config_path}{where}: invalid YAML", hint="fix the syntax") from None
    except OSError as exc:
        raise ConfigError(f"cannot read detection config {config_path}: {exc.strerror}") from None
    return parse_detection_config(raw, source=str(config_path))
