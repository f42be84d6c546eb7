"""What every command module shares: the consoles, the settings of this invocation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

if TYPE_CHECKING:
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
