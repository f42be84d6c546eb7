"""`nova provision`: create or reconcile topics, schemas and ClickHouse objects."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from rich.markup import escape

from cli import _common

if TYPE_CHECKING:
    from rich.table import Table

    from pipelines.ops.provision import Plan, PlanItem

app = typer.Typer()

_STYLE = {"create": "green", "change": "yellow", "unchanged": "dim", "refused": "bold red"}


def format_plan(plan: Plan) -> Table:
    from rich.table import Table

    table = Table(title="provision plan", title_justify="left")
    for col in ("kind", "name", "action", "detail"):
        table.add_column(col)
    for item in plan.items:
        style = _STYLE[item.action]
        table.add_row(item.kind, _common.cell(item.name), f"[{style}]{item.action}[/]", _common.cell(item.detail))
    counts = plan.counts()
    table.caption = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
    return table


def _applied(item: PlanItem) -> None:
    _common.err.print(f"[green]✓[/] {item.action} {item.kind} {escape(item.name)}")


@app.command("provision")
def provision_cmd(
    dry_run: bool = typer.Option(False, "--dry-run", help="Show the plan; change nothing."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Apply without asking (for scripts and cron)."),
    allow_data_loss: bool = typer.Option(
        False, "--allow-data-loss", help="Accept changes that delete data, e.g. lowering a topic's retention."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
) -> None:
    """Create or reconcile topics, schema subjects, the ClickHouse database, tables and views.

    Idempotent: a second run reports every object unchanged. Never deletes data or shrinks
    partitions; such changes are refused (exit 1) and nothing is changed. Everything that can be
    checked is checked before the first change: the names the specs produce (exit 2), that Kafka,
    the schema registry and ClickHouse answer, and that ClickHouse parses every statement.

    Example: nova provision --dry-run && nova provision --yes
    """
    from pipelines.clickhouse import open_store
    from pipelines.ops.provision import apply_plan, check_plan, plan_provision

    settings = _common.settings()
    with open_store(settings) as store:
        plan = plan_provision(settings=settings, store=store, allow_data_loss=allow_data_loss)
        if json_out:
            _common.print_json(
                [{"kind": i.kind, "name": i.name, "action": i.action, "detail": i.detail} for i in plan.items]
            )
        else:
            _common.out.print(format_plan(plan))
        check_plan(plan)
        if dry_run or not plan.changes:
            if not plan.changes and not json_out:
                _common.err.print("[green]everything is up to date[/]")
            return
        _common.confirm_or_abort(f"apply {len(plan.changes)} change(s)?", yes=yes)
        apply_plan(plan, on_item=_applied)
    _common.err.print(f"[green]provisioned[/] {len(plan.changes)} change(s)")
