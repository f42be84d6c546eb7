"""`nova tier-migrate` and `nova query --all-tiers` on the real services (Kafka, ClickHouse, SeaweedFS).

Data comes in the real way: `nova generate --start … --spread-days N` into Kafka, `nova ingest`.
Each test has its own project copy (configs, state dir: journal and lock), topics, database and
cold prefix; it removes what it made.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, Result, run_nova, unique

SERVER_URL = "clickhouse://default:@127.0.0.1:19000/default?http_port=18123"  # inserts as Native over HTTP
# Per-day count, amount sum and a checksum of several columns (with NULLs and time), as analysts
# would check it; toUnixTimestamp reads DateTime (18.16) and DateTime64 (chdb) alike.
PER_DAY = (
    "SELECT toDate(event_time) AS day, count() AS n, sum(amount_minor) AS amount, "
    "sum(cityHash64(transaction_id, card_id, merchant_id, currency, amount_minor, toUnixTimestamp(event_time), "
    "ifNull(device_id, ''), ifNull(latitude, 0), risk_score)) AS checksum "
    "FROM transactions GROUP BY day ORDER BY day"
)


@dataclass
class Tiered:
    root: Path
    env: dict[str, str]
    backend: str
    database: str
    topic: str
    prefix: str

    def nova(self, *args: str, expect: int | None = 0) -> Result:
        return run_nova(*args, expect=expect, env=self.env)

    def per_day(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = json.loads(self.nova("query", "--all-tiers", "--format", "json", PER_DAY).stdout)
        return rows

    def query(self, sql: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = json.loads(self.nova("query", "--format", "json", sql).stdout)
        return rows

    def lifecycle(self) -> Any:
        from pipelines.config import load_settings
        from pipelines.lifecycle.coldstore import ColdStore
        from pipelines.lifecycle.policy import load_policy

        settings = load_settings(self.root / "configs" / "nova.yaml", environ=self.env)
        return ColdStore(load_policy(settings).cold)

    def cold_days(self) -> set[str]:
        keys = self.lifecycle().list_keys("transactions/dt=")
        return {k.split("/")[1][3:] for k in keys if k.endswith("/manifest.json")}

    def hot_warm_days(self) -> tuple[set[str], set[str]]:
        def iso(p: str) -> str:
            return f"{p[:4]}-{p[4:6]}-{p[6:]}"

        db = self.database
        if self.backend == "embedded":
            rows = self.query(
                "SELECT DISTINCT partition_id AS p, disk_name AS disk FROM system.parts "
                f"WHERE database = '{db}' AND table = 'transactions' AND active"
            )
            return {iso(r["p"]) for r in rows if r["disk"] == "default"}, {
                iso(r["p"]) for r in rows if r["disk"] != "default"
            }
        rows = self.query(
            "SELECT DISTINCT partition_id AS p, table AS t FROM system.parts "
            f"WHERE database = '{db}' AND table IN ('transactions', 'transactions_warm') AND active"
        )
        return {iso(r["p"]) for r in rows if r["t"] == "transactions"}, {
            iso(r["p"]) for r in rows if r["t"] != "transactions"
        }


def _policy(root: Path, **changes: Any) -> None:
    path = root / "configs" / "lifecycle.yaml"
    raw = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if section == "table":
            raw["tables"][0][name] = value
        else:
            raw[section][name] = value
    path.write_text(yaml.safe_dump(raw))


@contextlib.contextmanager
def tiered(
    tmp_path: Path, backend: str, *, days: int, per_day: int, hot: int, warm: int, cold_url: str | None = None
) -> Iterator[Tiered]:
    root = tmp_path / "project"
    shutil.copytree(REPO / "configs", root / "configs")
    name = unique("tm")
    prefix = f"tests/{name}"
    _policy(
        root,
        table__hot_days=hot,
        table__warm_days=warm,
        cold__url=cold_url or f"s3://nova-cold/{prefix}",
    )
    env = {
        "NOVA_CONFIG": str(root / "configs" / "nova.yaml"),
        "NOVA_HOME": str(REPO),  # relative paths (reference data, state dir) as in the repo…
        "NOVA_STACK__STATE_DIR": str(root / ".nova"),  # …but journal and lock of the test's own
        "NOVA_PIPELINE__TOPIC": f"{name}.tx",
        "NOVA_PIPELINE__DLQ_TOPIC": f"{name}.dlq",
        "NOVA_PIPELINE__GROUP_ID": f"{name}-ingest",
        "NOVA_CLICKHOUSE__DATABASE": name,
        "NOVA_CLICKHOUSE__URL": f"chdb://{root / 'chdb'}" if backend == "embedded" else SERVER_URL,
    }
    t = Tiered(root, env, backend, name, f"{name}.tx", prefix)
    try:
        t.nova("provision", "--yes")
        start = (datetime.now(UTC) - timedelta(days=days + 2)).date().isoformat()
        t.nova("generate", "--count", str(days * per_day), "--start", start, "--spread-days", str(days), "--seed", "9")
        t.nova("ingest", "--until-caught-up", "--quiet")
        yield t
    finally:
        _cleanup(t)


def _cleanup(t: Tiered) -> None:
    from pipelines import kafka
    from pipelines.config import load_settings

    settings = load_settings(t.root / "configs" / "nova.yaml", environ=t.env)
    with contextlib.suppress(Exception):
        kafka.delete_topics(settings, [t.topic, f"{t.database}.dlq"])
    with contextlib.suppress(Exception):
        cold = t.lifecycle()
        cold.delete(cold.list_keys(""))
    if t.backend == "server":
        with contextlib.suppress(Exception):
            t.nova("query", f"DROP DATABASE IF EXISTS {t.database}", expect=None)


def _days(first: date, n: int) -> set[str]:
    return {(first + timedelta(days=i)).isoformat() for i in range(n)}


@pytest.mark.integration
@pytest.mark.parametrize(
    "backend", ["embedded", pytest.param("server", marks=pytest.mark.server)], ids=["embedded-file", "server-s3"]
)
def test_days_land_in_their_tiers_and_all_tiers_totals_stay_identical(tmp_path: Path, backend: str) -> None:
    cold_url = f"file://{tmp_path / 'cold'}" if backend == "embedded" else None
    with tiered(tmp_path, backend, days=40, per_day=500, hot=7, warm=14, cold_url=cold_url) as t:
        before = t.per_day()
        assert len(before) == 40 and sum(r["n"] for r in before) == 20_000

        plan = json.loads(t.nova("tier-migrate", "--dry-run", "--json").stdout)
        moves = [(p["from"], p["to"]) for p in plan["plan"]]
        assert moves.count(("hot", "warm")) == 33 and moves.count(("warm", "cold")) == 19
        assert t.per_day() == before  # a dry run changes nothing

        report = json.loads(t.nova("tier-migrate", "--yes", "--json").stdout)
        assert report["moved"] == 52 and report["failed"] == 0

        newest = date.fromisoformat(before[-1]["day"])
        hot, warm = t.hot_warm_days()
        assert hot == _days(newest - timedelta(days=6), 7)
        assert warm == _days(newest - timedelta(days=20), 14)
        assert t.cold_days() == _days(newest - timedelta(days=39), 19)
        assert t.per_day() == before

        # Idempotent: nothing left to do.
        again = json.loads(t.nova("tier-migrate", "--yes", "--json").stdout)
        assert again["plan"] == [] and again["moved"] == 0

        # A one-day query reads one cold file, not all of them.
        one, next_day = before[3]["day"], before[4]["day"]
        result = t.nova(
            "query", "--all-tiers", "--format", "json",
            f"SELECT count() AS n FROM transactions WHERE event_time >= '{one}' AND event_time < '{next_day}'",
        )  # fmt: skip
        assert json.loads(result.stdout) == [{"n": before[3]["n"]}]
        assert "1 of 19 cold day(s) read" in result.stderr

        # restore a cold day and a warm day: the same rows, now hot.
        cold_day, warm_day = before[0]["day"], before[25]["day"]
        t.nova("tier-migrate", "restore", "--day", cold_day, "--yes")
        t.nova("tier-migrate", "restore", "--day", warm_day, "--yes")
        hot, _warm = t.hot_warm_days()
        assert {cold_day, warm_day} <= hot
        assert cold_day not in t.cold_days()
        assert t.per_day() == before


@pytest.mark.integration
@pytest.mark.slow
def test_kill_9_at_every_step_and_a_tampered_copy(tmp_path: Path) -> None:
    """Killed at each journal step, a re-run finishes the move; a changed cold copy fails verification."""
    with tiered(tmp_path, "embedded", days=12, per_day=100, hot=2, warm=3) as t:
        before = t.per_day()
        assert len(before) == 12
        # Volumes of one table: hot → warm has no drop or commit of its own (MOVE PARTITION is atomic).
        points = {
            "hot-to-warm": ["planned", "copy", "copied", "verified", "source_dropped"],
            "warm-to-cold": ["planned", "copy", "copied", "verified", "drop", "source_dropped", "commit"],
        }
        for phase, kills in points.items():
            for point in kills:
                killed = run_nova(
                    "tier-migrate", "--yes", "--only", phase, expect=None, env={**t.env, "TIER_MIGRATE_KILL_AT": point}
                )
                assert killed.code == -signal.SIGKILL, f"{phase}/{point}: {killed.output}"
                assert t.per_day() == before, f"a day counted twice or lost after kill -9 at {phase}/{point}"
            if phase == "hot-to-warm":
                t.nova("tier-migrate", "--yes", "--only", phase)
                assert t.per_day() == before
        _tamper_next_cold_copy(t, before)

        hot, warm = t.hot_warm_days()
        newest = date.fromisoformat(before[-1]["day"])
        assert hot == _days(newest - timedelta(days=1), 2)
        assert warm == _days(newest - timedelta(days=4), 3)
        assert t.cold_days() == _days(newest - timedelta(days=11), 7)
        assert t.per_day() == before
        journal = t.root / ".nova" / "lifecycle" / f"{t.database}.transactions"
        outcomes = [json.loads(line)["outcome"] for line in (journal / "history.jsonl").read_text().splitlines()]
        assert outcomes.count("verification_failed") == 1 and outcomes.count("done") == len(outcomes) - 1
        assert not list((journal / "open").glob("*.json"))


def _tamper_next_cold_copy(t: Tiered, before: list[dict[str, Any]]) -> None:
    """Stop right after the next cold copy is written, change one row of it in S3, and run again."""
    import pyarrow.parquet as pq

    cold = t.lifecycle()
    committed = {k for k in cold.list_keys("transactions/") if k.endswith(".parquet")}
    killed = run_nova("tier-migrate", "--yes", expect=None, env={**t.env, "TIER_MIGRATE_KILL_AT": "copied"})
    assert killed.code == -signal.SIGKILL
    (key,) = [k for k in cold.list_keys("transactions/") if k.endswith(".parquet") and k not in committed]
    data = pq.read_table(io.BytesIO(cold.get_bytes(key)))
    amounts = data.column("amount_minor").to_pylist()
    amounts[0] += 1
    sink = io.BytesIO()
    pq.write_table(data.set_column(data.schema.get_field_index("amount_minor"), "amount_minor", [amounts]), sink)
    cold.put_bytes(key, sink.getvalue())

    failed = json.loads(t.nova("tier-migrate", "--yes", "--json", expect=1).stdout)
    (bad,) = [o for o in failed["outcomes"] if o["result"] == "failed"]
    assert "read back differs" in bad["detail"] and "the source is kept" in bad["detail"]
    day = key.split("/")[1][3:]
    assert bad["day"] == day
    _hot, warm = t.hot_warm_days()
    assert day in warm and day not in t.cold_days()  # the source kept, the copy never committed
    assert t.per_day() == before

    t.nova("tier-migrate", "--yes")  # the next run copies the day again, verified
    assert day in t.cold_days()


def test_second_run_is_refused_while_one_holds_the_lock(tmp_path: Path) -> None:
    from pipelines.lifecycle.errors import MigrationLocked
    from pipelines.lifecycle.lock import run_lock

    lock = tmp_path / "run.lock"
    with run_lock(lock), pytest.raises(MigrationLocked, match=f"pid {os.getpid()}"), run_lock(lock):
        pass
    with run_lock(lock):  # released with its holder
        pass


def test_a_bad_policy_names_file_and_key(project: Path) -> None:
    path = project / "configs" / "lifecycle.yaml"
    path.write_text(path.read_text().replace("hot_days: 7", "hot_days: 0"))
    result = run_nova(
        "tier-migrate", "--dry-run", env={"NOVA_CONFIG": str(project / "configs" / "nova.yaml")}, expect=2
    )
    assert "lifecycle.yaml" in result.stderr and "tables.0.hot_days" in result.stderr


@pytest.mark.parametrize(
    ("where", "days"),
    [
        ("event_time >= '2024-05-03' AND event_time < '2024-05-04'", ("2024-05-03", "2024-05-03")),
        ("t.event_time BETWEEN '2024-05-01' AND '2024-05-02 23:59:59'", ("2024-05-01", "2024-05-02")),
        ("toDate(event_time) = '2024-05-07' AND merchant_id = 'm'", ("2024-05-07", "2024-05-07")),
        (
            "toYYYYMMDD(event_time) >= 20240501 AND toDate(event_time) < toDate('2024-05-03')",
            ("2024-05-01", "2024-05-02"),
        ),
        ("event_time > toDateTime('2024-05-03 12:00:00')", ("2024-05-03", None)),
        ("event_time >= '2024-05-03' OR merchant_id = 'm'", (None, None)),
        ("merchant_id = 'm'", (None, None)),
    ],
)
def test_day_bounds_come_from_conditions_on_the_time_column(where: str, days: tuple[str | None, str | None]) -> None:
    import sqlglot
    from sqlglot import exp

    from pipelines.lifecycle.alltiers import _bounds

    tree = sqlglot.parse_one(f"SELECT count() FROM transactions AS t WHERE {where}", read="clickhouse")
    table = next(tree.find_all(exp.Table))
    lo, hi = _bounds(table, "event_time")
    expected = tuple(date.fromisoformat(d) if d else None for d in days)
    assert (lo, hi) == expected
