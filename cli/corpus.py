"""`nova corpus`: labelled corpora from other simulators, converted to our contract (for `nova fraud evaluate`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape

from cli import _common

if TYPE_CHECKING:
    from rich.table import Table

    from pipelines.synth.synccfd import CorpusReport

app = typer.Typer(help="Labelled corpora from other simulators, in our contract: transactions, labels, merchants.")


def format_report(report: CorpusReport) -> Table:
    from rich.table import Table

    from cli.generate import _iso

    table = Table(title=f"corpus in {escape(report.directory)}", title_justify="left", show_header=False)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("transactions", f"{report.transactions:,}")
    table.add_row("fraudulent", f"{report.fraud:,} ({report.fraud / max(report.transactions, 1):.2%})")
    for name, n in sorted(report.per_scenario.items()):
        table.add_row(f"  {escape(name)}", f"{n:,}")
    table.add_row("merchants (terminals)", f"{report.merchants:,}")
    table.add_row("first event time", _iso(report.first_event_ms))
    table.add_row("last event time", _iso(report.last_event_ms))
    return table


@app.command("synccfd")
def synccfd_cmd(
    out: Path = typer.Option(..., "--out", help="Directory for transactions.parquet, labels.parquet, merchants.csv."),
    customers: int = typer.Option(1000, "--customers", help="Customers (cards) to simulate."),
    terminals: int = typer.Option(2000, "--terminals", help="Terminals (our merchants) to simulate."),
    days: int = typer.Option(30, "--days", help="Days of transactions."),
    seed: int = typer.Option(0, "--seed", help="synccfd's random_state: the same seed gives the same corpus."),
    start: str | None = typer.Option(
        None, "--start", metavar="YYYY-MM-DD", help="First day (default: DAYS + 1 days ago).", show_default=False
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Generate a labelled corpus with synccfd (PyPI, MIT) and convert it to our contract.

    Writes DIR/transactions.parquet (the contract's columns; terminals as merchants, no devices or
    IPs), DIR/labels.parquet (every transaction; label_time = event time + 7 days) and
    DIR/merchants.csv (the terminals, for pipeline.merchants or `nova fraud evaluate --merchants`).
    synccfd is slow (pure Python, ~3k transactions/s): 1,000 customers over 30 days take ~1 minute.

    Example: nova corpus synccfd --out corpora/synccfd --customers 2000 --terminals 4000 --days 30 --seed 1
    """
    from pipelines.instants import parse_day
    from pipelines.synth.synccfd import write_synccfd_corpus

    first = None
    if start is not None:
        from datetime import UTC, datetime

        day = parse_day(start, option="--start")
        first = datetime(day.year, day.month, day.day, tzinfo=UTC)
    report = write_synccfd_corpus(out=out, customers=customers, terminals=terminals, days=days, seed=seed, start=first)
    if json_out:
        _common.print_json(report.to_dict())
    else:
        _common.out.print(format_report(report))
