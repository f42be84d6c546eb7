"""Shared by the benchmarks: the machine's description and docs/BENCHMARKS.md sections."""

from __future__ import annotations

import os
import platform
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs" / "BENCHMARKS.md"


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    system = f"{platform.system()} {platform.release()}"
    load = os.getloadavg()[0]
    return (f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, {system}, Python {platform.python_version()}, "
            f"load average {load:.1f} at the start")  # fmt: skip


def write_section(name: str, markdown: str, *, title: str | None = None) -> None:
    """Replace the text between `<!-- NAME:begin -->` and `<!-- NAME:end -->`.

    With a `title`, a document without the markers gets them in a new `## title` section at the
    end (a benchmark's first recorded run); without one, missing markers are an error.
    """
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = DOCS.read_text()
    head, found, rest = text.partition(begin)
    if not found and title is not None:
        DOCS.write_text(f"{text.rstrip()}\n\n## {title}\n\n{begin}\n{markdown.strip()}\n{end}\n")
        return
    if not found:
        raise SystemExit(f"{DOCS} has no {begin} marker")
    _, _, tail = rest.partition(end)
    DOCS.write_text(f"{head}{begin}\n{markdown.strip()}\n{end}{tail}")
