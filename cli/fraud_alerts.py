"""`nova fraud alerts`: the stream detector's recent alerts, newest first."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from cli import _common

if TYPE_CHECKING:
    from rich.console import JustifyMethod
    from rich.table import Table


def format_alerts(rows: list[dict[str, Any]], *, since: str) -> Table:
    from rich.table import Table

    cell = _common.cell
    table = Table(title=f"fraud alerts in the last {since}: {len(rows):,}", title_justify="left")
    columns: list[tuple[str, JustifyMethod]] = [
        ("alerted at", "left"),
        ("event time", "left"),
        ("card", "left"),
        ("merchant", "left"),
        ("amount", "right"),
        ("score", "right"),
        ("rules", "left"),
        ("transaction", "left"),
    ]
    for name, justify in columns:
        table.add_column(name, justify=justify, overflow="fold")
    for r in rows:
        table.add_row(
            cell(_when(r["alerted_at"])),
            cell(_when(r["event_time"])),
            cell(r["card_id"]),
            cell(r["merchant_id"]),
            f"{int(r['amount_reporting_minor']) / 100:,.2f}",
            f"{float(r['score']):.3f}",
            cell(", ".join(r["rules"]) or "(score)"),
            cell(r["transaction_id"]),
        )
    return table


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if hasattr(value, "strftime") else str(value)


def alerts_cmd(
    since: str = typer.Option("1h", "--since", help="Alerts produced within this long (wall clock): 15m, 1h, 7d."),
    limit: int = typer.Option(50, "--limit", "-n", min=1, help="At most this many, newest first."),
    card: str | None = typer.Option(None, "--card", help="Only this card's alerts."),
    json_out: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """List recent fraud alerts: the rules that fired, the score, when it was produced.

    Example: nova fraud alerts --since 30m --limit 20
    """
    import time

    from pipelines.clickhouse import open_store
    from pipelines.detect.alerts import recent_alerts
    from pipelines.instants import parse_duration_ms

    window = parse_duration_ms(since, option="--since")
    settings = _common.settings()
    with open_store(settings) as store:
        rows = recent_alerts(
            store,
            database=settings.clickhouse.database,
            since_ms=int(time.time() * 1000) - window,
            limit=limit,
            card_id=card,
        )
    if json_out:
        _common.print_json(
            [{**r, **{k: _when(r[k]) for k in ("event_time", "alerted_at", "produced_at")}} for r in rows]
        )
        return
    _common.out.print(format_alerts(rows, since=since))
