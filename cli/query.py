"""`nova query`: SQL on the configured ClickHouse, either backend."""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

import typer

from cli import _common

if TYPE_CHECKING:
    from rich.table import Table

    from pipelines.ops.query import QueryResult

app = typer.Typer()


class Format(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


def format_table(result: QueryResult) -> Table:
    """Column names and values as they are: a `[red]` in the data is data, not a style."""
    from rich.table import Table

    table = Table(show_lines=False)
    for col in result.columns:
        table.add_column(_common.cell(col), overflow="fold")
    for row in result.rows:
        table.add_row(*(_common.cell("NULL" if v is None else v) for v in row))
    return table


@app.command("query")
def query_cmd(
    sql: str = typer.Argument(..., help="The SQL to run; unqualified tables resolve in clickhouse.database."),
    fmt: Format = typer.Option(Format.table, "--format", "-f", help="table, csv or json."),
    all_tiers: bool = typer.Option(
        False, "--all-tiers", help="Read tiered tables across hot, warm and cold (configs/lifecycle.yaml)."
    ),
) -> None:
    """Run SQL on the configured ClickHouse (embedded chdb or a server) and print the result.

    With --all-tiers, each table of configs/lifecycle.yaml reads as one table over hot, warm and
    the cold Parquet days; conditions on its time column limit the cold days read.

    Example: nova query "SELECT merchant_id, count() FROM transactions GROUP BY 1 ORDER BY 2 DESC LIMIT 5"
    """
    from pipelines.clickhouse import open_store
    from pipelines.ops.query import format_csv, format_json, run_query

    settings = _common.settings()
    if all_tiers:
        from pipelines.lifecycle import all_tiers_query

        with all_tiers_query(settings=settings, sql=sql) as (engine, tiered):
            result = run_query(store=engine, sql=tiered.sql)
        _common.err.print(f"[dim]all tiers: {tiered.cold_days_read} of {tiered.cold_days_total} cold day(s) read[/]")
    else:
        with open_store(settings) as store:
            result = run_query(store=store, sql=sql)
    if fmt is Format.csv:
        _common.out.file.write(format_csv(result))
    elif fmt is Format.json:
        _common.out.file.write(format_json(result) + "\n")
    else:
        _common.out.print(format_table(result))
        _common.err.print(f"[dim]{len(result.rows)} row(s) in {result.elapsed_s * 1000:.0f} ms[/]")
