"""`nova parity-check`: does ClickHouse hold what the legacy warehouse holds?"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from cli import _common

app = typer.Typer()


@app.command("parity-check")
def parity_check_cmd(
    since: str = typer.Option(..., "--since", help="Start of the range, inclusive: YYYY-MM-DD (UTC) or ISO date-time."),
    until: str = typer.Option(..., "--until", help="End of the range, exclusive: YYYY-MM-DD (UTC) or ISO date-time."),
    by: str = typer.Option(
        "day,merchant,currency",
        "--by",
        help="Segment dimensions, comma-separated: day, merchant, currency, country, channel, status.",
    ),
    tolerance_abs: int = typer.Option(
        0, "--tolerance-abs", min=0, help="Amount-sum difference per segment tolerated, in minor units."
    ),
    tolerance_rel: float = typer.Option(
        0.0,
        "--tolerance-rel",
        min=0.0,
        help="Amount-sum difference tolerated relative to the larger sum (0.001 = 0.1%).",
    ),
    max_rows: int = typer.Option(1000, "--max-rows", min=1, help="Stop the row-level search after this many rows."),
    as_json: bool = typer.Option(False, "--json", help="Print the full result as JSON instead of tables."),
    report: Path | None = typer.Option(
        None,
        "--report",
        help="Also write a self-contained HTML report (summary, mismatches, daily chart).",
        dir_okay=False,
        writable=True,
    ),
) -> None:
    """Compare the legacy warehouse with ClickHouse over [since, until) UTC: per day and dimension counts,
    amount sums and distinct ids, then checksum bisection down to the rows that differ (missing on either
    side, duplicated, or a changed value). Exit 0 in parity, 1 on any difference, 2 on bad arguments.

    Example: nova parity-check --since 2024-03-01 --until 2024-03-04 --by day,merchant --report parity.html
    """
    from pipelines.dualrun.parity import (
        format_json,
        format_rows,
        format_summary,
        format_timings,
        parse_by,
        raise_if_mismatch,
        run_parity_check,
    )
    from pipelines.instants import parse_instant

    start = parse_instant(since, option="--since", whole_seconds=True)
    end = parse_instant(until, option="--until", whole_seconds=True)
    dims = parse_by(by)
    settings = _common.settings()
    result = run_parity_check(
        settings=settings,
        since=start,
        until=end,
        by=dims,
        tolerance_abs=tolerance_abs,
        tolerance_rel=tolerance_rel,
        max_rows=max_rows,
    )
    if report is not None:
        from pipelines.dualrun.report import render_report

        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(render_report(result), encoding="utf-8")
        _common.err.print(f"[dim]report written to {escape(str(report))}[/]")
    if as_json:
        _common.print_json(format_json(result))
    else:
        # The cells hold warehouse data (merchant ids, values): markup=False shows them as they are
        # (the tables' titles keep their styles).
        _common.out.print(format_summary(result), markup=False)
        if result.rows or result.rows_truncated:
            _common.out.print(format_rows(result), markup=False)
    _common.err.print(f"[dim]{escape(format_timings(result))}[/]")
    raise_if_mismatch(result)
