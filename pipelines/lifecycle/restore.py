"""`restore_day`: bring a cold or warm day back to hot, through the same journal and verification.

A day can be in both (late events that went warm after the day went cold): cold comes back first,
then warm. Restoring is for reprocessing or investigation; the policy still applies, so the next
`nova tier-migrate` moves the day down again unless hot_days/warm_days now keep it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from pipelines.errors import UsageError
from pipelines.lifecycle.cluster_tiers import ClusterTiers
from pipelines.lifecycle.context import Lifecycle
from pipelines.lifecycle.fingerprint import Fingerprint
from pipelines.lifecycle.journal import Move
from pipelines.lifecycle.lock import run_lock
from pipelines.lifecycle.manifest import read_manifest
from pipelines.lifecycle.moves import Mover


@dataclass(frozen=True)
class RestoreReport:
    table: str
    day: date
    moves: tuple[Move, ...]
    rows: int
    hot: Fingerprint

    def to_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "day": self.day.isoformat(),
            "moves": list(self.moves),
            "rows_restored": self.rows,
            "hot": self.hot.to_dict(),
        }


def restore_day(*, life: Lifecycle, day: date, table: str | None = None) -> RestoreReport:
    """Move `day` of `table` (default: the policy's first table) from cold and warm into hot, verified."""
    name = table or life.policy.tables[0].name
    if name not in life.tiers:
        raise UsageError(f"table {name!r} has no lifecycle policy", hint=f"choose one of: {', '.join(life.tiers)}")
    tiers = life.tiers[name]
    if isinstance(tiers, ClusterTiers):
        raise UsageError(
            f"restore of {name} on a ClickHouse cluster is not supported yet: a cold day holds one file per shard",
            hint="query the day with nova query --all-tiers, or restore it on a single server",
        )
    with run_lock(life.state_dir / "run.lock"):
        tiers.check_partitioning()
        tiers.ensure_warm()
        mover = Mover(life, tiers)
        for entry in mover.journal.open_entries():
            if entry.day == day:
                mover.run(entry)  # finish what a crashed run left for this day first
        moves: list[Move] = []
        rows = 0
        manifest = read_manifest(life.cold, name, day)
        if manifest is not None and manifest.files:
            rows += mover.run(mover.plan("cold-to-hot", day)).source.rows
            moves.append("cold-to-hot")
        warm = tiers.days()["warm"].get(day)
        if warm is not None and warm.rows:
            rows += mover.run(mover.plan("warm-to-hot", day)).source.rows
            moves.append("warm-to-hot")
        if not moves:
            raise UsageError(
                f"{name} has no warm or cold data for {day}",
                hint="nova tier-migrate --dry-run shows where each day is; `nova query --all-tiers` finds the rows",
            )
        return RestoreReport(name, day, tuple(moves), rows, tiers.fingerprint("hot", day))
