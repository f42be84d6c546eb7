"""What fraud detection adds to an ingest worker: CPU-s per million events, detection on vs off.

    python bench/bench_detect_ingest.py [--sizes 1000000,3000000] [--pairs 3] [--batch-rows 100000,12500]
                                        [--fraud-rate 0.01] [--backend embedded|server] [--write-docs]
                                        [--profile FILE]

Pre-produces labelled traffic (the generator's scenarios at --fraud-rate, 14 days of event
time, seed 7) into one fresh topic per size, then runs one `nova ingest --until-caught-up`
worker per run in a process of its own, into a fresh chdb, alternating detection on and off
(`pairs` pairs per size), at each insert size of --batch-rows: 100,000 rows (a catching-up
worker) and 12,500 (live at 50k/s: a 0.25 s batch), where the alerts' own insert per batch
weighs more. CPU is the whole process's (user + sys, every thread, chdb's
included), taken by the parent from the reaped child. The worker's `batch_max_seconds` is raised
so that every insert holds the batch's rows on and off alike: a catch-up worker slowed by
detection would otherwise flush smaller batches, and the extra parts' merges would be charged to
detection.

The figure for the target (≤ 1.5 CPU-s per million events added to the worker) is the marginal
cost between the two sizes, (Δ_big − Δ_small) / (big − small) per million, with Δ the median
on − off difference at a size: a worker pays a fixed part once per process (numba's warm
cache load, the state restore at assignment), and the target is about what each event costs.
`detection_cpu_s` (the worker thread's CPU inside the detection stage) is shown beside it.

`--backend server` runs the same into clickhouse-server (`nova stack up --with clickhouse-server`,
a fresh database per run): the worker's CPU is then its own process's only, as in a deployment,
and the server's CPU over each run (its process, read from /proc) is shown beside it, since the
embedded store charges its inserts and merges to the worker.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


SERVER_URL = "clickhouse://default:@127.0.0.1:19000/default?http_port=18123"
BACKEND = {"name": "embedded"}  # set by --backend


def _env(topic: str, chdb_path: str, *, detection: bool, batch_rows: int) -> dict[str, str]:
    env = dict(os.environ)
    server = BACKEND["name"] == "server"
    env.update(
        {
            "NOVA_PIPELINE__TOPIC": topic,
            "NOVA_PIPELINE__DLQ_TOPIC": f"{topic}.dlq",
            "NOVA_PIPELINE__GROUP_ID": f"{Path(chdb_path).name}",
            "NOVA_PIPELINE__BATCH_MAX_ROWS": str(batch_rows),
            "NOVA_PIPELINE__BATCH_MAX_SECONDS": "30",
            "NOVA_CLICKHOUSE__URL": SERVER_URL if server else f"chdb://{chdb_path}",
            # on the server, a database per run (the name of its scratch folder)
            "NOVA_CLICKHOUSE__DATABASE": f"bench_{Path(chdb_path).name.replace('-', '_')}" if server else "bench",
            "NOVA_DETECTION__ENABLED": "true" if detection else "false",
        }
    )
    return env


def _settings(env: dict[str, str]):  # type: ignore[no-untyped-def]
    from pipelines.config import load_settings

    return load_settings(REPO / "configs" / "nova.yaml", environ=env)


def _produce(topic: str, count: int, fraud_rate: float, scratch: Path) -> None:
    from pipelines.clickhouse import open_store
    from pipelines.ops.provision import provision
    from pipelines.synth.fraud import FraudSpec
    from pipelines.synth.labelled import generate_labelled

    settings = _settings(_env(topic, str(scratch / "setup"), detection=True, batch_rows=100_000))
    with open_store(settings) as store:
        provision(settings=settings, store=store, dry_run=False)
    t0 = time.time()
    generate_labelled(
        settings=settings, count=count, seed=7, fraud=FraudSpec(rate=fraud_rate), spread_days=14.0, topic=topic
    )
    print(f"  {count:,} events into {topic} in {time.time() - t0:.0f} s", file=sys.stderr)


def _run(topic: str, scratch: Path, run: str, *, detection: bool, batch_rows: int, profile: str | None) -> dict:
    chdb_path = scratch / run
    env = _env(topic, str(chdb_path), detection=detection, batch_rows=batch_rows)
    with_settings = _settings(env)
    from pipelines.clickhouse import open_store
    from pipelines.ops.provision import provision

    with open_store(with_settings) as store:  # tables exist before the clock starts, as in production
        provision(settings=with_settings, store=store, dry_run=False)
    cmd = [str(Path(sys.executable).parent / "nova"), "ingest", "--until-caught-up", "--workers", "1", "--json"]
    if profile:
        spy = [str(Path(sys.executable).parent / "py-spy"), "record", "--rate", "250", "--format", "raw"]
        cmd = [*spy, "--subprocesses", "--nonblocking", "-o", profile, "--", *cmd]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_before = _server_cpu_s()
    t0 = time.time()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.time() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_cpu = _server_cpu_s() - server_before
    if out.returncode != 0:
        raise SystemExit(f"run {run} failed ({out.returncode}):\n{out.stderr[-4000:]}")
    summary, _ = json.JSONDecoder().raw_decode(out.stdout[out.stdout.index("{") :])  # py-spy may print after it
    shutil.rmtree(chdb_path, ignore_errors=True)
    if BACKEND["name"] == "server":
        with open_store(with_settings) as store:
            store.execute(f"DROP DATABASE IF EXISTS {with_settings.clickhouse.database}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "detection": detection,
        "cpu_s": cpu,
        "server_cpu_s": server_cpu,
        "wall_s": wall,
        "events": summary["events"],
        "alerts": summary.get("alerts", 0),
        "batches": summary.get("batches"),
        "detection_cpu_s": summary.get("detection_cpu_s", 0.0),
        "alert_insert_ms": summary.get("latency_alert_insert") or {},
    }


def _server_pid() -> int | None:
    pid_file = REPO / ".nova" / "clickhouse-server" / "clickhouse-server.pid"
    try:
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return None
    return pid


def _server_cpu_s() -> float:
    """clickhouse-server's CPU so far (user + sys, s); 0 without a server."""
    pid = _server_pid() if BACKEND["name"] == "server" else None
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000000,3000000", help="two event counts (the marginal cost is between them)")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--batch-rows", default="100000,12500", help="insert sizes to measure at (12,500: live at 50k/s)")
    ap.add_argument("--fraud-rate", type=float, default=0.01)
    ap.add_argument("--backend", choices=("embedded", "server"), default="embedded",
                    help="chdb in the worker (default) or clickhouse-server (its CPU then shown apart)")  # fmt: skip
    ap.add_argument("--write-docs", action="store_true", help="Record the figures in docs/BENCHMARKS.md.")
    ap.add_argument("--profile", help="py-spy the first detection-on run of each size into FILE.<events> (raw stacks)")
    args = ap.parse_args()
    BACKEND["name"] = args.backend
    if args.backend == "server" and _server_pid() is None:
        raise SystemExit("--backend server: clickhouse-server is not running (nova stack up --with clickhouse-server)")
    sizes = sorted(int(s) for s in args.sizes.split(","))
    if len(sizes) != 2 or sizes[0] == sizes[1]:
        raise SystemExit("--sizes takes two different event counts, e.g. 1000000,3000000")
    batches = [int(b) for b in args.batch_rows.split(",")]

    from pipelines import kafka

    stamp = time.strftime("%Y%m%d%H%M%S")
    scratch = REPO / ".nova" / "bench" / f"detect-ingest-{stamp}"
    scratch.mkdir(parents=True, exist_ok=True)
    topics = {n: f"bench.detect.{stamp}.{n}" for n in sizes}
    print("pre-producing labelled traffic …", file=sys.stderr)
    for n, topic in topics.items():
        _produce(topic, n, args.fraud_rate, scratch)
    results = []
    for batch in batches:
        runs: dict[int, list[dict]] = {n: [] for n in sizes}
        for pair in range(args.pairs):
            for n in sizes:
                # alternate which goes first: a drift in the machine's load then hits both alike
                order = (True, False) if pair % 2 == 0 else (False, True)
                for detection in order:
                    first = args.profile and pair == 0 and detection
                    profile = f"{args.profile}.{batch}.{n}" if first else None
                    r = _run(topics[n], scratch, f"{batch}-{n}-{pair}-{int(detection)}", detection=detection,
                             batch_rows=batch, profile=profile)  # fmt: skip
                    runs[n].append(r)
                    print(f"  batch {batch:>7,} {n:>9,} detection {'on ' if detection else 'off'}: "
                          f"{r['cpu_s']:.2f} CPU-s, {r['wall_s']:.1f} s, {r['alerts']:,} alerts, "
                          f"detection_cpu_s {r['detection_cpu_s']:.2f}", file=sys.stderr)  # fmt: skip
        results.append({"batch_rows": batch, **summarise(runs, sizes)})
    settings = _settings(_env(topics[sizes[0]], str(scratch / "setup"), detection=True, batch_rows=batches[0]))
    kafka.delete_topics(settings, [t for topic in topics.values() for t in (topic, f"{topic}.dlq")])
    if args.backend == "server":  # the database the producer's provisioning made
        from pipelines.clickhouse import open_store

        with open_store(settings) as store:
            store.execute(f"DROP DATABASE IF EXISTS {settings.clickhouse.database}")
    shutil.rmtree(scratch, ignore_errors=True)

    from _docs import machine

    result = {
        "machine": machine(),
        "backend": args.backend,
        "fraud_rate": args.fraud_rate,
        "pairs": args.pairs,
        "by_batch": results,
    }
    print(json.dumps(result, indent=2))
    if args.write_docs:
        from _docs import write_section

        section = "detect-ingest" if args.backend == "embedded" else "detect-ingest-server"
        write_section(section, format_markdown(result), title="Fraud detection: cost in the worker (bench)")


