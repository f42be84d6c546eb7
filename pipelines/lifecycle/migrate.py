"""`run_tier_migrate`: plan from what is where, then move each due day through the journal.

A run first finishes the moves a crashed run left open, then moves every hot day older than the
policy's hot window to warm, then every warm day older than the warm window to cold (re-reading
the tiers in between, so a day can go hot → warm → cold in one run). The plan is computed from
`system.parts` and the cold manifests, never from what an earlier run believed. A mismatch fails
that day only (its source is kept) and the run goes on with the others; the report says which.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from functools import partial
from typing import Any, Literal

from pipelines.lifecycle.context import Lifecycle
from pipelines.lifecycle.errors import VerificationFailed
from pipelines.lifecycle.journal import Move, State
from pipelines.lifecycle.lock import run_lock
from pipelines.lifecycle.manifest import list_manifests
from pipelines.lifecycle.moves import Mover
from pipelines.lifecycle.tiers import DayParts, Tier, Tiers

Phase = Literal["hot-to-warm", "warm-to-cold"]
PHASES: tuple[Phase, ...] = ("hot-to-warm", "warm-to-cold")
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class Windows:
    """The day boundaries of one table at this run: hot from `hot_from`, warm from `warm_from`."""

    newest: date
    hot_from: date
    warm_from: date

    def to_dict(self) -> dict[str, str]:
        return {k: v.isoformat() for k, v in vars(self).items()}


@dataclass(frozen=True)
class PlanItem:
    """One partition to move: from → to, its size, and whether it finishes a crashed run's move."""

    table: str
    day: date
    move: Move
    rows: int
    bytes: int
    resume: State | None = None

    def to_dict(self) -> dict[str, Any]:
        src, _, dst = self.move.partition("-to-")
        return {
            "table": self.table,
            "partition": self.day.strftime("%Y%m%d"),
            "day": self.day.isoformat(),
            "from": src,
            "to": dst,
            "rows": self.rows,
            "bytes": self.bytes,
            "resume": self.resume,
        }


@dataclass(frozen=True)
class Outcome:
    item: PlanItem
    result: Literal["moved", "failed", "skipped"]
    seconds: float = 0.0
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {**self.item.to_dict(), "result": self.result, "seconds": round(self.seconds, 3), "detail": self.detail}


@dataclass
class MigrateReport:
    dry_run: bool
    windows: dict[str, Windows] = field(default_factory=dict)
    plan: list[PlanItem] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    deferred: int = 0
    elapsed_s: float = 0.0

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.result == "failed"]

    @property
    def moved_rows(self) -> int:
        return sum(o.item.rows for o in self.outcomes if o.result == "moved")

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "windows": {t: w.to_dict() for t, w in self.windows.items()},
            "plan": [i.to_dict() for i in self.plan],
            "outcomes": [o.to_dict() for o in self.outcomes],
            "moved": sum(1 for o in self.outcomes if o.result == "moved"),
            "failed": len(self.failed),
            "deferred": self.deferred,
            "moved_rows": self.moved_rows,
            "elapsed_s": round(self.elapsed_s, 3),
        }


def windows_for(
    tiers: Tiers, days: dict[Tier, dict[date, DayParts]], cold_days: set[date], as_of: date | None
) -> Windows | None:
    """Where hot and warm start, counted back from the newest day the table holds (or `as_of`)."""
    present = set(days["hot"]) | set(days["warm"]) | cold_days
    newest = as_of or (max(present) if present else None)
    if newest is None:
        return None
    hot_from = newest - timedelta(days=tiers.policy.hot_days - 1)
    return Windows(newest, hot_from, hot_from - timedelta(days=tiers.policy.warm_days))


def _phase_items(tiers: Tiers, phase: Phase, days: dict[Tier, dict[date, DayParts]], w: Windows) -> list[PlanItem]:
    if phase == "hot-to-warm":
        return [
            PlanItem(tiers.name, d, "hot-to-warm", p.rows, p.bytes)
            for d, p in sorted(days["hot"].items())
            if d < w.hot_from and p.rows
        ]
    return [
        PlanItem(tiers.name, d, "warm-to-cold", p.rows, p.bytes)
        for d, p in sorted(days["warm"].items())
        if d < w.warm_from and p.rows
    ]


def _after_warm(days: dict[Tier, dict[date, DayParts]], moved: list[PlanItem]) -> dict[Tier, dict[date, DayParts]]:
    """The tiers as they will be once `moved` (hot → warm) are done: for the dry run's second phase."""
    hot, warm = dict(days["hot"]), dict(days["warm"])
    for item in moved:
        parts = hot.pop(item.day)
        before = warm.get(item.day)
        warm[item.day] = (
            parts
            if before is None
            else DayParts(before.rows + parts.rows, before.bytes + parts.bytes, before.min_block, parts.max_block)
        )
    return {"hot": hot, "warm": warm}


