"""`nova tier-migrate`: hot → warm → cold from cron, every drop verified first; `restore` brings a day back."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape
from rich.table import Table

from cli import _common
from pipelines.errors import UsageError

if TYPE_CHECKING:
    from pipelines.lifecycle import MigrateReport, RestoreReport

app = typer.Typer(name="tier-migrate", invoke_without_command=True)

_RESULT_STYLE = {"moved": "green", "failed": "bold red", "skipped": "yellow", "planned": "cyan", "deferred": "dim"}


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    size = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024
        if size < 1024 or unit == "GiB":
            break
    return f"{size:.1f} {unit}"


def format_report(report: MigrateReport) -> Table:
    """partition | from → to | rows | bytes | result (the plan, with what happened to each move)."""
    table = Table(show_edge=False, pad_edge=False, title_justify="left")
    for column in ("table", "partition", "move", "rows", "bytes", "result"):
        table.add_column(column, justify="right" if column in ("rows", "bytes") else "left")
    results = {(o.item.table, o.item.day, o.item.move): o for o in report.outcomes}
    for item in report.plan:
        outcome = results.get((item.table, item.day, item.move))
        if report.dry_run:
            result = "planned" + (f" (resume {item.resume})" if item.resume else "")
            style = "planned"
        elif outcome is None:
            result, style = "deferred (--max-partitions)", "deferred"
        else:
            result, style = outcome.result, outcome.result
            if outcome.detail:
                result += f": {outcome.detail}"
        src, _, dst = item.move.partition("-to-")
        table.add_row(
            _common.cell(item.table),
            item.day.strftime("%Y%m%d"),
            f"{src} → {dst}",
            f"{item.rows:,}",
            _size(item.bytes),
            f"[{_RESULT_STYLE[style]}]{escape(result)}[/]",
        )
    return table


def _summary(report: MigrateReport) -> str:
    windows = "; ".join(
        f"{escape(t)}: newest {w.newest}, hot from {w.hot_from}, warm from {w.warm_from}"
        for t, w in report.windows.items()
    )
    if report.dry_run:
        return f"[cyan]dry run[/]: {len(report.plan)} move(s) planned, nothing changed ({windows or 'no data'})"
    moved = sum(1 for o in report.outcomes if o.result == "moved")
    text = f"{moved} move(s), {report.moved_rows:,} rows in {report.elapsed_s:.1f}s ({windows or 'no data'})"
    if report.deferred:
        text += f"; {report.deferred} deferred by --max-partitions"
    if report.failed:
        return f"[bold red]{len(report.failed)} move(s) failed verification[/] (sources kept); " + text
    return "[green]tier-migrate[/]: " + text


@app.callback()
def tier_migrate(
    ctx: typer.Context,
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan (partition, from → to, rows, bytes) only."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Move without asking (needed without a terminal: cron)."),
    max_partitions: int | None = typer.Option(
        None, "--max-partitions", min=1, help="Move at most N partitions this run.", show_default=False
    ),
    only: str | None = typer.Option(
        None, "--only", metavar="hot-to-warm|warm-to-cold", help="Run one phase only.", show_default=False
    ),
    as_of: str | None = typer.Option(
        None,
        "--as-of",
        metavar="YYYY-MM-DD",
        help="Count the windows back from this day (default: the newest day the table holds).",
        show_default=False,
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the plan and outcomes as JSON."),
) -> None:
    """Move ageing days down the tiers per configs/lifecycle.yaml: hot → warm → cold (Parquet on S3).

    Each partition goes through a journal (planned → copied → verified → source dropped): the copy
    must have the same row count, amount sum and checksum of every column as its source (a cold copy
    is read back from the object store) before the source is dropped. A mismatch keeps the source
    and exits 1. Safe to kill at any point; the next run finishes the move. One run at a time.
    Exit codes: 0 done, 1 a move failed verification (or another run holds the lock), 2 usage/config.

    Example: nova tier-migrate --dry-run   (cron: nova tier-migrate --yes --json >> tier-migrate.log)
    """
    if ctx.invoked_subcommand is not None:
        return
    from pipelines.instants import parse_day
    from pipelines.lifecycle import PHASES, open_lifecycle, run_tier_migrate

    if only is not None and only not in PHASES:
        raise UsageError(f"--only {only!r}: not a phase", hint=f"choose {' or '.join(PHASES)}")
    day = parse_day(as_of, option="--as-of") if as_of is not None else None
    phase: Any = only
    with open_lifecycle(settings=_common.settings()) as life:
        plan = run_tier_migrate(life=life, dry_run=True, only=phase, as_of=day)
        if dry_run or not plan.plan:
            _print(plan, json_out)
            return
        if not yes:
            _common.out.print(format_report(plan))
            _common.confirm_or_abort(f"move {len(plan.plan)} partition(s)?", yes=False)
        with _common.Progress("partitions") as bars:

            def on_progress(done: int, total: int, label: str) -> None:
                bars.update("tier-migrate", done, total)

            report = run_tier_migrate(
                life=life, max_partitions=max_partitions, only=phase, as_of=day, on_progress=on_progress
            )
    _print(report, json_out)
    if report.failed:
        raise typer.Exit(1)


def _print(report: MigrateReport, json_out: bool) -> None:
    if json_out:
        _common.print_json(report.to_dict())
        return
    if report.plan:
        _common.out.print(format_report(report))
    _common.err.print(_summary(report))


@app.command("restore")
def restore(
    day: str = typer.Option(..., "--day", metavar="YYYY-MM-DD", help="The day to bring back to hot."),
    table: str | None = typer.Option(
        None, "--table", help="Table (default: the first in configs/lifecycle.yaml).", show_default=False
    ),
    yes: bool = typer.Option(False, "--yes", "-y", help="Delete the cold/warm copy after verifying, without asking."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Bring a cold or warm day back to hot, verified the same way (rows, amount sum, checksum).

    The cold (or warm) copy is removed only after the hot copy matches it. The policy still applies:
    the next tier-migrate moves the day down again unless the windows now keep it hot.

    Example: nova tier-migrate restore --day 2024-05-03 --yes
    """
    from pipelines.instants import parse_day
    from pipelines.lifecycle import open_lifecycle, restore_day

    wanted = parse_day(day, option="--day")
    _common.confirm_or_abort(f"restore {wanted} to hot (removing its cold/warm copy once verified)?", yes=yes)
    with open_lifecycle(settings=_common.settings()) as life:
        result = restore_day(life=life, day=wanted, table=table)
    if json_out:
        _common.print_json(result.to_dict())
    else:
        _common.err.print(_restored(result))


def _restored(result: RestoreReport) -> str:
    moves = ", ".join(result.moves)
    return (
        f"[green]restored[/] {escape(result.table)} {result.day}: {result.rows:,} rows ({moves}); "
        f"hot now holds {result.hot.rows:,} rows of the day, verified"
    )
