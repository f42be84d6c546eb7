"""Server inserts of an ingest batch: clickhouse-driver (Python values) vs Native over HTTP.

    python bench/bench_native_insert.py [--rows 12500] [--reps 7] [--write-docs]

The batch is the worker's: the transactions table's columns as the transform makes them, here
read back from a table filled by `nova generate` rows (`--rows` of them, 12,500 = a 0.25 s batch
at 50k events/s). Each variant inserts it `--reps` times into a Memory table (the ingest stage
table's engine) on the stack's clickhouse-server; figures are medians of wall ms and of the
process's CPU ms per insert, and the encode alone for the HTTP path. Needs `nova stack up --with
clickhouse-server`.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pyarrow as pa
from _docs import machine, write_section

from pipelines.clickhouse import Store, open_store
from pipelines.clickhouse.native_format import encode_block
from pipelines.clickhouse.sql import quote_identifier
from pipelines.config import Settings
from pipelines.contracts.specs import load_tables
from pipelines.loadtest.prefill import prefill_statements
from pipelines.ops.provision import apply_plan, template_names
from pipelines.ops.provision.clickhouse import plan_clickhouse
from pipelines.ops.provision.plan import Plan


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=12_500)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--write-docs", action="store_true", help="Record the figures in docs/BENCHMARKS.md.")
    args = ap.parse_args()
    settings = Settings()
    database = f"bench_native_{uuid.uuid4().hex[:8]}"
    tcp = f"clickhouse://default:@127.0.0.1:{settings.stack.clickhouse_tcp_port}/"
    driver = open_store(settings, url=tcp, database=database)
    http = open_store(settings, url=f"{tcp}?http_port={settings.stack.clickhouse_http_port}", database=database)
    header = machine()
    driver.ensure_database()
    try:
        batch = _batch(settings, driver, database, args.rows)
        driver.execute("CREATE TABLE stage AS transactions ENGINE = Memory")  # as the ingest fence does
        types = [t for _, t in driver.table_columns("stage")]
        results: dict[str, tuple[float, float]] = {}
        for label, store in (("clickhouse-driver (native protocol)", driver), ("Native over HTTP", http)):
            wall, cpu = [], []
            for _ in range(args.reps):
                driver.execute("TRUNCATE TABLE stage")
                c0, t0 = _cpu(), time.perf_counter()
                store.insert_arrow("stage", batch)
                wall.append((time.perf_counter() - t0) * 1000)
                cpu.append((_cpu() - c0) * 1000)
            assert driver.query_scalar("SELECT count() FROM stage") == batch.num_rows
            results[label] = (statistics.median(wall), statistics.median(cpu))
        encode = []
        for _ in range(args.reps):
            c0 = _cpu()
            assert encode_block(batch, types) is not None
            encode.append((_cpu() - c0) * 1000)
    finally:
        driver.execute(f"DROP DATABASE IF EXISTS `{database}`")
        driver.close()
        http.close()
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} with `python bench/bench_native_insert.py --rows {args.rows} "
        f"--reps {args.reps}` on {header}; clickhouse-server {driver.caps.version_text} of the stack, a batch of "
        f"{args.rows:,} transactions ({batch.num_columns} columns) into a Memory table, medians of {args.reps}.",
        "",
        "| insert path | wall ms per batch | client CPU ms per batch | client CPU µs per row |",
        "|---|---:|---:|---:|",
    ]
    for label, (wall_ms, cpu_ms) in results.items():
        lines.append(f"| {label} | {wall_ms:.1f} | {cpu_ms:.1f} | {cpu_ms * 1000 / args.rows:.2f} |")
    lines += ["", f"The Native encode alone: {statistics.median(encode):.1f} CPU ms per batch."]
    text = "\n".join(lines)
    print(text)
    if args.write_docs:
        write_section("native-insert", text, title="Server insert path (`bench/bench_native_insert.py`)")


def _batch(settings: Settings, store: Store, database: str, rows: int) -> pa.Table:
    """`rows` transactions in the provisioned table's columns (synthetic rows, `--prefill-rows`'s)."""
    settings.clickhouse.database = database
    names = template_names(settings)
    sql_names = {key: quote_identifier(names[key]) for key in ("database", "table")}
    path = settings.configs_dir / "clickhouse" / "tables.yaml"
    tables = load_tables(path, names=names, sql_names={**names, **sql_names})
    apply_plan(Plan(plan_clickhouse(store, database, tables)))
    for sql in prefill_statements(store, f"{database}.transactions", rows):
        store.execute(sql)
    return store.query_arrow("SELECT * FROM transactions")


if __name__ == "__main__":
    main()
