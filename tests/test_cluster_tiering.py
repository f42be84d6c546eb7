"""`nova tier-migrate` on the local ClickHouse cluster: days move per shard, on the `_local` tables.

The real cluster (`nova stack up --with clickhouse-cluster`): shard 1 with two replicas (:19101,
:19102), shard 2 with one (:19103). Data comes in the real way (`nova generate` into Kafka, `nova
ingest` writing shard-local by partition); totals are checked through Distributed with `nova query
--all-tiers`, and where each day is on every replica of every shard from `system.parts`.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, run_nova, unique
from tests.pipeline_env import wait_until
from tests.test_cluster import CLUSTER_URL, HOSTS, _cluster_up, _on_host  # noqa: F401 (_cluster_up: a fixture)
from tests.test_tier_migrate import Tiered, _days, _policy

pytestmark = [pytest.mark.integration, pytest.mark.server]


@contextlib.contextmanager
def cluster_tiered(tmp_path: Path, *, days: int, per_day: int, hot: int, warm: int) -> Iterator[Tiered]:
    root = tmp_path / "project"
    shutil.copytree(REPO / "configs", root / "configs")
    name = unique("ct")
    _policy(root, table__hot_days=hot, table__warm_days=warm, cold__url=f"file://{tmp_path / 'cold'}")
    env = {
        "NOVA_CONFIG": str(root / "configs" / "nova.yaml"),
        "NOVA_HOME": str(REPO),
        "NOVA_STACK__STATE_DIR": str(root / ".nova"),
        "NOVA_PIPELINE__TOPIC": f"{name}.tx",
        "NOVA_PIPELINE__DLQ_TOPIC": f"{name}.dlq",
        "NOVA_PIPELINE__GROUP_ID": f"{name}-ingest",
        "NOVA_CLICKHOUSE__DATABASE": name,
        "NOVA_CLICKHOUSE__URL": CLUSTER_URL,
        "NOVA_CLICKHOUSE__CLUSTER__NAME": "nova",
        "NOVA_DETECTION__ENABLED": "false",
    }
    t = Tiered(root, env, "cluster", name, f"{name}.tx", "")
    try:
        t.nova("provision", "--yes")
        start = (datetime.now(UTC) - timedelta(days=days + 2)).date().isoformat()
        t.nova("generate", "--count", str(days * per_day), "--start", start, "--spread-days", str(days), "--seed", "9")
        t.nova("ingest", "--until-caught-up", "--quiet")
        yield t
    finally:
        from pipelines import kafka
        from pipelines.config import load_settings

        with contextlib.suppress(Exception):
            settings = load_settings(root / "configs" / "nova.yaml", environ=env)
            kafka.delete_topics(settings, [t.topic, f"{name}.dlq"])
        with contextlib.suppress(Exception):
            _on_host(HOSTS["s1r1"], f"DROP DATABASE IF EXISTS `{name}` ON CLUSTER nova")


def _iso(p: str) -> str:
    return f"{p[:4]}-{p[4:6]}-{p[6:]}"


def _placement(t: Tiered) -> dict[str, tuple[set[str], set[str]]]:
    """host → (hot days, warm days) of its shard-local tables."""
    out = {}
    for host, port in HOSTS.items():
        rows = _on_host(
            port,
            "SELECT DISTINCT partition_id, table FROM system.parts WHERE database = "
            f"'{t.database}' AND table IN ('transactions_local', 'transactions_warm_local') AND active",
        )
        hot = {_iso(p) for p, table in rows if table == "transactions_local"}
        out[host] = (hot, {_iso(p) for p, table in rows if table != "transactions_local"})
    return out


def _shard_per_day(t: Tiered, port: int, table: str) -> list[tuple[Any, ...]] | None:
    """Rows per day of one host's `table`; None before the first run has created it."""
    exists = _on_host(port, f"EXISTS TABLE `{t.database}`.{table}")[0][0]
    if not exists:
        return None
    sql = f"SELECT toDate(event_time) AS d, count() FROM `{t.database}`.{table} GROUP BY d ORDER BY d"
    return _on_host(port, sql)


def _settled(t: Tiered) -> None:
    """Wait until shard 1's second replica has replayed the partition operations run on its first.

    Distributed may read either replica: right after a move the second one can lag by a moment.
    """

    def replicas_agree() -> bool:
        for local in ("transactions_local", "transactions_warm_local"):
            if _shard_per_day(t, HOSTS["s1r1"], local) != _shard_per_day(t, HOSTS["s1r2"], local):
                return False
        return True

    wait_until(replicas_agree, timeout=30, interval=0.3, what="shard 1's replicas hold the same days")


