"""`nova parity-check --report FILE.html`: one self-contained page (inline CSS and SVG, no scripts,
no external references) with the summary, the differing segments, the row-level differences and a
bar chart of the daily deltas. Pure: returns the HTML text; the CLI writes it.

The page is `pipelines/reports/templates/parity.html.j2` (extending the reports' base template);
this module only prepares what it shows.
"""

from __future__ import annotations

from pipelines.dualrun.parity import ParityResult
from pipelines.reports import render

KIND_LABELS = {
    "missing_in_clickhouse": "missing in ClickHouse",
    "missing_in_legacy": "missing in legacy",
    "duplicated": "duplicated",
    "value_mismatch": "value mismatch",
}


def render_report(result: ParityResult, *, row_limit: int = 5000) -> str:
    """The whole page as text; at most `row_limit` row differences are listed."""
    lt, ct = result.legacy_total, result.clickhouse_total
    cards = [
        ("legacy rows", f"{lt.count:,}"),
        ("ClickHouse rows", f"{ct.count:,}"),
        ("Δ rows", f"{ct.count - lt.count:+,}"),
        ("Δ amount (minor units)", f"{ct.amount_minor - lt.amount_minor:+,}"),
        ("segments compared", f"{result.segments_compared:,}"),
        ("segments differing", f"{len(result.segments):,}"),
        ("row-level differences", f"{len(result.rows):,}"),
    ]
    kinds = [(KIND_LABELS.get(k, k), n) for k, n in sorted(result.counts_by_kind().items())]
    return render(
        "parity.html.j2",
        result=result,
        since=result.since.isoformat(),
        until=result.until.isoformat(),
        cards=cards,
        kinds=kinds,
        kind_labels=KIND_LABELS,
        day_labels=[d.day[5:] for d in result.daily],  # MM-DD: the year is in the page's range
        row_limit=row_limit,
    )
