"""What one load test does: its run id, target rate, the steps of its profile and its users.

A plan is pure data, built and checked here before anything starts (bad arguments are a
`UsageError`, exit 2), then handed to the Locust processes as JSON, so the master, every
worker and the command that judges the run agree on the same steps.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.errors import UsageError
from pipelines.loadtest.shapes import PROFILES, Profile, Step, build_steps

if TYPE_CHECKING:
    from pipelines.config import Settings

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)?")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_RUN_ID = re.compile(r"[0-9a-f]{8}")


@dataclass(frozen=True)
class LoadPlan:
    """Everything the Locust processes and the verdict need to agree on."""

    run_id: str  # 8 hex digits: the first group of every transaction id the run sends
    profile: Profile
    target_rate: float
    peak_rate: int
    steps: tuple[Step, ...]
    producers: int
    analysts: int
    queries: bool
    seed: int

    @property
    def duration_s(self) -> float:
        return self.steps[-1].end_s

    def step_at(self, elapsed_s: float) -> Step | None:
        """The step running `elapsed_s` after the start, None before the start and after the end."""
        if elapsed_s < 0:
            return None
        for step in self.steps:
            if elapsed_s < step.end_s:
                return step
        return None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> LoadPlan:
        raw: dict[str, Any] = json.loads(text)
        raw["steps"] = tuple(Step(**s) for s in raw["steps"])
        return cls(**raw)


def parse_duration(text: str) -> float:
    """`30s`, `5m`, `1h30m`, `250ms` or plain seconds (`90`) → seconds; `UsageError` otherwise."""
    cleaned = text.strip().lower().replace(" ", "")
    pos, total = 0, 0.0
    while pos < len(cleaned):
        match = _DURATION_PART.match(cleaned, pos)
        if match is None:
            break
        total += float(match.group(1)) * _UNIT_S[match.group(2)]
        pos = match.end()
    if not cleaned or pos != len(cleaned):
        raise UsageError(f"cannot read the duration {text!r}", hint="write e.g. 30s, 5m, 1h30m or 90 (seconds)")
    if total <= 0:
        raise UsageError(f"the duration {text!r} must be positive")
    return total


def runs_dir(settings: Settings) -> Path:
    """Where runs keep their files: `loadtest.runs_dir`, else `<state dir>/loadtest`."""
    configured = settings.loadtest.runs_dir
    return settings.resolve(configured) if configured else settings.state_dir / "loadtest"


def new_run_id() -> str:
    """8 random hex digits; 2^32 values, so two runs against one table practically never share one."""
    return secrets.token_hex(4)


def build_plan(
    settings: Settings,
    *,
    profile: str | None = None,
    rate: float | None = None,
    peak_multiplier: float | None = None,
    duration_s: float | None = None,
    producers: int | None = None,
    analysts: int | None = None,
    queries: bool = True,
    run_id: str | None = None,
    seed: int | None = None,
) -> LoadPlan:
    """The plan for these options, with config defaults for what is not given; `UsageError` on bad ones."""
    lt = settings.loadtest
    chosen = profile or lt.profile
    if chosen not in PROFILES:
        raise UsageError(f"unknown profile {chosen!r}", hint=f"use one of {', '.join(PROFILES)}")
    if rate is not None and peak_multiplier is not None:
        raise UsageError("give --rate or --peak-multiplier, not both", hint="--rate R is an absolute messages/s")
    if rate is not None and not rate > 0:
        raise UsageError(f"--rate must be positive, got {rate:g}")
    if peak_multiplier is not None and not peak_multiplier > 0:
        raise UsageError(f"--peak-multiplier must be positive, got {peak_multiplier:g}")
    duration = lt.duration_s if duration_s is None else duration_s
    if not duration > 0:
        raise UsageError(f"the duration must be positive, got {duration:g}s")
    n_producers = lt.processes if producers is None else producers
    if n_producers < 1:
        raise UsageError(f"at least one producer is needed, got {n_producers}", hint="--processes 1 or more")
    n_analysts = lt.analysts if analysts is None else analysts
    if n_analysts < 0:
        raise UsageError(f"--users must be 0 or more, got {n_analysts}")
    if run_id is not None and not _RUN_ID.fullmatch(run_id):
        raise UsageError(f"run id {run_id!r} is not 8 lowercase hex digits")
    peak = settings.peak_events_per_second
    target = rate if rate is not None else peak * (lt.peak_multiplier if peak_multiplier is None else peak_multiplier)
    steps = build_steps(chosen, target=target, peak=peak, duration_s=duration, settings=lt)
    if min(s.duration_s for s in steps) < 1.0:
        raise UsageError(
            f"{duration:g}s split into {len(steps)} steps leaves less than a second per step",
            hint="give a longer --duration",
        )
    return LoadPlan(
        run_id=run_id or new_run_id(),
        profile=chosen,
        target_rate=float(target),
        peak_rate=peak,
        steps=steps,
        producers=n_producers,
        analysts=n_analysts if queries else 0,
        queries=queries,
        seed=secrets.randbelow(2**31) if seed is None else seed,
    )
