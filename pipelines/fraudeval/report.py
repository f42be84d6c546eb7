"""`nova fraud evaluate --report FILE.html`: the run's figures as one self-contained page.

`templates/fraudeval.html.j2` extends the reports' base template and draws with its SVG chart
macros (the one Jinja2 environment of `pipelines.reports`, this package's templates in front):
the judged figures as cards, every split side by side, the per-scenario table with recall and
precision bars, and the distribution of the delay to each fraud episode's first alert.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache

import numpy as np
from jinja2 import ChoiceLoader, Environment, PackageLoader

from pipelines.fraudeval.metrics import Figures
from pipelines.fraudeval.run import EvaluationResult, PartResult
from pipelines.reports import environment

# Upper bounds (ms) and labels of the first-alert delay histogram's buckets.
DELAY_BUCKETS = (
    (1_000.0, "≤ 1 s"),
    (10_000.0, "≤ 10 s"),
    (60_000.0, "≤ 1 min"),
    (600_000.0, "≤ 10 min"),
    (3_600_000.0, "≤ 1 h"),
    (86_400_000.0, "≤ 1 d"),
    (float("inf"), "> 1 d"),
)


@cache
def _environment() -> Environment:
    base = environment()
    assert base.loader is not None
    return base.overlay(loader=ChoiceLoader([PackageLoader("pipelines.fraudeval", "templates"), base.loader]))


def pct(v: float | None) -> str:
    return "—" if v is None else f"{v * 100:.1f}%"


def dec(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f}"


def duration(ms: float | None) -> str:
    if ms is None:
        return "—"
    if ms < 10_000:
        return f"{ms:,.0f} ms"
    if ms < 3_600_000:
        return f"{ms / 1000:,.1f} s"
    if ms < 172_800_000:
        return f"{ms / 3_600_000:,.1f} h"
    return f"{ms / 86_400_000:,.1f} d"


def figure_rows(figures: list[Figures]) -> list[tuple[str, list[str]]]:
    """(figure, value per split) rows of the splits table."""

    def row(name: str, values: list[str]) -> tuple[str, list[str]]:
        return name, values

    return [
        row("transactions", [f"{f.transactions:,}" for f in figures]),
        row("frauds", [f"{f.frauds:,}" for f in figures]),
        row("alerts", [f"{f.alerts:,}" for f in figures]),
        row("recall", [pct(f.recall) for f in figures]),
        row("precision", [pct(f.precision) for f in figures]),
        row("recall within 10 s of produce", [pct(f.recall_within_10s) for f in figures]),
        row("average precision of the score", [dec(f.average_precision) for f in figures]),
        row("ROC AUC of the score", [dec(f.roc_auc) for f in figures]),
        row("card precision@100 per day", [f"{dec(f.card_precision_at_100)} ({f.days} d)" for f in figures]),
        row("alert latency p50 (produce → alert)", [duration(f.alert_latency_ms.p50) for f in figures]),
        row("alert latency p99", [duration(f.alert_latency_ms.p99) for f in figures]),
        row("fraud episodes detected", [f"{f.episodes_detected:,} of {f.episodes:,}" for f in figures]),
        row("delay to first alert p50", [duration(f.first_alert_delay_ms.p50) for f in figures]),
        row("delay to first alert p99", [duration(f.first_alert_delay_ms.p99) for f in figures]),
        row("not scored (dead-lettered)", [f"{f.not_scored:,}" for f in figures]),
    ]


def delay_histogram(delays_ms: list[float]) -> tuple[list[str], list[float]]:
    """Episodes per delay bucket (categories, counts)."""
    values = np.asarray(delays_ms, dtype=np.float64)
    counts, lower = [], -np.inf
    for upper, _ in DELAY_BUCKETS:
        counts.append(float(((values > lower) & (values <= upper)).sum()))
        lower = upper
    return [label for _, label in DELAY_BUCKETS], counts


def render_report(result: EvaluationResult) -> str:
    """The whole page as text."""
    assert result.figures is not None
    f = result.figures
    cards = [
        ("recall", pct(f.recall)),
        ("precision", pct(f.precision)),
        ("recall ≤ 10 s", pct(f.recall_within_10s)),
        ("average precision", dec(f.average_precision)),
        ("ROC AUC", dec(f.roc_auc)),
        ("card precision@100", dec(f.card_precision_at_100)),
        ("alert latency p50 / p99", f"{duration(f.alert_latency_ms.p50)} / {duration(f.alert_latency_ms.p99)}"),
    ]
    parts = [p for p in result.parts if p.figures is not None]
    scenarios = list(f.per_scenario.items())
    names = [name for name, _ in scenarios]
    delay_labels, delay_counts = delay_histogram(f.first_alert_delays_ms)
    return (
        _environment()
        .get_template("fraudeval.html.j2")
        .render(
            result=result,
            figures=f,
            cards=cards,
            parts=parts,
            part_labels=[_part_label(p, result) for p in parts],
            retrain_every=duration(result.retrain_every_ms) if result.retrain_every_ms else "",
            rows=figure_rows([p.figures for p in parts if p.figures is not None]),
            scenarios=[
                (
                    name,
                    s,
                    pct(s.recall),
                    pct(s.recall_within_10s),
                    pct(s.precision),
                    pct(s.rule_named),
                    duration(s.first_alert_delay_ms.p50),
                )
                for name, s in scenarios
            ],
            scenario_names=names,
            recall_values=[100 * (s.recall or 0.0) for _, s in scenarios],
            within_values=[100 * (s.recall_within_10s or 0.0) for _, s in scenarios],
            precision_values=[100 * (s.precision or 0.0) for _, s in scenarios],
            delay_labels=delay_labels,
            delay_counts=delay_counts,
            label_delay=duration(result.label_delay_ms) if result.label_delay_ms is not None else "label_time",
            generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        )
    )


def _part_label(part: PartResult, result: EvaluationResult) -> str:
    if part.name == "all" and result.models:
        return "all (retrained)"
    if part.from_ms is not None:
        since = datetime.fromtimestamp(part.from_ms / 1000, UTC).strftime("%Y-%m-%d")
        return f"{part.name} (model from {since})"
    return f"{part.name} (model)" if part.model else f"{part.name} (as configured)"
