"""A `ParityResult` for people and programs: JSON-able data, rich tables, a timing line. Prints nothing.

Dimension values and row values come from the databases, so they are escaped before they reach
rich markup (a merchant called `[red]` stays a merchant).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from rich.markup import escape

from pipelines.dualrun.parity.results import Cell, ParityResult, SideAggregate

if TYPE_CHECKING:
    from rich.console import RenderableType


def format_json(result: ParityResult) -> dict[str, Any]:
    """The whole result as plain JSON-able data."""

    def side(a: SideAggregate) -> dict[str, int]:
        return {"count": a.count, "amount_minor": a.amount_minor, "distinct": a.distinct}

    return {
        "ok": result.ok,
        "since": result.since.isoformat(),
        "until": result.until.isoformat(),
        "by": list(result.by),
        "tolerance": {"abs": result.tolerance_abs, "rel": result.tolerance_rel},
        "legacy": result.legacy_source,
        "clickhouse": result.clickhouse_source,
        "segments_compared": result.segments_compared,
        "segments_differing": len(result.segments),
        "segments_tolerated": result.tolerated_segments,
        "totals": {
            "legacy": side(result.legacy_total),
            "clickhouse": side(result.clickhouse_total),
            "count_delta": result.clickhouse_total.count - result.legacy_total.count,
            "amount_delta": result.clickhouse_total.amount_minor - result.legacy_total.amount_minor,
        },
        "segments": [
            {
                "key": s.key,
                "reasons": s.reasons,
                "legacy": side(s.legacy),
                "clickhouse": side(s.clickhouse),
                "count_delta": s.count_delta,
                "amount_delta": s.amount_delta,
                "distinct_delta": s.distinct_delta,
            }
            for s in result.segments
        ],
        "rows": [{k: v for k, v in asdict(r).items() if v is not None} for r in result.rows],
        "rows_by_kind": result.counts_by_kind(),
        "rows_truncated": result.rows_truncated,
        "daily": [{**asdict(d), "count_delta": d.count_delta, "amount_delta": d.amount_delta} for d in result.daily],
        "timings": {k: round(v, 3) for k, v in result.timings.items()},
    }


def signed(v: int) -> str:
    """`+1,234` / `-5` / `0`: a delta with its sign, zero without one."""
    return f"{v:+,}" if v else "0"


def format_summary(result: ParityResult) -> RenderableType:
    """Per differing segment: both sides' count / sum / distinct and the deltas; a totals line."""
    from rich.table import Table

    title = f"parity {result.since:%Y-%m-%d %H:%M} → {result.until:%Y-%m-%d %H:%M} UTC by {','.join(result.by)}: " + (
        "[green]in parity[/]"
        if result.ok
        else f"[red]{len(result.segments)} of {result.segments_compared} segment(s) differ[/]"
    )
    table = Table(title=title, title_justify="left", show_footer=True)
    for i, dim in enumerate(result.by):
        table.add_column(dim, footer="total" if i == 0 else "")
    lt, ct = result.legacy_total, result.clickhouse_total
    numeric = [
        ("legacy rows", f"{lt.count:,}"),
        ("ch rows", f"{ct.count:,}"),
        ("Δ rows", signed(ct.count - lt.count)),
        ("legacy amount", f"{lt.amount_minor:,}"),
        ("ch amount", f"{ct.amount_minor:,}"),
        ("Δ amount", signed(ct.amount_minor - lt.amount_minor)),
        ("legacy ids", f"{lt.distinct:,}"),
        ("ch ids", f"{ct.distinct:,}"),
        ("Δ ids", signed(ct.distinct - lt.distinct)),
    ]
    for name, footer in numeric:
        table.add_column(name, footer=footer, justify="right")
    table.add_column("why", footer="")
    for s in result.segments:
        table.add_row(
            *(escape(v) for v in s.key.values()),
            f"{s.legacy.count:,}",
            f"{s.clickhouse.count:,}",
            signed(s.count_delta),
            f"{s.legacy.amount_minor:,}",
            f"{s.clickhouse.amount_minor:,}",
            signed(s.amount_delta),
            f"{s.legacy.distinct:,}",
            f"{s.clickhouse.distinct:,}",
            signed(s.distinct_delta),
            ",".join(s.reasons),
        )
    return table


def _cell(value: Cell) -> str:
    if isinstance(value, dict):
        return escape(" ".join(f"{k}={v}" for k, v in value.items() if k != "transaction_id"))
    return "" if value is None else escape(str(value))


def format_rows(result: ParityResult, *, limit: int = 50) -> RenderableType:
    """The row-level differences, at most `limit`, with a line counting the rest."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"row-level differences ({len(result.rows)})", title_justify="left")
    for name in ("kind", "transaction_id", "column", "legacy", "clickhouse"):
        table.add_column(name, overflow="fold")
    for r in result.rows[:limit]:
        column = r.column or (f"{r.side} ×{r.copies}" if r.kind == "duplicated" else "")
        table.add_row(r.kind, escape(r.transaction_id), column, _cell(r.legacy), _cell(r.clickhouse))
    notes = []
    if len(result.rows) > limit:
        notes.append(Text(f"… and {len(result.rows) - limit} more row-level difference(s) (see --json or --report)"))
    if result.rows_truncated:
        notes.append(Text("row-level search stopped at --max-rows; raise it to see every row", style="yellow"))
    return Group(table, *notes)


def format_timings(result: ParityResult) -> str:
    """One line for stderr: how many rows, how long each stage took."""
    t = result.timings
    return (
        f"{result.segments_compared} segment(s), {result.legacy_total.count:,} legacy / "
        f"{result.clickhouse_total.count:,} ClickHouse rows in {t.get('total_s', 0):.2f} s "
        f"(segments {t.get('segments_s', 0):.2f} s, bisection {t.get('bisect_s', 0):.2f} s, "
        f"rows {t.get('rows_s', 0):.2f} s)"
    )
