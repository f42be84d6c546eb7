"""`nova parity-check --report FILE.html`: one self-contained page (inline CSS and SVG, no scripts,
no external references) with the summary, the differing segments, the row-level differences and a
bar chart of the daily deltas. Pure: returns the HTML text; the CLI writes it.
"""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipelines.dualrun.parity import DailyDelta, ParityResult

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:1200px;
 color:#1d2430;padding:0 1rem}
h1{font-size:1.5rem;margin:0 0 .25rem}h2{font-size:1.1rem;margin:2rem 0 .5rem}
.meta{color:#5b6576;margin:0 0 1rem}
.badge{display:inline-block;padding:.2rem .6rem;border-radius:1rem;font-weight:600;color:#fff}
.ok{background:#1f8a4c}.bad{background:#c0392b}
.cards{display:flex;gap:1rem;flex-wrap:wrap;margin:1rem 0}
.card{border:1px solid #d9dee7;border-radius:.5rem;padding:.6rem 1rem;min-width:10rem}
.card b{display:block;font-size:1.25rem}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{border-bottom:1px solid #e4e8ef;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#f4f6fa;font-weight:600}td.n,th.n{text-align:right;white-space:nowrap}td.k{white-space:nowrap}
tr.total td{font-weight:600;border-top:2px solid #9aa4b5}
.pos{color:#1f6fb2}.neg{color:#c0392b}.muted{color:#7a8496}
.charts{display:flex;gap:1.5rem;flex-wrap:wrap}
svg{background:#fbfcfe;border:1px solid #e4e8ef;border-radius:.5rem}
code{font-size:.92em}
"""

_KIND_LABEL = {
    "missing_in_clickhouse": "missing in ClickHouse",
    "missing_in_legacy": "missing in legacy",
    "duplicated": "duplicated",
    "value_mismatch": "value mismatch",
}


def _num(v: int) -> str:
    return f"{v:,}"


def _delta(v: int) -> str:
    if not v:
        return '<span class="muted">0</span>'
    return f'<span class="{"pos" if v > 0 else "neg"}">{v:+,}</span>'


def _short(v: float) -> str:
    a = abs(v)
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if a >= div:
            return f"{v / div:.3g}{suffix}"
    return f"{v:.0f}" if v == int(v) else f"{v:.3g}"


def bar_chart_svg(days: list[DailyDelta], *, attr: str, title: str, width: int = 560, height: int = 260) -> str:
    """Bars per day around a zero line: up = ClickHouse has more, down = legacy has more."""
    values = [int(getattr(d, attr)) for d in days]
    left, right, top, bottom = 64, 12, 34, 46
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max((abs(v) for v in values), default=0) or 1
    lo = min(0, min(values, default=0))
    hi = max(0, max(values, default=0))
    if lo == hi == 0:
        lo, hi = -1, 1
    span = hi - lo

    def y(v: float) -> float:
        return top + (hi - v) / span * plot_h

    parts = [
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{escape(title)}">',
        f'<text x="{left}" y="20" font-size="13" font-weight="600" fill="#1d2430">{escape(title)}</text>',
    ]
    for tick in (lo, (lo + hi) / 2, hi):
        ty = y(tick)
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{ty:.1f}" y2="{ty:.1f}" stroke="#e4e8ef"/>')
        parts.append(
            f'<text x="{left - 6}" y="{ty + 4:.1f}" font-size="11" text-anchor="end" fill="#5b6576">'
            f"{escape(_short(tick))}</text>"
        )
    zero = y(0)
    parts.append(f'<line x1="{left}" x2="{width - right}" y1="{zero:.1f}" y2="{zero:.1f}" stroke="#5b6576"/>')
    n = max(len(days), 1)
    slot = plot_w / n
    bar_w = max(min(slot * 0.6, 48), 2)
    label_every = max(1, round(n / 12))
    for i, (d, v) in enumerate(zip(days, values, strict=True)):
        x = left + i * slot + (slot - bar_w) / 2
        y0, y1 = sorted((zero, y(v)))
        colour = "#1f6fb2" if v > 0 else "#c0392b"
        if v:
            parts.append(
                f'<rect class="bar" x="{x:.1f}" y="{y0:.1f}" width="{bar_w:.1f}" '
                f'height="{max(y1 - y0, 1):.1f}" fill="{colour}"><title>{escape(d.day)}: {v:+,}</title></rect>'
            )
        else:
            parts.append(
                f'<rect class="bar" x="{x:.1f}" y="{zero - 0.5:.1f}" width="{bar_w:.1f}" height="1" '
                f'fill="#9aa4b5"><title>{escape(d.day)}: 0</title></rect>'
            )
        if i % label_every == 0:
            parts.append(
                f'<text x="{x + bar_w / 2:.1f}" y="{height - bottom + 16}" font-size="11" '
                f'text-anchor="middle" fill="#5b6576">{escape(d.day[5:])}</text>'
            )
    if not days:
        parts.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" fill="#7a8496">no data</text>')
    parts.append(
        f'<text x="{left}" y="{height - 8}" font-size="11" fill="#7a8496">ClickHouse − legacy; '
        f"largest |Δ| {escape(_short(peak))}</text>"
    )
    parts.append("</svg>")
    return "".join(parts)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict):
        return "<br>".join(
            f"<code>{escape(str(k))}</code>={escape(str(v))}" for k, v in value.items() if k != "transaction_id"
        )
    return escape(str(value))


def render_report(result: ParityResult, *, row_limit: int = 5000) -> str:
    """The whole page as text."""
    from pipelines.dualrun.parity import format_json

    data = format_json(result)
    lt, ct = result.legacy_total, result.clickhouse_total
    status = (
        '<span class="badge ok">in parity</span>'
        if result.ok
        else f'<span class="badge bad">{len(result.segments)} segment(s) differ</span>'
    )
    kinds = result.counts_by_kind()
    cards = [
        ("legacy rows", _num(lt.count)),
        ("ClickHouse rows", _num(ct.count)),
        ("Δ rows", f"{ct.count - lt.count:+,}"),
        ("Δ amount (minor units)", f"{ct.amount_minor - lt.amount_minor:+,}"),
        ("segments compared", _num(result.segments_compared)),
        ("segments differing", _num(len(result.segments))),
        ("row-level differences", _num(len(result.rows))),
    ]
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>nova parity {escape(data['since'])} → {escape(data['until'])}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Legacy ↔ ClickHouse parity {status}</h1>",
        f'<p class="meta">[{escape(data["since"])}, {escape(data["until"])}) UTC · by {escape(", ".join(result.by))}'
        f" · legacy <code>{escape(result.legacy_source)}</code>"
        f" · ClickHouse <code>{escape(result.clickhouse_source)}</code>"
        f" · tolerance abs {result.tolerance_abs:,} / rel {result.tolerance_rel:g}"
        f" · {result.timings.get('total_s', 0):.2f} s</p>",
        '<section id="summary"><h2>Summary</h2><div class="cards">',
        *(f'<div class="card"><span class="muted">{escape(k)}</span><b>{escape(v)}</b></div>' for k, v in cards),
        "</div>",
    ]
    if kinds:
        out.append(
            "<p>"
            + " · ".join(f"{escape(_KIND_LABEL.get(k, k))}: <b>{v:,}</b>" for k, v in sorted(kinds.items()))
            + "</p>"
        )
    if result.tolerated_segments:
        out.append(f'<p class="muted">{result.tolerated_segments} segment(s) differ in amount within tolerance.</p>')
    out.append("</section>")

    out.append('<section id="chart"><h2>Daily deltas</h2><div class="charts">')
    out.append(bar_chart_svg(result.daily, attr="count_delta", title="Δ rows per day"))
    out.append(bar_chart_svg(result.daily, attr="amount_delta", title="Δ amount per day (minor units)"))
    out.append("</div></section>")

    out.append('<section id="segments"><h2>Differing segments</h2>')
    if result.segments:
        head = "".join(f"<th>{escape(d)}</th>" for d in result.by)
        num_heads = (
            "legacy rows",
            "ClickHouse rows",
            "Δ rows",
            "legacy amount",
            "ClickHouse amount",
            "Δ amount",
            "legacy ids",
            "ClickHouse ids",
            "Δ ids",
        )
        head += "".join(f'<th class="n">{escape(h)}</th>' for h in num_heads) + "<th>why</th>"
        out.append(f"<table><thead><tr>{head}</tr></thead><tbody>")
        for s in result.segments:
            cells = "".join(f'<td class="k">{escape(v)}</td>' for v in s.key.values())
            cells += "".join(
                f'<td class="n">{c}</td>'
                for c in (
                    _num(s.legacy.count),
                    _num(s.clickhouse.count),
                    _delta(s.count_delta),
                    _num(s.legacy.amount_minor),
                    _num(s.clickhouse.amount_minor),
                    _delta(s.amount_delta),
                    _num(s.legacy.distinct),
                    _num(s.clickhouse.distinct),
                    _delta(s.distinct_delta),
                )
            )
            out.append(f"<tr>{cells}<td>{escape(', '.join(s.reasons))}</td></tr>")
        total = (
            f'<td colspan="{len(result.by)}">total (all segments)</td>'
            + "".join(
                f'<td class="n">{c}</td>'
                for c in (
                    _num(lt.count),
                    _num(ct.count),
                    _delta(ct.count - lt.count),
                    _num(lt.amount_minor),
                    _num(ct.amount_minor),
                    _delta(ct.amount_minor - lt.amount_minor),
                    _num(lt.distinct),
                    _num(ct.distinct),
                    _delta(ct.distinct - lt.distinct),
                )
            )
            + "<td></td>"
        )
        out.append(f'<tr class="total">{total}</tr></tbody></table>')
    else:
        out.append('<p class="muted">None: every segment agrees.</p>')
    out.append("</section>")

    out.append('<section id="rows"><h2>Row-level differences</h2>')
    if result.rows:
        out.append(
            "<table><thead><tr><th>kind</th><th>transaction_id</th><th>column</th><th>legacy</th>"
            "<th>ClickHouse</th></tr></thead><tbody>"
        )
        for r in result.rows[:row_limit]:
            column = r.column or (f"{r.side} ×{r.copies}" if r.kind == "duplicated" else "")
            out.append(
                f'<tr class="{escape(r.kind)}"><td>{escape(_KIND_LABEL.get(r.kind, r.kind))}</td>'
                f"<td><code>{escape(r.transaction_id)}</code></td><td>{escape(column)}</td>"
                f"<td>{_cell(r.legacy)}</td><td>{_cell(r.clickhouse)}</td></tr>"
            )
        out.append("</tbody></table>")
        if len(result.rows) > row_limit:
            out.append(f'<p class="muted">… and {len(result.rows) - row_limit:,} more (see --json).</p>')
    else:
        out.append('<p class="muted">None.</p>')
    if result.rows_truncated:
        out.append('<p class="neg">The row-level search stopped at --max-rows; raise it to list every row.</p>')
    out.append("</section>")
    out.append('<p class="muted">Generated by <code>nova parity-check</code>.</p></body></html>')
    return "\n".join(out)
