"""`nova loadtest` on this machine: the generator's ceiling per process, and the pipeline under find-max and 3× peak.

    python bench/bench_loadtest.py [--ceiling-s 20] [--duration 5m] [--backends embedded,server]
                                   [--skip-pipeline] [--write-docs]

1. Generator ceiling: one process, one `PacedProducer` (pre-encoded pool, stamping, one Kafka
   producer, `poll(0)`, sampled delivery reports) asked for far more than it can send, into a
   fresh topic nobody consumes: messages/s it reached, and CPU-s per million messages (the
   process's, librdkafka's threads included). Stamping alone (no Kafka) is timed too.
2. On each backend, everything on this one machine (Kafka, ingest, ClickHouse, Locust):
   `nova loadtest --profile find-max` up to 3× peak, then `--profile step --peak-multiplier 3`;
   the highest rate that held, and produce→queryable p50/p99 per step (1×, 2×, 3× peak or what
   was reached). Each run gets its own topic, group and database, removed afterwards.

Not a test: the figures depend on the machine and on what else runs on it; they are the baseline
the next latency work is measured against, and are recorded whatever they are.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _docs import machine, write_section  # noqa: E402

SERVER_URL = "clickhouse://default:@127.0.0.1:19000/default?http_port=18123"  # inserts as Native over HTTP


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def ceiling(seconds: float) -> dict[str, float]:
    """Messages/s and CPU-s per million of one producer process sending flat out."""
    import numpy as np

    from pipelines import kafka
    from pipelines.config import load_settings
    from pipelines.loadtest.producer import PacedProducer
    from pipelines.loadtest.stamping import PayloadPool

    topic = f"bench.loadtest.{uuid.uuid4().hex[:8]}"
    settings = load_settings(ROOT / "configs" / "nova.yaml", environ={**os.environ, "NOVA_PIPELINE__TOPIC": topic})
    pool = PayloadPool.build(settings, run_id="00000000", producer=0, size=settings.loadtest.pool_size, seed=1)
    times = int(time.time() * 1000) + np.arange(100_000, dtype=np.int64)
    started = time.perf_counter()
    for _ in range(5):
        pool.stamp(0, times)
    stamp_us = (time.perf_counter() - started) / 500_000 * 1e6

    kafka.create_topic(settings, topic, partitions=6, replication_factor=1, config={})
    try:
        samples = settings.loadtest.ack_samples_per_s
        producer = PacedProducer(settings=settings, pool=pool, topic=topic, producer_index=0, samples_per_s=samples)
        t0 = time.time()
        producer.schedule([(t0, 10_000_000.0, 0), (t0 + seconds, 0.0, -1)], started_at=t0)
        cpu0, wall0 = _cpu_s(), time.perf_counter()
        while time.time() < t0 + seconds:
            producer.send_due()
            producer.poll()
        producer.finish(60)
        cpu, wall = _cpu_s() - cpu0, time.perf_counter() - wall0
        sent, failed = producer.counter, producer.total_failed
    finally:
        kafka.delete_topics(settings, [topic])
    return {
        "messages": sent,
        "failed": failed,
        "messages_per_s": sent / wall,
        "cpu_s_per_million": cpu / (sent / 1e6),
        "stamp_us_per_message": stamp_us,
    }


def pipeline_run(backend: str, *args: str) -> dict[str, Any]:
    """One `nova loadtest --json` on a fresh topic/group/database of `backend`; its JSON summary."""
    name = f"bench_lt_{uuid.uuid4().hex[:8]}"
    state = ROOT / ".nova" / "bench" / name
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOVA_")}
    env.update(
        {
            "NOVA_PIPELINE__TOPIC": f"{name}.tx",
            "NOVA_PIPELINE__DLQ_TOPIC": f"{name}.dlq",
            "NOVA_PIPELINE__GROUP_ID": f"{name}-ingest",
            "NOVA_CLICKHOUSE__DATABASE": name,
            "NOVA_CLICKHOUSE__URL": f"chdb://{state / 'chdb'}" if backend == "embedded" else SERVER_URL,
            "NOVA_LOADTEST__RUNS_DIR": str(state / "runs"),
        }
    )
    nova = [sys.executable, "-c", "from cli.main import main; main()"]
    subprocess.run([*nova, "provision", "--yes"], env=env, cwd=ROOT, check=True, capture_output=True)
    try:
        out = subprocess.run([*nova, "loadtest", "--json", *args], env=env, cwd=ROOT, capture_output=True, text=True)
        if out.returncode not in (0, 1):
            raise SystemExit(f"nova loadtest {' '.join(args)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
        summary: dict[str, Any] = json.loads(out.stdout)
        return summary
    finally:
        from pipelines import kafka
        from pipelines.config import load_settings

        settings = load_settings(ROOT / "configs" / "nova.yaml", environ=env)
        kafka.delete_topics(settings, [f"{name}.tx", f"{name}.dlq"], missing_ok=True)
        if backend == "server":
            subprocess.run([*nova, "query", f"DROP DATABASE IF EXISTS {name}"], env=env, cwd=ROOT, capture_output=True)


def _pct(step: dict[str, Any], key: str, q: str) -> str:
    p = step.get(key)
    return "—" if not p else f"{p[q] / 1000:.2f} s"


def _steps_table(summary: dict[str, Any]) -> list[str]:
    rows = ["| step | target/s | achieved/s | queryable p50 | queryable p99 | ack p99 | query p95 | held |",
            "|---|---:|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    held = {v["index"]: v["held"] for v in summary["verdict"]["steps"]}
    for s in summary["steps"]:
        if s["status"] == "not run":
            continue
        q = s.get("query_ms")
        query = "—" if not q else f"{q['p95_ms']:,.0f} ms"
        rows.append(
            f"| {s['label']} | {s['target_rate']:,.0f} | {s['achieved_rate']:,.0f} | "
            f"{_pct(s, 'produce_to_queryable_ms', 'p50_ms')} | {_pct(s, 'produce_to_queryable_ms', 'p99_ms')} | "
            f"{_pct(s, 'produce_to_ack_ms', 'p99_ms')} | {query} | "
            f"{'yes' if held.get(s['index']) else 'no'} |"
        )
    return rows


def _breakdown_table(summary: dict[str, Any]) -> list[str]:
    """Mean ms per event in each stage, per step (from `nova loadtest --json`'s breakdown)."""
    rows = summary.get("breakdown") or []
    if not rows:
        return []
    names = list(dict.fromkeys(name for r in rows for name in r["stages_mean_ms"]))
    out = ["| step | " + " | ".join(names) + " | produce→queryable mean |", "|---|" + "---:|" * (len(names) + 1)]
    for r in rows:
        cells = [f"{r['stages_mean_ms'][n]:,.0f}" if n in r["stages_mean_ms"] else "—" for n in names]
        mean = r.get("queryable_mean_ms")
        out.append(f"| {r['label']} | " + " | ".join(cells) + f" | {'—' if mean is None else f'{mean:,.0f}'} |")
    return ["Where the time goes, mean ms per event (stages add up; see the report's stacked bars):", "", *out, ""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ceiling-s", type=float, default=20.0, help="Seconds of flat-out sending for the ceiling.")
    ap.add_argument("--duration", default="5m", help="Length of each pipeline run (find-max and step).")
    ap.add_argument("--backends", default="embedded,server", help="Comma-separated: embedded, server.")
    ap.add_argument("--skip-pipeline", action="store_true", help="Only the generator ceiling.")
    ap.add_argument("--write-docs", action="store_true", help="Record the figures in docs/BENCHMARKS.md.")
    args = ap.parse_args()

    md = [f"Machine: {machine()}.", ""]
    print("generator ceiling …", file=sys.stderr)
    c = ceiling(args.ceiling_s)
    print(json.dumps(c), file=sys.stderr)
    md += [
        "Generator ceiling, one Locust-style process (`PacedProducer`, flat out, 6 partitions, nobody consuming):",
        f"**{c['messages_per_s']:,.0f} messages/s**, {c['cpu_s_per_million']:.2f} CPU-s per million "
        f"({c['messages']:,} sent, {c['failed']} failed); stamping alone {c['stamp_us_per_message']:.2f} µs/message.",
        "",
    ]
    if not args.skip_pipeline:
        for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
            print(f"{backend}: find-max …", file=sys.stderr)
            fm = pipeline_run(backend, "--profile", "find-max", "--peak-multiplier", "3", "--duration", args.duration)
            print(f"{backend}: step to 3× peak …", file=sys.stderr)
            st = pipeline_run(backend, "--profile", "step", "--peak-multiplier", "3", "--duration", args.duration)
            held = fm.get("highest_held_rate")
            store = "chdb" if backend == "embedded" else "clickhouse-server 18.16"
            md += [
                f"### {backend} ({store}), all on this machine",
                "",
                f"find-max to 3× peak over {args.duration}: highest rate that held "
                f"**{'none' if held is None else f'{held:,.0f}/s'}** — {fm['summary']}",
                "",
                f"step 1×/2×/3× peak over {args.duration} — {st['summary']}:",
                "",
                *_steps_table(st),
                "",
                *_breakdown_table(st),
            ]
    text = "\n".join(md)
    print(text)
    if args.write_docs:
        write_section("loadtest", text, title="Load test (`nova loadtest`)")


if __name__ == "__main__":
    main()
