"""How long `nova parity-check` takes on N identical rows on each side.

    python bench/bench_parity.py [--rows 10000000] [--days 31] [--clickhouse chdb|server] [--keep] [--reuse]

Fills a schema of its own in the stack's PostgreSQL (`bench_parity.card_txn`, COPY from a CSV
stream generated in chunks, primary key and the local-time index built after the load, then
ANALYZE — as the warehouse has them) and a ClickHouse database of its own (`bench_parity`) with the
same transactions (`insert_arrow`), either in an embedded chdb store under `.nova/bench/chdb` or
on the stack's clickhouse-server (18.16). Then times `nova parity-check` over the whole range
(a subprocess, as cron runs it: start-up included), once with the default `--by` and once by
day only; both must find parity. `--reuse` skips the fill when the row counts already match;
`--keep` leaves the data for another run (otherwise both are dropped).

Zones are ones with a fixed offset in January 2024 (local ≠ UTC date for many rows), currencies
include JPY (exponent 0). Not a test: numbers depend on the machine (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipelines.clickhouse import ddl, open_store  # noqa: E402
from pipelines.config import load_settings  # noqa: E402
from pipelines.contracts.specs import load_tables  # noqa: E402
from pipelines.dualrun.warehouse import ensure_schema  # noqa: E402

SCHEMA = "bench_parity"
DATABASE = "bench_parity"
TABLE = "transactions"
START = datetime(2024, 1, 1, tzinfo=UTC)
ZONES = ["UTC", "Europe/Berlin", "America/New_York", "America/Los_Angeles", "Asia/Tokyo", "Australia/Sydney",
         "Asia/Kolkata", "Pacific/Kiritimati", "Pacific/Pago_Pago"]  # fmt: skip
CURRENCIES = ["EUR", "EUR", "EUR", "USD", "GBP", "CHF", "SEK", "PLN", "JPY"]
CHANNELS = {"P": "POS", "E": "ECOM", "A": "ATM", "M": "MOTO", "C": "CONTACTLESS"}
STATUSES = {"AUTH": "AUTHORIZED", "CAPT": "CAPTURED", "DECL": "DECLINED", "RFND": "REFUNDED", "REVS": "REVERSED"}
COUNTRIES = ["DE", "FR", "GB", "US", "JP", "SE", "PL", "CH", "ES", "IT"]
MERCHANTS = 2000
CHUNK = 500_000


def _offsets(days: int) -> np.ndarray:
    """Each zone's UTC offset in seconds, checked constant over the range (no DST change)."""
    end = START + timedelta(days=days)
    out = []
    for name in ZONES:
        zone = ZoneInfo(name)
        first, last = START.astimezone(zone).utcoffset(), end.astimezone(zone).utcoffset()
        assert first == last, f"{name} changes offset in the benchmark range; shorten --days"
        out.append(int(first.total_seconds()) if first is not None else 0)
    return np.array(out, dtype=np.int64)


def make_chunk(rng: np.random.Generator, n: int, seq0: int, days: int, offsets: np.ndarray) -> dict[str, Any]:
    """One chunk of transactions as numpy / Python columns shared by both sides."""
    raw = rng.bytes(16 * n)
    ids = [f"{raw[i:i + 4].hex()}-{raw[i + 4:i + 6].hex()}-4{raw[i + 6:i + 8].hex()[1:]}-"
           f"{raw[i + 8:i + 10].hex()}-{raw[i + 10:i + 16].hex()}" for i in range(0, 16 * n, 16)]  # fmt: skip
    utc_us = int(START.timestamp() * 1e6) + rng.integers(0, days * 86_400_000_000, n, dtype=np.int64)
    zone = rng.integers(0, len(ZONES), n)
    ccy_idx = rng.integers(0, len(CURRENCIES), n)
    ccy = np.array(CURRENCIES)[ccy_idx]
    jpy = ccy == "JPY"
    amount_minor = np.where(jpy, rng.integers(100, 2_000_000, n), rng.integers(1, 500_000, n)).astype(np.int64)
    merchant = rng.integers(0, MERCHANTS, n)
    return {
        "ids": ids,
        "utc_us": utc_us,
        "local_us": utc_us + offsets[zone] * 1_000_000,
        "tz": np.array(ZONES)[zone],
        "merchant": np.char.add("M", np.char.zfill(merchant.astype(str), 5)),
        "country": np.array(COUNTRIES)[merchant % len(COUNTRIES)],
        "ccy": ccy,
        "jpy": jpy,
        "amount_minor": amount_minor,
        "channel_cd": np.array(list(CHANNELS))[rng.integers(0, len(CHANNELS), n)],
        "status_cd": np.array(list(STATUSES))[rng.integers(0, len(STATUSES), n)],
        "seq0": seq0,
    }


