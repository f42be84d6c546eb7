"""`make bench`: every benchmark, figures recorded in docs/BENCHMARKS.md.

Every `bench_*.py` must be listed in BENCHMARKS (checked before anything runs). The CPU-only
ones (codec; ingest decode + transform; the fraud detector core) go first: they need no service,
and a failure there shows before the ingest benchmark spends minutes pre-producing millions of events.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = (
    ("bench_decode.py", ["--write-docs"]),
    ("bench_fastdecode.py", ["--write-docs"]),
    ("bench_detect.py", ["--write-docs"]),
    ("bench_ingest.py", ["--write-docs"]),
    ("bench_detect_ingest.py", ["--write-docs"]),
    ("bench_native_insert.py", ["--write-docs"]),
    ("bench_parity.py", ["--write-docs"]),
    ("bench_tiering.py", ["--write-docs"]),
    ("bench_loadtest.py", ["--write-docs"]),
)


def main() -> None:
    argparse.ArgumentParser(description=__doc__).parse_args()  # --help lists, it doesn't run
    wired = {script for script, _ in BENCHMARKS}
    unwired = sorted(p.name for p in HERE.glob("bench_*.py") if p.name not in wired)
    if unwired:
        raise SystemExit(f"bench/run.py does not run {', '.join(unwired)}: add it to BENCHMARKS")
    for script, args in BENCHMARKS:
        print(f"== {script}", flush=True)
        subprocess.run([sys.executable, str(HERE / script), *args], check=True)


if __name__ == "__main__":
    main()
