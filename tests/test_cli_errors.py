"""What the CLI prints around user text: errors and data shown as typed (never as rich markup), exit codes, progress.

`[/x]` reaching rich markup raises MarkupError (a traceback, exit 1); `[red]` vanishes into a style.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from cli import _common
from tests.conftest import run_nova

_RANGE = ("--since", "2024-03-01", "--until", "2024-03-02")


@pytest.mark.parametrize("by", ["day,[/x]", "day,[red]x"])
def test_markup_in_an_option_is_printed_as_typed_and_exits_2(by: str) -> None:
    result = run_nova("parity-check", *_RANGE, "--by", by, expect=2)
    dimension = by.split(",")[1]
    assert f"unknown --by dimension {dimension!r}" in result.stderr
    assert "Traceback" not in result.output and "MarkupError" not in result.output


def test_a_hint_is_escaped_too() -> None:
    result = run_nova("stack", "up", "--with", "[bold]x", expect=2)
    assert "--with '[bold]x': not an optional service" in result.stderr
    assert "hint: choose clickhouse-server" in result.stderr


def test_a_config_rule_with_brackets_is_printed_whole(tmp_path: Path) -> None:
    # the rule ^[a-zA-Z0-9._-]+$ looks like a markup tag to rich
    result = run_nova("query", "SELECT 1", env={"NOVA_PIPELINE__TOPIC": "[/x] y"}, expect=2)
    assert "environment NOVA_PIPELINE__TOPIC: key 'pipeline.topic': '[/x] y'" in result.stderr
    assert "^[a-zA-Z0-9._-]+$" in result.stderr


def test_a_topic_option_is_checked_before_kafka_is_touched() -> None:
    result = run_nova("generate", "--count", "1", "--topic", "no spaces", expect=2)
    assert "--topic: 'no spaces' is not a valid Kafka name" in result.stderr


def test_query_results_and_column_names_are_data(tmp_path: Path) -> None:
    env = {"NOVA_CLICKHOUSE__URL": f"chdb://{tmp_path / 'chdb'}"}
    sql = "SELECT '[/x]' AS `[red]name`, '[bold]b\\\\' AS plain"
    table = run_nova("query", sql, env=env)
    assert "[/x]" in table.stdout and "[red]name" in table.stdout and "[bold]b\\" in table.stdout
    as_json = run_nova("query", "--format", "json", sql, env=env)
    assert json.loads(as_json.stdout) == [{"[red]name": "[/x]", "plain": "[bold]b\\"}]


def _terminal(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    screen = io.StringIO()
    monkeypatch.setattr(_common, "err", Console(file=screen, force_terminal=True, width=120, color_system=None))
    return screen


def test_progress_draws_a_bar_per_stage_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    screen = _terminal(monkeypatch)
    with _common.Progress("rows") as bars:
        bars.update("sort", 5, 10)
        bars.update("replay", 40, 100)
        bars.update("replay", 100, 100)
    drawn = screen.getvalue()
    assert "sort" in drawn and "replay" in drawn
    assert "100 rows" in drawn and "100%" in drawn


def test_progress_can_count_other_than_it_measures(monkeypatch: pytest.MonkeyPatch) -> None:
    screen = _terminal(monkeypatch)
    with _common.Progress("msgs") as bars:
        bars.update("generate", 2.0, 4.0, count=12_345)  # a timed run: the bar is seconds
    assert "12,345 msgs" in screen.getvalue() and "50%" in screen.getvalue()


def test_progress_is_silent_without_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    screen = io.StringIO()
    monkeypatch.setattr(_common, "err", Console(file=screen, force_terminal=False))
    with _common.Progress("rows") as bars:
        bars.update("seed", 1, 2)
    assert screen.getvalue() == ""
