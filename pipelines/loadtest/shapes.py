"""The load shapes: how a profile cuts a run into steps of one target rate each.

- `steady`: the target rate for the whole duration;
- `step`: `loadtest.steps` equal steps up to the target (3 steps at 3× peak: 1×, 2×, 3× peak);
- `spike`: a base rate (`loadtest.spike_base_fraction` of the target), the target for the middle
  fifth of the run, then the base again — does the pipeline recover?;
- `find-max`: `loadtest.find_max_steps` equal steps up to the target as a ceiling; the run stops
  at the first step that breaks an SLO and reports the highest rate that held.

Pure functions of the options: the Locust shape (`loadtests/pipeline.py`) follows the steps
against its clock; only find-max's early stop depends on what is measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:
    from pipelines.config import LoadtestSettings

Profile = Literal["steady", "step", "spike", "find-max"]
PROFILES: tuple[Profile, ...] = get_args(Profile)
_SPIKE_SPLIT = (0.4, 0.2, 0.4)  # before, spike, after: shares of the duration


@dataclass(frozen=True)
class Step:
    """One stretch of the run at one target rate (messages/s summed over every producer)."""

    index: int
    label: str
    rate: float
    start_s: float
    duration_s: float

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s


def rate_label(rate: float, peak: float) -> str:
    """`100,000/s (2× peak)`: the absolute rate and what it is in multiples of the expected peak."""
    return f"{rate:,.0f}/s ({rate / peak:.2g}× peak)"


def build_steps(
    profile: Profile, *, target: float, peak: float, duration_s: float, settings: LoadtestSettings
) -> tuple[Step, ...]:
    """The steps of `profile` for a run of `duration_s` seconds towards `target` messages/s."""
    if profile == "steady":
        return (Step(0, rate_label(target, peak), target, 0.0, duration_s),)
    if profile in ("step", "find-max"):
        n = settings.steps if profile == "step" else settings.find_max_steps
        each = duration_s / n
        return tuple(
            Step(i, f"step {i + 1}: {rate_label(target * (i + 1) / n, peak)}", target * (i + 1) / n, i * each, each)
            for i in range(n)
        )
    base = target * settings.spike_base_fraction
    steps, start = [], 0.0
    for i, (name, share, rate) in enumerate(
        zip(("before the spike", "spike", "after the spike"), _SPIKE_SPLIT, (base, target, base), strict=True)
    ):
        steps.append(Step(i, f"{name}: {rate_label(rate, peak)}", rate, start, duration_s * share))
        start += duration_s * share
    return tuple(steps)
