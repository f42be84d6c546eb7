"""What a check is asked and what it normalises with: `--by` dimensions, code maps, exponents.

The code maps and exponents are read from the configuration that defines them — the legacy
mapping `nova replay` applies and the FX reference file — never re-listed here, so a channel
code added to `configs/legacy/mapping.yaml` replays and compares alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipelines.contracts.reference import load_fx_rates
from pipelines.dualrun.mapping import load_mapping
from pipelines.dualrun.parity.columns import DEFAULT_BY, DIMENSIONS
from pipelines.errors import ConfigError, UsageError

if TYPE_CHECKING:
    from pipelines.config import Settings

DEFAULT_EXPONENT = 2  # ISO 4217's most common; a currency no config knows is scaled by 10**2


def parse_by(text: str | Sequence[str]) -> tuple[str, ...]:
    """`day,merchant,currency` → a tuple of known dimensions, in the given order. Raises UsageError."""
    parts = [p.strip().lower() for p in (text.split(",") if isinstance(text, str) else text)]
    parts = [p for p in parts if p]
    unknown = [p for p in parts if p not in DIMENSIONS]
    if unknown:
        raise UsageError(
            f"unknown --by dimension {', '.join(map(repr, unknown))}", hint=f"choose from {', '.join(DIMENSIONS)}"
        )
    if not parts:
        raise UsageError("--by names no dimension", hint=f"e.g. --by {','.join(DEFAULT_BY)}")
    if len(set(parts)) != len(parts):
        raise UsageError(f"--by {','.join(parts)} names a dimension twice")
    return tuple(parts)


@dataclass(frozen=True)
class Normalisation:
    """How legacy values become contract values before they are compared."""

    exponents: Mapping[str, int]
    """ISO 4217 minor-unit exponent per currency: amount_minor = amount × 10**exponent."""
    channels: Mapping[str, str]
    """Legacy channel code → contract symbol (`P` → `POS`)."""
    statuses: Mapping[str, str]
    """Legacy status code → contract symbol (`CAPT` → `CAPTURED`)."""

    def exponent(self, currency: str) -> int:
        return self.exponents.get(currency, DEFAULT_EXPONENT)


def load_normalisation(settings: Settings) -> Normalisation:
    """The legacy mapping's code maps and exponents; the FX file's minor units win where it has them.

    Raises ConfigError naming the file when the mapping lacks a code map parity needs.
    """
    mapping = load_mapping(settings=settings)
    maps: dict[str, Mapping[str, str]] = {}
    for name in ("channel", "status"):
        rule = mapping.enums.get(name)
        if rule is None:
            raise ConfigError(
                f"{mapping.source_path}: no key 'enums.{name}'; parity-check maps legacy {name} codes with it",
                hint=f"add enums.{name} with its column and values (legacy code → contract symbol)",
            )
        maps[name] = dict(rule.values)
    exponents = dict(mapping.amount_minor.exponents)
    fx_path = settings.resolve(settings.pipeline.fx_rates)
    if fx_path.exists():
        # ISO 4217 decides, as seeding the warehouse does (it refuses a mapping that disagrees).
        exponents.update({ccy: fx.exponent for ccy, fx in load_fx_rates(fx_path).items()})
    return Normalisation(exponents=exponents, channels=maps["channel"], statuses=maps["status"])
