"""Throughput of the Avro codec on card transactions: encode, and the ways to decode.

    python bench/bench_decode.py [--records 200000] [--batch 10000] [--reps 5] [--write-docs]

Every variant decodes the same wire-format values (in batches of --batch, as a consumer would hand
them over) and is checked against the records that were encoded; rates are records per second of
this process's CPU time (steadier than wall time on a shared machine; the code is single-threaded),
best and median of --reps rounds, run round-robin so machine noise hits all variants alike.
Not a test: numbers depend on the machine (see docs/BENCHMARKS.md for recorded runs).

The ingest worker decodes with ``FastDecoder`` (bench/bench_fastdecode.py); ``Decoder`` serves the
DLQ tools and is the fast path's authority, and ``decode_batch`` is a loop over ``decode``: this
shows what fastavro itself costs per record, with and without logical types and schema resolution.
"""

from __future__ import annotations

import argparse
import copy
import gc
import io
import json
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastavro

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipelines.contracts.codec import HEADER_SIZE, Decoder, encode, encode_batch, enum_symbols, parse_raw  # noqa: E402
from pipelines.contracts.registry import FileRegistry  # noqa: E402

SUBJECT = "transactions-value"


def make_records(n: int, schema: dict[str, Any], seed: int = 7) -> list[dict[str, Any]]:
    rnd = random.Random(seed)
    channels = list(enum_symbols(schema, "channel"))
    statuses = list(enum_symbols(schema, "status"))
    out = []
    for i in range(n):
        out.append(
            {
                "transaction_id": str(uuid.UUID(int=rnd.getrandbits(128), version=4)),
                "event_time": 1_700_000_000_000 + i * 7,
                "card_id": f"card_{rnd.randrange(1_000_000):07d}",
                "account_id": f"acct_{rnd.randrange(500_000):06d}",
                "merchant_id": f"m_{rnd.randrange(20_000):05d}",
                "merchant_category": rnd.choice(["5411", "5812", "5999", "4111", "6011"]),
                "amount_minor": rnd.randrange(1, 500_000),
                "currency": rnd.choice(["EUR", "USD", "GBP", "CHF"]),
                "country": rnd.choice(["DE", "FR", "GB", "US", "SE"]),
                "channel": rnd.choice(channels),
                "status": rnd.choice(statuses),
                "device_id": None if rnd.random() < 0.3 else f"dev_{rnd.randrange(10**6)}",
                "ip_address": None if rnd.random() < 0.5 else f"10.0.{rnd.randrange(256)}.{rnd.randrange(256)}",
                "latitude": None if rnd.random() < 0.4 else rnd.uniform(-90, 90),
                "longitude": None if rnd.random() < 0.4 else rnd.uniform(-180, 180),
            }
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--write-docs", action="store_true", help="record the figures in docs/BENCHMARKS.md")
    args = ap.parse_args()
    n, batch = args.records, args.batch

    tmp = Path(tempfile.mkdtemp(prefix="nova-bench-"))
    try:
        shutil.copytree(ROOT / "configs" / "schemas", tmp / "schemas")
        registry = FileRegistry(tmp / "schemas")
        v1 = registry.latest(SUBJECT)
        v2_json = json.loads(v1.schema.raw)
        v2_json["fields"].append({"name": "risk_score", "type": ["null", "double"], "default": None})
        v2_id = registry.register(SUBJECT, json.dumps(v2_json))
        subset_json = copy.deepcopy(json.loads(v1.schema.raw))
        needed = {"transaction_id", "event_time", "card_id", "amount_minor", "currency", "status"}
        subset_json["fields"] = [f for f in subset_json["fields"] if f["name"] in needed]

        records = make_records(n, json.loads(v1.schema.raw))
        raw_v1 = parse_raw(v1.schema.raw)
        logical_v1 = fastavro.parse_schema(json.loads(v1.schema.raw))
        values = encode_batch(records, v1.id, raw_v1)
        batches = [values[s : s + batch] for s in range(0, n, batch)]
        corrupt = list(values)
        for i in range(0, n, 100):  # 1% bad: alternately cut short and given a trailing byte
            corrupt[i] = corrupt[i][:-3] if (i // 100) % 2 else corrupt[i] + b"\x00"
        corrupt_batches = [corrupt[s : s + batch] for s in range(0, n, batch)]

        def per_message(schema: dict[str, Any], reader: dict[str, Any] | None = None) -> Callable[[], Any]:
            def run() -> list[Any]:
                out = []
                for part in batches:
                    for v in part:
                        fo = io.BytesIO(v)
                        fo.seek(HEADER_SIZE)
                        out.append(fastavro.schemaless_reader(fo, schema, reader))
                return out

            return run

        def with_decoder(reader: Any = None, source: list[list[bytes]] = batches) -> Callable[[], Any]:
            dec = Decoder(registry, reader)

            def run() -> list[Any]:
                out: list[Any] = []
                for part in source:
                    out.extend(dec.decode_batch(part)[0])
                return out

            return run

        def gc_off(fn: Callable[[], Any]) -> Callable[[], Any]:
            def run() -> Any:
                gc.disable()
                try:
                    return fn()
                finally:
                    gc.enable()

            return run

        def decode_loop() -> list[Any]:
            dec = Decoder(registry)
            return [dec.decode(v) for part in batches for v in part]

        v2_reader = parse_raw(json.dumps(v2_json))
        expect_v2 = [{**r, "risk_score": None} for r in records]
        expect_subset = [{k: r[k] for k in r if k in needed} for r in records]
        bad = set(range(0, n, 100))
        expect_corrupt = [r for i, r in enumerate(records) if i not in bad]
        variants: dict[str, tuple[Callable[[], Any], Any]] = {
            "encode() one by one": (lambda: [encode(r, v1.id, raw_v1) for r in records], values),
            "encode_batch (chosen)": (lambda: encode_batch(records, v1.id, raw_v1), values),
            "encode_batch, logical types on": (lambda: encode_batch(records, v1.id, logical_v1), values),
            "schemaless_reader per message": (per_message(raw_v1), records),
            "schemaless_reader, logical types converted": (per_message(logical_v1), None),
            "Decoder.decode per message": (decode_loop, records),
            "Decoder.decode_batch": (with_decoder(), records),
            "decode_batch, 1% corrupt messages": (with_decoder(source=corrupt_batches), expect_corrupt),
            "decode_batch, cyclic GC paused": (gc_off(with_decoder()), records),
            "schemaless_reader v1 -> v2 reader": (per_message(raw_v1, v2_reader), expect_v2),
            "decode_batch v1 -> v2 reader": (with_decoder(json.dumps(v2_json)), expect_v2),
            "decode_batch, 6 of 15 fields": (with_decoder(subset_json), expect_subset),
        }
        rates: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.reps):
            for name, (fn, expected) in variants.items():
                gc.collect()
                t0 = time.process_time()
                got = fn()
                rates[name].append(n / (time.process_time() - t0))
                if expected is not None and got != expected:
                    raise SystemExit(f"{name}: wrong result")
                del got

        about = (
            f"{platform.processor() or platform.machine()} · {platform.python_implementation()} "
            f"{platform.python_version()} · fastavro {fastavro.__version__}"
        )
        setup = (
            f"{n} card transactions (~{sum(map(len, values)) / n:.0f} B each), batches of {batch}, "
            f"{args.reps} rounds; v2 = id {v2_id}"
        )
        print(f"# {about}\n# {setup}")
        print(f"{'variant (records per CPU-second)':44s} {'best':>10s} {'median':>10s}")
        for name, r in rates.items():
            print(f"{name:44s} {max(r):10,.0f} {statistics.median(r):10,.0f}")
        if args.write_docs:
            write_docs(rates, setup, f"python bench/bench_decode.py --records {n} --batch {batch} --reps {args.reps}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_docs(rates: dict[str, list[float]], setup: str, command: str) -> None:
    from _docs import machine, write_section

    rows = [f"| {name} | {max(r):,.0f} | {statistics.median(r):,.0f} |" for name, r in rates.items()]
    write_section(
        "decode",
        "\n".join(
            [
                f"Measured {time.strftime('%Y-%m-%d')} with `{command}` on {machine()}; "
                f"{setup}. Records per CPU-second of the process (one thread).",
                "",
                "| variant | best | median |",
                "|---|---:|---:|",
                *rows,
            ]
        ),
        title="Avro codec (`bench/bench_decode.py`)",
    )


if __name__ == "__main__":
    main()
