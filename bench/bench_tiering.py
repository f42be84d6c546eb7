"""Verified export throughput to cold, and an all-tiers query of one day against all days.

    python bench/bench_tiering.py [--rows 2000000] [--days 20] [--write-docs]

Fills an embedded chdb store of its own (`.nova/bench/tiering/chdb`, the `transactions` table of
configs/clickhouse/tables.yaml) with ROWS rows spread over DAYS days, then runs
`nova tier-migrate --yes --json` (a subprocess, as cron runs it) with a policy of hot 1 day,
warm 0: every older day goes hot → warm → cold (Parquet on the stack's SeaweedFS, read back and
verified before each drop). Reported: rows/s of the verified warm → cold moves (copy, read-back
fingerprint, drop, manifest), then `nova query --all-tiers` of one cold day and of all days,
best of 3 (engine time, start-up excluded). Needs `nova stack up --with seaweedfs`.
Not a test: numbers depend on the machine (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._docs import machine, write_section  # noqa: E402
from pipelines.clickhouse import ddl, open_store  # noqa: E402
from pipelines.config import load_settings  # noqa: E402
from pipelines.contracts.specs import load_tables  # noqa: E402

NOVA = [str(Path(sys.executable).parent / "nova")]


def _project(work: Path) -> dict[str, str]:
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(ROOT / "configs", work / "configs")
    path = work / "configs" / "lifecycle.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["tables"][0].update(hot_days=1, warm_days=0)
    raw["cold"]["url"] = f"s3://nova-cold/bench/{os.getpid()}"
    path.write_text(yaml.safe_dump(raw))
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("NOVA_")},
        "NOVA_CONFIG": str(work / "configs" / "nova.yaml"),
        "NOVA_HOME": str(ROOT),
        "NOVA_STACK__STATE_DIR": str(work / "state"),
        "NOVA_CLICKHOUSE__URL": f"chdb://{work / 'chdb'}",
        "NOVA_CLICKHOUSE__DATABASE": "bench_tiering",
    }


def _fill(env: dict[str, str], rows: int, days: int) -> None:
    settings = load_settings(env["NOVA_CONFIG"], environ=env)
    names = {"table": "transactions", "database": "bench_tiering", "topic": "t", "dlq_topic": "d"}
    spec = next(t for t in load_tables(settings.configs_dir / "clickhouse" / "tables.yaml", names=names).tables
                if t.name == "transactions")  # fmt: skip
    start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=days)
    step_ms = days * 86_400_000 // rows
    with open_store(settings) as store:
        store.ensure_database()
        store.execute(ddl.render_create_table(spec, "bench_tiering", store.caps))
        store.execute(
            "INSERT INTO transactions (transaction_id, event_time, card_id, account_id, merchant_id, amount_minor, "
            "currency, amount_reporting_minor, country, channel, status, risk_score) "
            "SELECT generateUUIDv4(), "
            f"toDateTime64({int(start.timestamp())}, 3, 'UTC') + toIntervalMillisecond(number * {step_ms}), "
            "concat('card-', toString(number % 100000)), concat('acct-', toString(number % 70000)), "
            "concat('m', toString(number % 500)), 100 + number % 50000, 'EUR', 100 + number % 50000, 'DE', "
            f"'POS', 'CAPTURED', (number % 1000) / 1000 FROM numbers({rows})"
        )


def _nova(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*NOVA, *args], env=env, capture_output=True, text=True, check=True, cwd=ROOT)


def _query_ms(env: dict[str, str], sql: str) -> float:
    best = float("inf")
    for _ in range(3):
        result = _nova(env, "query", "--all-tiers", "--format", "table", sql)
        m = re.search(r"row\(s\) in (\d+) ms", result.stderr)
        best = min(best, float(m.group(1)) if m else float("inf"))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--days", type=int, default=20)
    parser.add_argument("--write-docs", action="store_true", help="Record the figures in docs/BENCHMARKS.md.")
    args = parser.parse_args()
    work = ROOT / ".nova" / "bench" / "tiering"
    env = _project(work)
    subprocess.run([*NOVA, "stack", "up", "--with", "seaweedfs"], check=True, cwd=ROOT, capture_output=True)
    t0 = time.perf_counter()
    _fill(env, args.rows, args.days)
    fill_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    report = json.loads(_nova(env, "tier-migrate", "--yes", "--json").stdout)
    wall_s = time.perf_counter() - t0
    cold = [o for o in report["outcomes"] if o["to"] == "cold" and o["result"] == "moved"]
    cold_rows, cold_s = sum(o["rows"] for o in cold), sum(o["seconds"] for o in cold)
    day = cold[len(cold) // 2]["day"]
    next_day = (datetime.fromisoformat(day) + timedelta(days=1)).date().isoformat()
    where = f"event_time >= '{day}' AND event_time < '{next_day}'"
    one_ms = _query_ms(env, f"SELECT count(), sum(amount_minor) FROM transactions WHERE {where}")
    all_ms = _query_ms(env, "SELECT count(), sum(amount_minor) FROM transactions")
    cleanup = load_settings(env["NOVA_CONFIG"], environ=env)
    from pipelines.lifecycle.coldstore import ColdStore
    from pipelines.lifecycle.policy import load_policy

    store = ColdStore(load_policy(cleanup).cold)
    store.delete(store.list_keys(""))
    shutil.rmtree(work, ignore_errors=True)

    lines = [
        f"Machine: {machine()}.",
        "",
        f"{args.rows:,} rows over {args.days} days in an embedded store (filled in {fill_s:.1f} s); "
        "policy hot 1 day, warm 0; cold on the stack's SeaweedFS.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| `nova tier-migrate --yes` wall time ({report['moved']} moves) | {wall_s:.1f} s |",
        f"| verified warm → cold: rows / time of those moves | {cold_rows:,} rows in {cold_s:.1f} s = "
        f"**{cold_rows / cold_s:,.0f} rows/s** |",
        f"| `--all-tiers` query of one cold day (1 of {len(cold)} cold files) | {one_ms:.0f} ms |",
        f"| `--all-tiers` query of all {args.days} days | {all_ms:.0f} ms |",
        "",
        "A verified move writes the day's Parquet to S3, reads it back for the fingerprint (rows, amount sum, "
        "checksum of every column), drops the source partition and rewrites the day's manifest.",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write_docs:
        write_section("tiering", text, title="Tiering (`bench/bench_tiering.py`)")


if __name__ == "__main__":
    main()