def legacy_csv(c: dict[str, Any]) -> bytes:
    """The chunk as legacy rows, CSV for COPY: local wall clock, zone, amount in MAJOR units."""
    n = len(c["ids"])
    # numeric(14,2) text: JPY amounts are whole yen (x.00), the others cents / 100.
    cents = np.where(c["jpy"], c["amount_minor"] * 100, c["amount_minor"])
    major = np.char.add(np.char.add((cents // 100).astype(str), "."), np.char.zfill((cents % 100).astype(str), 2))
    table = pa.table({
        "txn_ref": pa.array(c["ids"]),
        "txn_ts_local": pa.array(c["local_us"], pa.timestamp("us")),
        "txn_tz": pa.array(c["tz"]),
        "card_token": pa.array(np.char.add("tok", (np.arange(n) % 99_991).astype(str))),
        "acct_no": pa.array(np.char.add("acct", (np.arange(n) % 49_999).astype(str))),
        "merchant_code": pa.array(c["merchant"]),
        "mcc": pa.array(np.full(n, "5411")),
        "amount": pa.array(major),
        "ccy": pa.array(c["ccy"]),
        "merchant_country": pa.array(c["country"]),
        "channel_cd": pa.array(c["channel_cd"]),
        "status_cd": pa.array(c["status_cd"]),
        "batch_id": pa.array(np.full(n, 1, dtype=np.int32)),
    })  # fmt: skip
    buf = io.BytesIO()
    pacsv.write_csv(table, buf, pacsv.WriteOptions(include_header=False, quoting_style="none"))
    return buf.getvalue()


def clickhouse_arrow(c: dict[str, Any], datetime64: bool) -> pa.Table:
    n = len(c["ids"])
    unit = "ms" if datetime64 else "s"
    ticks = c["utc_us"] // (1000 if datetime64 else 1_000_000)
    return pa.table({
        "transaction_id": pa.array(c["ids"]),
        "event_time": pa.array(ticks, pa.timestamp(unit, tz="UTC")),
        "card_id": pa.array(np.full(n, "c")),
        "account_id": pa.array(np.full(n, "a")),
        "merchant_id": pa.array(c["merchant"]),
        "amount_minor": pa.array(c["amount_minor"]),
        "currency": pa.array(c["ccy"]),
        "country": pa.array(c["country"]),
        "channel": pa.array(np.vectorize(CHANNELS.get)(c["channel_cd"])),
        "status": pa.array(np.vectorize(STATUSES.get)(c["status_cd"])),
    })  # fmt: skip


def fill(settings: Any, store: Any, rows: int, days: int, seed: int) -> dict[str, float]:
    import psycopg

    offsets = _offsets(days)
    spec = next(
        t
        for t in load_tables(
            settings.configs_dir / "clickhouse" / "tables.yaml", names={"table": TABLE, "database": DATABASE}
        ).tables
        if t.name == TABLE
    )
    store.execute(f"DROP TABLE IF EXISTS `{DATABASE}`.`{TABLE}`")
    store.execute(ddl.render_create_table(spec, DATABASE, store.caps))
    rng = np.random.default_rng(seed)
    t_gen = t_pg = t_ch = 0.0
    with psycopg.connect(settings.legacy.dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        # The warehouse's own DDL, then without its keys while loading (they are built after the COPY).
        ensure_schema(
            settings=settings.model_copy(update={"legacy": settings.legacy.model_copy(update={"schema_name": SCHEMA})}),
            conn=conn,
        )
        conn.execute(f"ALTER TABLE {SCHEMA}.card_txn DROP CONSTRAINT card_txn_pkey")
        conn.execute(f"DROP INDEX {SCHEMA}.card_txn_ts")
        with conn.cursor() as cur:
            cur.execute("SET synchronous_commit = off")
            done = 0
            copy_columns = ", ".join(_LEGACY_COPY_COLUMNS)
            while done < rows:
                n = min(CHUNK, rows - done)
                t0 = time.perf_counter()
                chunk = make_chunk(rng, n, done, days, offsets)
                csv_bytes = legacy_csv(chunk)
                arrow = clickhouse_arrow(chunk, store.caps.datetime64)
                t1 = time.perf_counter()
                with cur.copy(f"COPY {SCHEMA}.card_txn ({copy_columns}) FROM STDIN (FORMAT csv)") as cp:
                    cp.write(csv_bytes)
                t2 = time.perf_counter()
                store.insert_arrow(f"{DATABASE}.{TABLE}", arrow)
                t3 = time.perf_counter()
                t_gen, t_pg, t_ch = t_gen + t1 - t0, t_pg + t2 - t1, t_ch + t3 - t2
                done += n
                print(f"  filled {done:,} / {rows:,}", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            cur.execute(f"ALTER TABLE {SCHEMA}.card_txn ADD PRIMARY KEY (txn_ref)")
            cur.execute(f"CREATE INDEX card_txn_ts ON {SCHEMA}.card_txn (txn_ts_local)")
            cur.execute(f"VACUUM ANALYZE {SCHEMA}.card_txn")
            t_pg += time.perf_counter() - t0
    t0 = time.perf_counter()
    store.execute(f"OPTIMIZE TABLE `{DATABASE}`.`{TABLE}` FINAL")
    t_ch += time.perf_counter() - t0
    return {"generate_s": t_gen, "postgres_load_s": t_pg, "clickhouse_load_s": t_ch}


_LEGACY_COPY_COLUMNS = ("txn_ref", "txn_ts_local", "txn_tz", "card_token", "acct_no", "merchant_code", "mcc", "amount",
                        "ccy", "merchant_country", "channel_cd", "status_cd", "batch_id")  # fmt: skip


def counts(settings: Any, store: Any) -> tuple[int, int]:
    import psycopg

    with psycopg.connect(settings.legacy.dsn, autocommit=True) as conn:
        row = conn.execute(f"SELECT to_regclass('{SCHEMA}.card_txn') IS NOT NULL").fetchone()
        legacy = conn.execute(f"SELECT count(*) FROM {SCHEMA}.card_txn").fetchone()[0] if row and row[0] else -1
    ch = -1
    if store.table_exists(f"{DATABASE}.{TABLE}"):
        ch = int(store.query_scalar(f"SELECT count() FROM `{DATABASE}`.`{TABLE}`"))
    return int(legacy), ch


def time_cli(env: dict[str, str], days: int, *extra: str) -> tuple[float, dict[str, Any]]:
    until = (START + timedelta(days=days)).date().isoformat()
    cmd = [sys.executable, "-c", "from cli.main import main; main()", "parity-check", "--since",
           START.date().isoformat(), "--until", until, "--json", *extra]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"parity-check exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return elapsed, json.loads(proc.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--days", type=int, default=31)
    ap.add_argument("--clickhouse", choices=["chdb", "server"], default="chdb")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--reuse", action="store_true", help="keep existing data when both sides hold --rows rows")
    ap.add_argument("--keep", action="store_true", help="leave the data in place afterwards")
    ap.add_argument("--write-docs", action="store_true", help="record the figures in docs/BENCHMARKS.md")
    args = ap.parse_args()

    settings = load_settings(ROOT / "configs" / "nova.yaml")
    if args.clickhouse == "chdb":
        url = f"chdb://{settings.state_dir / 'bench' / 'chdb'}"
    else:
        url = f"clickhouse://default:@127.0.0.1:{settings.stack.clickhouse_tcp_port}/{DATABASE}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOVA_")}
    env.update({"NOVA_LEGACY__SCHEMA": SCHEMA, "NOVA_CLICKHOUSE__URL": url, "NOVA_CLICKHOUSE__DATABASE": DATABASE,
                "NOVA_PIPELINE__TABLE": TABLE, "COLUMNS": "200"})  # fmt: skip

    store = open_store(settings, url=url, database=DATABASE)
    try:
        store.ensure_database()
        version = store.caps.version_text
        fill_times: dict[str, float] = {}
        if not (args.reuse and counts(settings, store) == (args.rows, args.rows)):
            print(f"filling {args.rows:,} rows on each side ({args.clickhouse} {version})…", file=sys.stderr)
            fill_times = fill(settings, store, args.rows, args.days, args.seed)
    finally:
        store.close()  # the CLI opens the embedded store itself: one process per path

    runs = {}
    for label, extra in (("by day,merchant,currency", ()), ("by day", ("--by", "day"))):
        elapsed, data = time_cli(env, args.days, *extra)
        assert data["ok"], f"expected parity, got {data['segments_differing']} differing segments"
        assert data["totals"]["legacy"]["count"] == args.rows == data["totals"]["clickhouse"]["count"]
        runs[label] = {"wall_s": round(elapsed, 2), "segments": data["segments_compared"], **data["timings"]}
        print(f"parity-check {label}: {elapsed:.2f} s wall, {data['segments_compared']:,} segments, "
              f"timings {data['timings']}", file=sys.stderr)  # fmt: skip

    report = {
        "rows_per_side": args.rows,
        "days": args.days,
        "clickhouse": f"{args.clickhouse} {version}",
        "postgresql": _pg_version(settings),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "fill": {k: round(v, 1) for k, v in fill_times.items()},
        "parity_check": runs,
    }
    print(json.dumps(report, indent=2))
    if args.write_docs:
        from _docs import machine, write_section

        lines = [
            f"Measured {time.strftime('%Y-%m-%d')} on {machine()}; {args.rows:,} identical rows on each side over "
            f"{args.days} days: PostgreSQL {report['postgresql']} and ClickHouse {report['clickhouse']}. "
            "Wall time of the `nova parity-check` process, start-up included. Target: ≤ 60 s at 10M rows.",
            "",
            "| --by | segments | wall s |",
            "|---|---:|---:|",
            *(f"| {label.removeprefix('by ')} | {r['segments']:,} | {r['wall_s']:.1f} |" for label, r in runs.items()),
        ]
        write_section("parity", "\n".join(lines))
    if not args.keep:
        _drop(settings, url)


def _pg_version(settings: Any) -> str:
    import psycopg

    with psycopg.connect(settings.legacy.dsn, autocommit=True) as conn:
        return str(conn.execute("SHOW server_version").fetchone()[0])


def _drop(settings: Any, url: str) -> None:
    import psycopg

    with psycopg.connect(settings.legacy.dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    with open_store(settings, url=url, database=DATABASE) as store:
        store.execute(f"DROP DATABASE IF EXISTS `{DATABASE}`")


if __name__ == "__main__":
    main()