def _check_tiers(t: Tiered, before: list[dict[str, Any]], *, hot: int, warm: int) -> None:
    """Every day in exactly its tier on every shard, both replicas of shard 1 alike, totals unchanged."""
    newest = date.fromisoformat(before[-1]["day"])
    hot_days = _days(newest - timedelta(days=hot - 1), hot)
    warm_days = _days(newest - timedelta(days=hot + warm - 1), warm)
    cold_days = _days(date.fromisoformat(before[0]["day"]), len(before) - hot - warm)

    _settled(t)
    placement = _placement(t)
    for host, (h, w) in placement.items():
        assert h <= hot_days and w <= warm_days, f"{host}: hot {sorted(h)}, warm {sorted(w)}"
    assert placement["s1r1"] == placement["s1r2"]
    # Both shards hold rows of every day (6 Kafka partitions over 2 shards), so each moved its own.
    assert set.union(*(p[0] for p in placement.values())) == hot_days
    assert set.union(*(p[1] for p in placement.values())) == warm_days
    assert t.cold_days() == cold_days
    for day in cold_days:
        manifest = json.loads((t.root.parent / "cold" / "transactions" / f"dt={day}" / "manifest.json").read_text())
        assert len(manifest["files"]) == 2, f"{day}: one cold file per shard, got {manifest['files']}"
    assert t.per_day() == before


def test_tier_migrate_moves_each_shard_and_survives_a_kill_between_shards(tmp_path: Path) -> None:
    with cluster_tiered(tmp_path, days=8, per_day=100, hot=2, warm=3) as t:
        _settled(t)
        before = t.per_day()
        assert len(before) == 8 and sum(r["n"] for r in before) == 800

        plan = json.loads(t.nova("tier-migrate", "--dry-run", "--json").stdout)
        moves = [(p["from"], p["to"]) for p in plan["plan"]]
        assert moves.count(("hot", "warm")) == 2 * 6 and moves.count(("warm", "cold")) == 2 * 3  # per shard

        # Killed right after the first shard's copy of the first day, before the journal says so.
        killed = run_nova("tier-migrate", "--yes", expect=None, env={**t.env, "TIER_MIGRATE_KILL_AT": "copy"})
        assert killed.code == -signal.SIGKILL, killed.output
        journal = t.root / ".nova" / "lifecycle" / f"{t.database}.transactions@shard1" / "open"
        assert [p.name for p in journal.glob("*.json")] == [f"{before[0]['day']}.json"]
        _settled(t)
        assert t.per_day() == before  # shard 1 holds the day in hot and warm: read per shard, counted once
        report = json.loads(t.nova("tier-migrate", "--yes", "--json").stdout)
        assert report["failed"] == 0 and report["moved"] == 2 * 6 + 2 * 3, json.dumps(report["outcomes"])
        _check_tiers(t, before, hot=2, warm=3)

        again = json.loads(t.nova("tier-migrate", "--yes", "--json").stdout)
        assert again["plan"] == [] and again["moved"] == 0


@pytest.mark.long
def test_kill_9_at_every_step_on_the_cluster(tmp_path: Path) -> None:
    """Killed at each journal step of each phase, a re-run finishes every shard's move: no row lost or doubled."""
    with cluster_tiered(tmp_path, days=12, per_day=100, hot=2, warm=3) as t:
        _settled(t)
        before = t.per_day()
        points = ["planned", "copy", "copied", "verified", "drop", "source_dropped", "commit"]
        for phase in ("hot-to-warm", "warm-to-cold"):
            for point in points:
                killed = run_nova(
                    "tier-migrate", "--yes", "--only", phase, expect=None, env={**t.env, "TIER_MIGRATE_KILL_AT": point}
                )
                assert killed.code == -signal.SIGKILL, f"{phase}/{point}: {killed.output}"
                _settled(t)
                assert t.per_day() == before, f"a day counted twice or lost after kill -9 at {phase}/{point}"
            t.nova("tier-migrate", "--yes", "--only", phase)
        _check_tiers(t, before, hot=2, warm=3)
        for shard in (1, 2):
            journal = t.root / ".nova" / "lifecycle" / f"{t.database}.transactions@shard{shard}"
            assert not list((journal / "open").glob("*.json"))
