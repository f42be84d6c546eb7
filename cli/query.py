"""`nova query`: SQL on the configured ClickHouse, either backend."""

from __future__ import annotations

from enum import StrEnum

import typer

from cli import _common

app = typer.Typer()


class Format(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


def format_table(result):  # type: ignore[no-untyped-def]
    from rich.table import Table

    table = Table(show_lines=False)
    for col in result.columns:
        table.add_column(col, overflow="fold")
    for row in result.rows:
        table.add_row(*("NULL" if v is None else str(v) for v in row))
    return table


@app.command("query")
def query_cmd(
    sql: str = typer.Argument(..., help="The SQL to run; unqualified tables resolve in clickhouse.database."),
    fmt: Format = typer.Option(Format.table, "--format", "-f", help="table, csv or json."),
) -> None:
    """Run SQL on the configured ClickHouse (embedded chdb or a server) and print the result.

    Example: nova query "SELECT merchant_id, count() FROM transactions GROUP BY 1 ORDER BY 2 DESC LIMIT 5"
    """
    from pipelines.clickhouse import open_store
    from pipelines.ops.query import format_csv, format_json, run_query

    settings = _common.settings()
    with open_store(settings) as store:
        result = run_query(store=store, sql=sql)
    if fmt is Format.csv:
        _common.out.file.write(format_csv(result))
    elif fmt is Format.json:
        _common.out.file.write(format_json(result) + "\n")
    else:
        _common.out.print(format_table(result))
        _common.err.print(f"[dim]{len(result.rows)} row(s) in {result.elapsed_s * 1000:.0f} ms[/]")
