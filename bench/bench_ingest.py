"""Ingest benchmark: (a) bare consume, (b) consume + decode, (c) the full `nova ingest` worker.

Pre-produces N events (default 2M) once into a fresh topic, then runs each phase in its own
process over the same topic with a fresh consumer group, and reports per worker process:
events/s, CPU seconds per million events, peak RSS, and the ratio (c)/(a).

    python bench/bench_ingest.py [--events 2000000]        (make bench runs it)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _settings(topic: str, group: str, chdb_path: str):  # type: ignore[no-untyped-def]
    from pipelines.config import load_settings

    env = dict(os.environ)
    env.update(
        {
            "NOVA_PIPELINE__TOPIC": topic,
            "NOVA_PIPELINE__DLQ_TOPIC": f"{topic}.dlq",
            "NOVA_PIPELINE__GROUP_ID": group,
            "NOVA_CLICKHOUSE__URL": f"chdb://{chdb_path}",
            "NOVA_CLICKHOUSE__DATABASE": "bench",
        }
    )
    return load_settings(REPO / "configs" / "nova.yaml", environ=env)


def _usage() -> dict[str, float]:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"cpu_s": ru.ru_utime + ru.ru_stime, "peak_rss_mib": ru.ru_maxrss / 1024}


def phase_consume(settings, events: int, decode: bool) -> dict:  # type: ignore[no-untyped-def]
    from pipelines import kafka
    from pipelines.ingest.worker import FETCH_TUNING

    consumer = kafka.consumer(settings, group_id=settings.pipeline.group_id, **FETCH_TUNING)
    decoder = None
    if decode:
        from pipelines.contracts.columnar import FastDecoder
        from pipelines.contracts.registry import open_registry

        decoder = FastDecoder(open_registry(settings))
    consumer.subscribe([settings.pipeline.topic])
    n, first = 0, None
    cpu0 = _usage()["cpu_s"]
    while n < events:
        msgs = consumer.consume(num_messages=10_000, timeout=1.0)
        if not msgs:
            continue
        if first is None:
            first = time.time()
        values = [m.value() for m in msgs if m.error() is None]
        if decoder is not None:
            decoder.decode(values)
        n += len(values)
    elapsed = time.time() - (first or time.time())
    consumer.close()
    u = _usage()
    return {"events": n, "elapsed_s": elapsed, "cpu_s": u["cpu_s"] - cpu0, "peak_rss_mib": u["peak_rss_mib"]}


def phase_ingest(settings, events: int) -> dict:  # type: ignore[no-untyped-def]
    from pipelines.ingest.latency import stage_means
    from pipelines.ingest.worker import run_worker

    cpu0 = _usage()["cpu_s"]
    status = run_worker(settings=settings, until_caught_up=True)
    end = time.time()
    u = _usage()
    assert status.events == events, f"ingested {status.events} of {events}"
    return {
        "events": status.events,
        "elapsed_s": end - (status.first_message_at or end),
        "cpu_s": u["cpu_s"] - cpu0,
        "peak_rss_mib": u["peak_rss_mib"],
        "latency_p50_ms": status.latency_p50_ms,
        "batches": status.batches,
        "insert_s_total": status.insert_s_total,
        # mean ms per event in each stage (pipelines.ingest.latency.STAGES): where the wall time went
        "stage_mean_ms": stage_means([status.stage_windows]),
    }


def _run_phase(name: str, topic: str, chdb_path: str, events: int, profile: str | None = None) -> dict:
    group = f"{topic}-{name}"
    # py-spy (a dev tool, `pip install py-spy`) samples the phase from outside: the worker's own
    # timings stay what they are without it, bar the sampling's few per cent.
    spy = [str(Path(sys.executable).parent / "py-spy"), "record", "--rate", "200", "--format", "raw"]
    spy += ["--nonblocking", "-o", profile, "--"] if profile else []
    out = subprocess.run(
        [
            *(spy if profile else []),
            sys.executable,
            __file__,
            "--phase",
            name,
            "--topic",
            topic,
            "--group",
            group,
            "--chdb",
            chdb_path,
            "--events",
            str(events),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"phase {name} failed:\n{out.stderr[-4000:]}")
    # the phase prints its result last; py-spy adds its own lines after it
    return json.loads([line for line in out.stdout.splitlines() if line.startswith("{")][-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=2_000_000)
    ap.add_argument("--phase")
    ap.add_argument("--topic")
    ap.add_argument("--group")
    ap.add_argument("--chdb")
    ap.add_argument("--write-docs", action="store_true", help="Record the figures in docs/BENCHMARKS.md.")
    ap.add_argument("--profile", help="Sample the full-worker phase with py-spy into this collapsed-stack file.")
    args = ap.parse_args()
    if args.phase:
        settings = _settings(args.topic, args.group, args.chdb)
        result = (
            phase_ingest(settings, args.events)
            if args.phase == "ingest"
            else phase_consume(settings, args.events, decode=args.phase == "decode")
        )
        print(json.dumps(result))
        return

    from pipelines import kafka
    from pipelines.clickhouse import open_store
    from pipelines.ops.provision import provision
    from pipelines.synth import generate

    stamp = time.strftime("%Y%m%d%H%M%S")
    topic = f"bench.ingest.{stamp}"
    chdb_path = str(REPO / ".nova" / "bench" / f"chdb-{stamp}")
    settings = _settings(topic, f"{topic}-setup", chdb_path)
    with open_store(settings) as store:
        provision(settings=settings, store=store, dry_run=False)
    print(f"pre-producing {args.events:,} events into {topic} …", file=sys.stderr)
    t0 = time.time()
    report = generate(settings=settings, count=args.events, seed=1)
    print(f"  produced in {time.time() - t0:.1f}s ({report.events_per_s:,.0f}/s)", file=sys.stderr)
    results = {}
    for name in ("consume", "decode", "ingest"):
        print(f"phase {name} …", file=sys.stderr)
        profile = args.profile if name == "ingest" else None
        results[name] = _run_phase(name, topic, chdb_path, args.events, profile)
        r = results[name]
        r["events_per_s"] = r["events"] / r["elapsed_s"]
        r["cpu_s_per_million"] = r["cpu_s"] / (r["events"] / 1e6)
        print(
            f"  {r['events_per_s']:,.0f} events/s, {r['cpu_s_per_million']:.1f} CPU-s/M, "
            f"peak RSS {r['peak_rss_mib']:.0f} MiB",
            file=sys.stderr,
        )
    results["ratio_ingest_to_consume"] = results["ingest"]["events_per_s"] / results["consume"]["events_per_s"]
    from _docs import machine

    results["machine"] = machine()
    results["events"] = args.events
    results["batch_max_rows"] = settings.pipeline.batch_max_rows
    kafka.delete_topics(settings, [topic, f"{topic}.dlq"])
    import shutil

    shutil.rmtree(chdb_path, ignore_errors=True)
    print(json.dumps(results, indent=2))
    if args.write_docs:
        write_docs(results)


def format_markdown(r: dict) -> str:
    rows = []
    for name, label in (
        ("consume", "(a) bare consume loop (poll only)"),
        ("decode", "(b) consume + decode"),
        ("ingest", "(c) full `nova ingest` worker"),
    ):
        x = r[name]
        rows.append(f"| {label} | {x['events_per_s']:,.0f} | {x['cpu_s_per_million']:.1f} | {x['peak_rss_mib']:.0f} |")
    return "\n".join(
        [
            f"Measured {time.strftime('%Y-%m-%d')} on {r['machine']}; {r['events']:,} events pre-produced "
            "into a 6-partition topic, one worker process, embedded ClickHouse (chdb), "
            f"batch_max_rows={r['batch_max_rows']:,}.",
            "",
            "| phase | events/s per process | CPU-s per million events | peak RSS MiB |",
            "|---|---:|---:|---:|",
            *rows,
            "",
            f"(c)/(a) = {r['ratio_ingest_to_consume']:.2f}. Targets for (c) (issue 11): ≥ 200,000 events/s, ≤ 5 "
            "CPU-s per million, peak RSS ≤ 1 GiB, ≥ 0.9× (a).",
            "",
            "Where (c)'s wall time went, mean ms per event and stage (`pipelines.ingest.latency.STAGES`; a replay "
            "of a backlog, so `fetch` is mostly the backlog's age): "
            + ", ".join(f"{k} {v:,.1f}" for k, v in (r["ingest"].get("stage_mean_ms") or {}).items())
            + f"; {r['ingest']['batches']} batches.",
        ]
    )


def write_docs(r: dict) -> None:
    from _docs import write_section

    write_section("ingest", format_markdown(r))


if __name__ == "__main__":
    main()
