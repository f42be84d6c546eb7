"""CPU cost and memory of the fraud detector core (`Detector.process`) on realistic card traffic.

    python bench/bench_detect.py [--events 1200000] [--cards 100000] [--batch 20000] [--reps 3] [--write-docs]

Input: the synthetic generator (`TransactionGenerator`) in historic mode, events spread over 30
days so cards have history, cut into batches of --batch rows as a worker hands over one
partition's rows. Each round runs a fresh Detector over all the batches and measures this
process's CPU time (steadier than wall time on a shared machine; the detector is single-threaded)
per million events; median and best of --reps rounds. Variants: scoring with rules only, with
the feature columns asked for, with a model (LightGBM, the default size, trained on the bench's
own features: its cost, not its quality), and replay (emit=False). Memory: bytes of card state
per card, and the same for --cards-memory cards (default 1M). JIT: the time a fresh process
takes from import to its first scored batch, with numba's on-disk cache warm (every later start
of a worker or test process) — the cold compile is printed once when the cache is empty.
Not a test: numbers depend on the machine (see docs/BENCHMARKS.md for recorded runs).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pyarrow as pa  # noqa: E402

from pipelines.config import load_settings  # noqa: E402
from pipelines.contracts.reference import load_reference  # noqa: E402
from pipelines.detect.config import load_detection_config  # noqa: E402
from pipelines.detect.engine import Detector  # noqa: E402
from pipelines.detect.features import ROW_BYTES  # noqa: E402
from pipelines.detect.model import train_model  # noqa: E402
from pipelines.synth.corpus import chunk_table  # noqa: E402
from pipelines.synth.model import TransactionGenerator  # noqa: E402

START_MS = 1_767_225_600_000  # 2026-01-01T00:00Z
SPREAD_S = 30 * 86_400.0

_STARTUP = """
import time, resource
t0 = time.perf_counter()
import numpy as np, pyarrow as pa
from pipelines.detect.config import load_detection_config
from pipelines.detect.engine import Detector
det = Detector(load_detection_config())
n = 100
det.process(pa.table({
    "event_time": pa.array(np.arange(n, dtype=np.int64) * 1000, pa.timestamp("ms", tz="UTC")),
    "card_id": pa.array([f"c{i % 7}" for i in range(n)]),
    "merchant_id": pa.array(["m"] * n),
    "amount_minor": pa.array(np.full(n, 1234, dtype=np.int64)),
}), features=True)
print(time.perf_counter() - t0)
"""


def make_batches(events: int, cards: int, batch: int, seed: int = 11) -> list[pa.Table]:
    settings = load_settings(ROOT / "configs" / "nova.yaml")
    ref = load_reference(settings)
    gen = TransactionGenerator(
        seed=seed, merchants=ref.merchants, fx_rates=ref.fx_rates, start_ms=START_MS, spread_s=SPREAD_S, cards=cards
    )
    table = chunk_table(next(gen.chunks(events)))
    # A partition's rows arrive roughly in event-time order (the generator's are not sorted).
    table = table.sort_by("event_time")
    return [table.slice(s, batch).combine_chunks() for s in range(0, table.num_rows, batch)]


def run(batches: list[pa.Table], make: Callable[[], Detector], **kwargs: bool) -> tuple[float, Detector]:
    det = make()
    gc.collect()
    t0 = time.process_time()
    for b in batches:
        det.process(b, **kwargs)
    return time.process_time() - t0, det


def startup_seconds() -> float:
    out = subprocess.run([sys.executable, "-c", _STARTUP], cwd=ROOT, capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=1_200_000)
    ap.add_argument("--cards", type=int, default=100_000)
    ap.add_argument("--cards-memory", type=int, default=1_000_000, help="cards of the memory measurement")
    ap.add_argument("--batch", type=int, default=20_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--write-docs", action="store_true", help="record the figures in docs/BENCHMARKS.md")
    args = ap.parse_args()

    first_start = startup_seconds()  # compiles into numba's cache if it is empty
    starts = [startup_seconds() for _ in range(3)]
    config = load_detection_config()
    batches = make_batches(args.events, args.cards, args.batch)
    n = sum(b.num_rows for b in batches)

    warm = Detector(config)
    sample = warm.process(batches[len(batches) // 2], features=True)
    assert sample.features is not None
    labels = (sample.rule_score if sample.rule_score is not None else sample.score) > 0.3
    labels[:: max(1, len(labels) // 50)] = True
    model = train_model(sample.features, labels)

    variants: dict[str, Callable[[], tuple[float, Detector]]] = {
        "process, rules only": lambda: run(batches, lambda: Detector(config)),
        "process, features=True": lambda: run(batches, lambda: Detector(config), features=True),
        "process, rules + model": lambda: run(batches, lambda: Detector(config, model)),
        "process(emit=False) (replay)": lambda: run(batches, lambda: Detector(config), emit=False),
    }
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    det: Detector | None = None
    for _ in range(args.reps):
        for name, fn in variants.items():
            seconds, det = fn()
            cpu[name].append(seconds / n * 1e6)
    assert det is not None
    per_card = det.state_bytes() / det.cards
    big = make_batches(min(3 * args.cards_memory, 4_000_000), args.cards_memory, 100_000, seed=12)
    _, big_det = run(big, lambda: Detector(config), emit=False)
    big_mib = big_det.state_bytes() / 2**20

    setup = (
        f"{n:,} generated events over 30 days, {args.cards:,} cards ({det.cards:,} seen), batches of {args.batch:,}, "
        f"{args.reps} rounds"
    )
    print(f"# {setup}")
    print(f"{'variant (CPU-s per million events)':40s} {'median':>8s} {'best':>8s}")
    for name, r in cpu.items():
        print(f"{name:40s} {statistics.median(r):8.2f} {min(r):8.2f}")
    print(f"state: {per_card:.0f} B allocated per card at {det.cards:,} cards (a card's row: {ROW_BYTES} B); "
          f"{big_det.cards:,} cards: {big_mib:.0f} MiB")  # fmt: skip
    print(f"process start to first scored batch (numba cache warm): {statistics.median(starts):.2f} s "
          f"(first run this time: {first_start:.2f} s)")  # fmt: skip
    if args.write_docs:
        write_docs(cpu, setup, per_card, big_det.cards, big_mib, statistics.median(starts), args)


def write_docs(
    cpu: dict[str, list[float]],
    setup: str,
    per_card: float,
    big_cards: int,
    big_mib: float,
    start_s: float,
    args: argparse.Namespace,
) -> None:
    from _docs import machine, write_section

    command = (
        f"python bench/bench_detect.py --events {args.events} --cards {args.cards} --batch {args.batch} "
        f"--reps {args.reps}"
    )
    rows = [f"| {name} | {statistics.median(r):.2f} | {min(r):.2f} |" for name, r in cpu.items()]
    write_section(
        "detect",
        "\n".join(
            [
                f"Measured {time.strftime('%Y-%m-%d')} with `{command}` on {machine()}; {setup}. "
                "CPU-seconds of the process per million events (one thread); target ≤ 1.5 added to the worker.",
                "",
                "| variant | median | best |",
                "|---|---:|---:|",
                *rows,
                "",
                f"Card state: {per_card:.0f} bytes per card; {big_cards:,} cards hold {big_mib:.0f} MiB. "
                f"A fresh process needs {start_s:.2f} s from import to its first scored batch (numba cache warm).",
            ]
        ),
        title="Fraud detection (detector core)",
    )


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
