"""`make bench`: every benchmark, figures recorded in docs/BENCHMARKS.md."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    for script, args in (("bench_ingest.py", ["--write-docs"]), ("bench_parity.py", ["--write-docs"])):
        print(f"== {script}", flush=True)
        subprocess.run([sys.executable, str(HERE / script), *args], check=True)


if __name__ == "__main__":
    main()