def run_tier_migrate(
    *,
    life: Lifecycle,
    dry_run: bool = False,
    max_partitions: int | None = None,
    only: Phase | None = None,
    as_of: date | None = None,
    on_progress: Progress | None = None,
) -> MigrateReport:
    """Plan (and unless `dry_run`, run) the moves of every table in the policy; see the module docstring.

    Raises MigrationLocked when another run holds the lock; StoreError / ColdStoreError abort the
    run (the journal keeps its place). Verification failures are in `report.failed`.
    """
    started = time.monotonic()
    report = MigrateReport(dry_run=dry_run)
    phases = PHASES if only is None else (only,)
    for tiers in life.tiers.values():
        tiers.check_partitioning()
    if dry_run:
        for unit in _units(life):
            _plan_table(life, unit, phases, as_of, report)
        report.elapsed_s = time.monotonic() - started
        return report
    with run_lock(life.state_dir / "run.lock"):
        life.cold.ensure()
        for tiers in life.tiers.values():
            tiers.ensure_warm()
        for unit in _units(life):
            _plan_table(life, unit, phases, as_of, report)
        total = len(report.plan)
        # No limit unless asked: the plan can undercount (a resumed hot → warm day may go on to cold).
        budget = [max_partitions if max_partitions is not None else sys.maxsize]
        for unit in _units(life):
            _run_table(life, unit, phases, as_of, report, budget, total, on_progress)
        report.deferred = max(0, total - len(report.outcomes))
    report.elapsed_s = time.monotonic() - started
    return report


def _units(life: Lifecycle) -> list[Tiers]:
    """What the moves run on: each table, or on a cluster each shard of it (`cluster_tiers`)."""
    return [unit for tiers in life.tiers.values() for unit in tiers.units()]


def _plan_table(
    life: Lifecycle, tiers: Tiers, phases: tuple[Phase, ...], as_of: date | None, report: MigrateReport
) -> None:
    """Add to `report.plan` what this table's run would do, resumes first."""
    open_entries = life.journal(tiers.journal_key).open_entries()
    busy = {e.day for e in open_entries}
    days = tiers.days()
    for entry in open_entries:
        parts = days["hot"].get(entry.day) or days["warm"].get(entry.day)
        report.plan.append(
            PlanItem(tiers.name, entry.day, entry.move, entry.source.rows, parts.bytes if parts else 0, entry.state)
        )
    w = windows_for(tiers, tiers.window_days(days), set(list_manifests(life.cold, tiers.name)), as_of)
    if w is None:
        return
    report.windows[tiers.name] = w
    first: list[PlanItem] = []
    if "hot-to-warm" in phases:
        first = [i for i in _phase_items(tiers, "hot-to-warm", days, w) if i.day not in busy]
        report.plan += first
    if "warm-to-cold" in phases:
        report.plan += [
            i for i in _phase_items(tiers, "warm-to-cold", _after_warm(days, first), w) if i.day not in busy
        ]


def _plan_and_run(mover: Mover, item: PlanItem) -> None:
    mover.run(mover.plan(item.move, item.day))


def _run_table(
    life: Lifecycle,
    tiers: Tiers,
    phases: tuple[Phase, ...],
    as_of: date | None,
    report: MigrateReport,
    budget: list[int],
    total: int,
    on_progress: Progress | None,
) -> None:
    mover = Mover(life, tiers)
    failed_days: set[date] = set()

    def execute(item: PlanItem, run: Callable[[], object]) -> None:
        if budget[0] <= 0:
            return
        if item.day in failed_days:
            report.outcomes.append(Outcome(item, "skipped", detail="an earlier move of the day failed"))
            return
        budget[0] -= 1
        if on_progress:
            on_progress(len(report.outcomes), total, f"{item.table} {item.day} {item.move}")
        t0 = time.monotonic()
        try:
            run()
        except VerificationFailed as exc:
            failed_days.add(item.day)
            report.outcomes.append(Outcome(item, "failed", time.monotonic() - t0, exc.message))
        else:
            report.outcomes.append(Outcome(item, "moved", time.monotonic() - t0))
        if on_progress:
            on_progress(len(report.outcomes), total, f"{item.table} {item.day} {item.move}")

    for entry in life.journal(tiers.journal_key).open_entries():
        item = PlanItem(tiers.name, entry.day, entry.move, entry.source.rows, 0, entry.state)
        execute(item, partial(mover.run, entry))
    for phase in phases:
        days = tiers.days()
        w = windows_for(tiers, tiers.window_days(days), set(list_manifests(life.cold, tiers.name)), as_of)
        if w is None:
            return
        for item in _phase_items(tiers, phase, days, w):
            execute(item, partial(_plan_and_run, mover, item))
