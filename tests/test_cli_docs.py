"""Every command has help text and an example; `nova --help` starts fast (heavy imports are lazy)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import typer.main

from cli.main import app
from tests.conftest import run_nova


def _commands() -> list[tuple[str, Any]]:
    # typer vendors its own click: recognise groups by their `commands`, not by class.
    root = typer.main.get_command(app)
    found: list[tuple[str, Any]] = []

    def walk(prefix: str, group: Any) -> None:
        for name, cmd in group.commands.items():
            path = f"{prefix} {name}".strip()
            if getattr(cmd, "commands", None):
                walk(path, cmd)
            else:
                found.append((path, cmd))

    walk("", root)
    return found


@pytest.mark.parametrize(("path", "command"), _commands(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_command_has_help_and_an_example(path: str, command: Any) -> None:
    assert command.help and len(command.help.strip()) > 20, f"`nova {path}` has no help text"
    assert "Example:" in command.help, f"`nova {path}` help has no 'Example:' line"
    for param in command.params:
        if param.param_type_name == "option":
            assert param.help, f"`nova {path}` option {param.opts} has no help"


def test_help_lists_commands() -> None:
    result = run_nova("--help")
    for name in ("stack", "provision", "query"):
        assert name in result.stdout


def test_help_imports_no_heavy_modules() -> None:
    code = (
        "import sys; from cli.main import app\n"
        "heavy = [m for m in ('chdb', 'pyarrow', 'confluent_kafka', 'clickhouse_driver', 'fastavro', 'psycopg',"
        " 'locust', 'pydantic', 'avro') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"importing the CLI pulls in heavy modules: {out}"


def test_unknown_command_is_a_usage_error() -> None:
    result = run_nova("no-such-command", expect=2)
    assert "No such command" in result.stderr
