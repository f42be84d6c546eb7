"""`nova legacy`: the legacy PostgreSQL warehouse the new pipeline runs beside (dual-run)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from rich.markup import escape

from cli import _common

if TYPE_CHECKING:
    from rich.table import Table

    from pipelines.dualrun.seed import SeedResult

app = typer.Typer(
    name="legacy",
    help="The legacy batch warehouse (PostgreSQL): schema, realistic seed data, the nightly ETL.",
    no_args_is_help=True,
)


def format_seed(result: SeedResult) -> Table:
    from rich.table import Table

    table = Table(title=f"seeded {escape(result.schema)}.card_txn", title_justify="left", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("rows", f"{result.rows:,}")
    table.add_row(
        "range (UTC)", f"{result.start:%Y-%m-%d} .. {result.end:%Y-%m-%d} ({result.days} day(s), exclusive end)"
    )
    table.add_row("seed", str(result.seed))
    table.add_row("load", f"{result.copy_seconds:.1f} s, {result.rows_per_s:,.0f} rows/s (COPY + index build)")
    table.add_row("nightly ETL", f"{result.summary_rows:,} daily_merchant_summary rows in {result.etl_seconds:.1f} s")
    if result.truncated:
        table.add_row("truncated", "yes: card_txn was emptied first")
    return table


@app.command("seed")
def seed_cmd(
    days: int = typer.Option(3, "--days", min=1, help="Spread the rows over this many UTC days before --until."),
    rows: int = typer.Option(100_000, "--rows", min=0, help="How many card_txn rows to load."),
    seed: int = typer.Option(
        1, "--seed", help="Random seed: the same seed, days, rows and --until give the same rows."
    ),
    truncate: bool = typer.Option(False, "--truncate", help="Empty card_txn first (deletes its rows)."),
    until: str | None = typer.Option(
        None, "--until", help="Exclusive end date (UTC, YYYY-MM-DD) of the seeded days; default today."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Create the legacy schema (idempotent), fill card_txn with realistic rows, run the nightly ETL.

    Rows come from the transaction generator (Zipf merchants, realistic amounts and channels) and are
    stored the legacy way: the merchant's wall-clock time and IANA zone, amounts in major units
    (whole yen for JPY), one-letter channel codes. Loaded with COPY in one transaction, then
    daily_merchant_summary is rebuilt for the seeded dates. The schema is legacy.schema of the config.

    Example: nova legacy seed --days 7 --rows 1000000 --seed 42 --truncate
    """
    from pipelines.dualrun.seed import seed_legacy
    from pipelines.instants import parse_day

    end = None if until is None else parse_day(until, option="--until")
    settings = _common.settings()
    with _common.Progress("rows") as bars:
        result = seed_legacy(
            settings=settings, days=days, rows=rows, seed=seed, truncate=truncate, end=end,
            on_progress=lambda done, total: bars.update("seed", done, total),
        )  # fmt: skip
    if json_out:
        _common.print_json(result.as_dict())
    else:
        _common.out.print(format_seed(result))