def summarise(runs: dict[int, list[dict]], sizes: list[int]) -> dict:
    per_size = {}
    for n in sizes:
        on = [r for r in runs[n] if r["detection"]]
        off = [r for r in runs[n] if not r["detection"]]
        per_size[n] = {
            "on_cpu_s": [round(r["cpu_s"], 2) for r in on],
            "off_cpu_s": [round(r["cpu_s"], 2) for r in off],
            "delta_cpu_s": statistics.median(a["cpu_s"] - b["cpu_s"] for a, b in zip(on, off, strict=True)),
            "detection_cpu_s": statistics.median(r["detection_cpu_s"] for r in on),
            "alerts": on[0]["alerts"],
            "server_delta_cpu_s": statistics.median(
                a["server_cpu_s"] - b["server_cpu_s"] for a, b in zip(on, off, strict=True)
            ),
            "alert_insert_p50_ms": statistics.median(r["alert_insert_ms"].get("p50_ms") or 0 for r in on),
            "alert_insert_p99_ms": statistics.median(r["alert_insert_ms"].get("p99_ms") or 0 for r in on),
            "batches_on_off": (on[0]["batches"], off[0]["batches"]),
        }
    small, big = sizes
    millions = (big - small) / 1e6
    return {
        "sizes": per_size,
        "marginal_cpu_s_per_million": (per_size[big]["delta_cpu_s"] - per_size[small]["delta_cpu_s"]) / millions,
        "marginal_stage_cpu_s_per_million": (per_size[big]["detection_cpu_s"] - per_size[small]["detection_cpu_s"])
        / millions,
    }


