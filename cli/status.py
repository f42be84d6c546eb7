"""`nova status`: consumer lag and the newest ingested event per table."""

from __future__ import annotations

import typer

from cli import _common

app = typer.Typer()


@app.command("status")
def status_cmd(json_out: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """Show the ingest consumer group's lag per partition and the newest event in each table.

    Example: nova status
    """
    from rich.table import Table

    from pipelines.ops.status import pipeline_status

    st = pipeline_status(settings=_common.settings())
    if json_out:
        _common.print_json(st)
        return
    lag = Table(title=f"consumer group {st['group']} on {st['topic']}", title_justify="left")
    for col in ("partition", "committed", "end", "lag"):
        lag.add_column(col, justify="right")
    for row in st["partitions"]:
        lag.add_row(str(row["partition"]), str(row["committed"]), str(row["end"]), f"{row['lag']:,}")
    lag.caption = f"total lag {st['total_lag']:,}"
    _common.out.print(lag)
    tables = Table(title="ClickHouse", title_justify="left")
    for col in ("table", "rows", "newest event", "newest insert", "freshness"):
        tables.add_column(col)
    for t in st["tables"]:
        tables.add_row(
            t["table"],
            f"{t['rows']:,}",
            str(t["newest_event"]),
            str(t["newest_insert"] or "-"),
            f"{t['freshness_s']:.1f} s" if t["freshness_s"] is not None else "-",
        )
    _common.out.print(tables)
