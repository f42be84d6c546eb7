"""What every command module shares: the consoles, the settings of this invocation, progress bars.

Text from users, configs and data (names, paths, values, messages) never reaches rich markup
raw — `[/x]` in a value would crash the print, `[red]` would vanish: f-strings with markup
`escape()` it, table cells take it as `cell()` (a `Text`, which markup never touches).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.text import Text

if TYPE_CHECKING:
    import rich.progress

    from pipelines.config import Settings

# Data goes to stdout, diagnostics and progress to stderr (so `nova query … > out.csv` is clean).
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False)


class State:
    """Per-invocation state set by the root callback."""

    config_path: Path | None = None
    _settings: Settings | None = None


state = State()


def settings() -> Settings:
    """Load (once) and return the configuration; a bad file raises ConfigError → exit 2."""
    if state._settings is None:
        from pipelines.config import load_settings

        state._settings = load_settings(state.config_path)
    return state._settings


def print_json(data: Any) -> None:
    out.print_json(json.dumps(data, default=str))


def kafka_name(value: str, *, option: str) -> str:
    """A topic named on the command line, held to the rule the configured ones are (UsageError, exit 2)."""
    from pipelines.config import check_kafka_name
    from pipelines.errors import UsageError

    try:
        return check_kafka_name(value)
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}") from None


def confirm_or_abort(question: str, *, yes: bool) -> None:
    """Ask before a destructive step unless --yes; without a TTY, refuse rather than hang."""
    import sys

    from pipelines.errors import UsageError

    if yes:
        return
    if not sys.stdin.isatty():
        raise UsageError(f"{question} — refusing without confirmation", hint="re-run with --yes")
    if not typer.confirm(question, default=False, err=True):
        raise typer.Exit(1)


def cell(value: object) -> Text:
    """A table cell of data (a name, a path, a query value), shown exactly as it is."""
    return Text(str(value))


class Progress:
    """Progress bars on stderr, one per stage, when stderr is a terminal; a no-op otherwise (CI logs, pipes).

    `update(stage, done, total)` adds the stage's bar the first time; `count` is what the
    counter and the rate show when the bar measures something else (seconds of a timed run).
    """

    def __init__(self, unit: str) -> None:
        self.unit = unit
        self._bars: rich.progress.Progress | None = None
        self._tasks: dict[str, rich.progress.TaskID] = {}

    def __enter__(self) -> Progress:
        if err.is_terminal:
            self._bars = _progress_bars(self.unit)
            self._bars.start()
        return self

    def update(self, stage: str, done: float, total: float | None = None, *, count: int | None = None) -> None:
        if self._bars is None:
            return
        shown = int(done) if count is None else count
        task = self._tasks.get(stage)
        if task is None:
            task = self._tasks[stage] = self._bars.add_task(stage, total=total, count=shown)
        self._bars.update(task, completed=done, total=total, count=shown)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bars is not None:
            self._bars.stop()


def _progress_bars(unit: str) -> rich.progress.Progress:
    # rich.progress is imported here, when a terminal wants bars, not for every command.
    from rich.progress import (
        BarColumn,
        ProgressColumn,
        Task,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.progress import Progress as Bars

    class Counted(ProgressColumn):
        """`1,234,567 rows  45,678 rows/s`: the count and its average rate since the stage began."""

        def render(self, task: Task) -> Text:
            count = int(task.fields.get("count", 0))
            rate = count / task.elapsed if task.elapsed else 0.0
            return Text(f"{count:>12,} {unit} {rate:>10,.0f} {unit}/s")

    return Bars(
        TextColumn("{task.description}", style="bold", justify="right", markup=False),
        BarColumn(),
        TaskProgressColumn(),
        Counted(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err,
    )