def format_markdown(r: dict) -> str:
    server = r.get("backend") == "server"
    rows, verdicts = [], []
    for b in r["by_batch"]:
        for n, s in b["sizes"].items():
            on = ", ".join(f"{x:.2f}" for x in s["on_cpu_s"])
            off = ", ".join(f"{x:.2f}" for x in s["off_cpu_s"])
            latency = f"{s['alert_insert_p50_ms']:.0f} / {s['alert_insert_p99_ms']:.0f} ms"
            extra = f" {s['server_delta_cpu_s']:.2f} |" if server else ""
            rows.append(f"| {b['batch_rows']:,} | {int(n):,} | {on} | {off} | {s['delta_cpu_s']:.2f} | "
                        f"{s['detection_cpu_s']:.2f} |{extra} {s['alerts']:,} | {latency} |")  # fmt: skip
        whole, stage = b["marginal_cpu_s_per_million"], b["marginal_stage_cpu_s_per_million"]
        verdicts.append(f"at {b['batch_rows']:,}-row inserts **{whole:.2f}** (the stage's own count {stage:.2f}): "
                        + ("met" if max(whole, stage) <= 1.5 else "not met"))  # fmt: skip
    where = (
        "into clickhouse-server (a fresh database per run); the worker process's CPU, and the server's beside it"
        if server
        else "into a fresh chdb; whole-process CPU (every thread, chdb's included)"
    )
    return "\n".join(
        [
            f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {r['machine']}. "
            f"`python bench/bench_detect_ingest.py{' --backend server' if server else ''}`: labelled traffic "
            f"(fraud rate {r['fraud_rate']}, 14 days, seed 7), one `nova ingest --until-caught-up --workers 1` "
            f"per run {where}; detection on and off alternately, {r['pairs']} pairs per size and insert size; "
            "`detection_cpu_s` is the worker thread's CPU inside the detection stage.",
            "",
            "| insert rows | events | detection on (CPU-s) | off | on − off (median) | `detection_cpu_s` (median) "
            + ("| server on − off " if server else "")
            + "| alerts | alert after insert p50 / p99 |",
            "|---:|---:|---|---|---:|---:|" + ("---:|" if server else "") + "---:|---:|",
            *rows,
            "",
            "Marginal CPU-s per million events that detection adds to the worker, between the two sizes "
            "(target ≤ 1.5): " + "; ".join(verdicts) + ".",
        ]
    )


if __name__ == "__main__":
    main()
