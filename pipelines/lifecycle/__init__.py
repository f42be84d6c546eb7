"""Storage tiers: hot → warm → cold moves that are verified before every drop, and queries across them.

    from pipelines.lifecycle import open_lifecycle, run_tier_migrate

    with open_lifecycle(settings=settings) as life:
        report = run_tier_migrate(life=life, dry_run=True)

Modules: `policy` (configs/lifecycle.yaml), `tiers` (hot/warm on either ClickHouse), `coldstore`
(S3 or a directory), `manifest` (a cold day's files and fingerprint), `fingerprint` (what
"verified" compares), `journal` and `lock` (crash safety, one run at a time), `moves` (one
partition's steps), `migrate` (plan and run), `restore`, `alltiers` (`nova query --all-tiers`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from pipelines.clickhouse import Store
from pipelines.config import Settings
from pipelines.lifecycle.alltiers import TieredSql, tiered_sql
from pipelines.lifecycle.context import Lifecycle, open_lifecycle
from pipelines.lifecycle.errors import ColdStoreError, MigrationLocked, VerificationFailed
from pipelines.lifecycle.fingerprint import Fingerprint
from pipelines.lifecycle.migrate import PHASES, MigrateReport, Outcome, PlanItem, run_tier_migrate
from pipelines.lifecycle.policy import Policy, load_policy
from pipelines.lifecycle.restore import RestoreReport, restore_day

__all__ = [
    "PHASES",
    "ColdStoreError",
    "Fingerprint",
    "Lifecycle",
    "MigrateReport",
    "MigrationLocked",
    "Outcome",
    "PlanItem",
    "Policy",
    "RestoreReport",
    "TieredSql",
    "VerificationFailed",
    "all_tiers_query",
    "load_policy",
    "open_lifecycle",
    "restore_day",
    "run_tier_migrate",
    "tiered_sql",
]


@contextlib.contextmanager
def all_tiers_query(*, settings: Settings, sql: str) -> Iterator[tuple[Store, TieredSql]]:
    """The engine to run `sql` on and `sql` rewritten over every tier (see `alltiers`)."""
    with open_lifecycle(settings=settings) as life:
        yield life.engine, tiered_sql(life=life, sql=sql)
