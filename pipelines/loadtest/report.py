"""`nova loadtest --report FILE.html` and `--csv PREFIX`: the run as a page and as tables.

The page is `templates/loadtest.html.j2`, extending the reports' base template and drawing with
its SVG chart macros (one Jinja2 environment, `pipelines.reports`, with this package's templates
in front): the verdict, a table of every step's checks, completeness, and charts over time —
target and achieved send rate, produce→ack and produce→queryable p50/p99, lag, query p95 —
with the percentiles of each step and of every query. Self-contained: no scripts, nothing fetched.
"""

from __future__ import annotations

import csv
from dataclasses import asdict
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

from jinja2 import ChoiceLoader, Environment, PackageLoader

from pipelines.loadtest.breakdown import describe
from pipelines.loadtest.latency import Percentiles
from pipelines.loadtest.results import RunResult, SecondRow, StageBreakdown, StepResult
from pipelines.loadtest.verdict import Verdict
from pipelines.reports import Series, environment


@cache
def _environment() -> Environment:
    base = environment()
    assert base.loader is not None
    return base.overlay(loader=ChoiceLoader([PackageLoader("pipelines.loadtest", "templates"), base.loader]))


def _series(result: RunResult, name: str, attr: str, *, scale: float = 1.0) -> Series:
    points = []
    for row in result.seconds:
        value = getattr(row, attr)
        if value is not None:
            points.append((result.started_at + row.second, float(value) * scale))
    return Series(name, points)


def _cards(result: RunResult, verdict: Verdict) -> list[tuple[str, str]]:
    o = result.overall

    def ms(p: Percentiles | None, attr: str) -> str:
        return "—" if p is None else f"{getattr(p, attr) / 1000:.2f} s"

    cards = [
        ("target", f"{result.plan.target_rate:,.0f}/s"),
        ("achieved", f"{o.achieved_rate:,.0f}/s"),
        ("sent", f"{o.sent:,}"),
        ("failed sends", f"{o.failed:,}"),
        ("produce→queryable p99", ms(o.queryable, "p99_ms")),
        ("produce→ack p99", ms(o.ack, "p99_ms")),
        ("query p95", "—" if o.query_latency is None else f"{o.query_latency.p95_ms:,.0f} ms"),
        ("lag max", f"{o.lag_max:,}"),
    ]
    if verdict.profile == "find-max":
        held = verdict.highest_held_rate
        cards.insert(0, ("highest rate held", "none" if held is None else f"{held:,.0f}/s"))
    return cards


# one colour per stage, in the order of `breakdown.describe()` (Okabe–Ito, then grey and two of Tol's)
STAGE_COLOURS = (
    "#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#999999", "#332288", "#882255",
)  # fmt: skip
BAR_WIDTH = 520


def stacked_bars(rows: list[StageBreakdown]) -> list[dict[str, object]]:
    """Geometry of one horizontal stacked bar per step: segments of mean ms, on one common scale."""
    names = list(describe())
    longest = max((r.total_ms for r in rows), default=0.0) or 1.0
    bars: list[dict[str, object]] = []
    for r in rows:
        x = 0.0
        segments = []
        for name, value in r.stages.items():
            width = value / longest * BAR_WIDTH
            colour = STAGE_COLOURS[names.index(name) % len(STAGE_COLOURS)] if name in names else "#cccccc"
            segments.append({"name": name, "ms": value, "x": x, "width": width, "colour": colour})
            x += width
        bars.append({"label": r.label, "total_ms": r.total_ms, "segments": segments})
    return bars


def render_report(result: RunResult, verdict: Verdict, *, ingest_latency: dict[str, object] | None = None) -> str:
    """The whole page as text; `ingest_latency` is the ingest workers' own event→insert summary, if known."""
    s = result
    timelines = [
        ("send rate (messages/s)", [_series(s, "target", "target_rate"), _series(s, "achieved", "sent")]),
        (
            "produce→queryable latency (s), by second sent",
            [
                _series(s, "p50", "queryable_p50_ms", scale=0.001),
                _series(s, "p99", "queryable_p99_ms", scale=0.001),
            ],
        ),
        (
            "produce→ack latency (ms), by second sent",
            [_series(s, "p50", "ack_p50_ms"), _series(s, "p99", "ack_p99_ms")],
        ),
        ("ingest lag (messages not yet committed)", [_series(s, "lag", "lag")]),
    ]
    if any(row.queries for row in s.seconds):
        timelines.append(("dashboard query p95 (ms)", [_series(s, "p95", "query_p95_ms")]))
    started = datetime.fromtimestamp(s.started_at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    boundaries = [s.started_at + step.start_s for step in s.plan.steps[1:]]
    return (
        _environment()
        .get_template("loadtest.html.j2")
        .render(
            result=s,
            verdict=verdict,
            cards=_cards(s, verdict),
            timelines=timelines,
            started=started,
            boundaries=boundaries,
            steps=[*s.steps, s.overall],
            verdicts=[*verdict.steps, verdict.overall],
            ingest_latency=ingest_latency,
            stage_names=describe(),
            stage_colours=dict(zip(describe(), STAGE_COLOURS, strict=False)),
            bars=stacked_bars(s.breakdown),
            bar_width=BAR_WIDTH,
        )
    )


_STEP_COLUMNS = ("index", "label", "status", "target_rate", "achieved_rate", "duration_s", "sent", "failed",
                 "unresolved", "lag_max", "query_count", "query_failures")  # fmt: skip
_LATENCIES = ("ack", "queryable", "probe", "query_latency")
_PCTS = ("count", "p50_ms", "p95_ms", "p99_ms", "p999_ms", "max_ms")


def _step_row(step: StepResult) -> list[object]:
    row: list[object] = [getattr(step, c) for c in _STEP_COLUMNS]
    for name in _LATENCIES:
        p = getattr(step, name)
        row += [getattr(p, k) if p is not None else "" for k in _PCTS]
    return row


def write_csv(result: RunResult, prefix: Path) -> list[Path]:
    """PREFIX_timeline.csv (one row a second) and PREFIX_steps.csv (one row a step, then the whole run)."""
    timeline = prefix.with_name(prefix.name + "_timeline.csv")
    steps = prefix.with_name(prefix.name + "_steps.csv")
    timeline.parent.mkdir(parents=True, exist_ok=True)
    fields = list(SecondRow.__dataclass_fields__)
    with timeline.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["time", *fields])
        for row in result.seconds:
            data = asdict(row)
            stamp = datetime.fromtimestamp(result.started_at + row.second, UTC).isoformat()
            writer.writerow([stamp, *("" if data[k] is None else data[k] for k in fields)])
    with steps.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*_STEP_COLUMNS, *(f"{n}_{k}" for n in _LATENCIES for k in _PCTS)])
        for step in [*result.steps, result.overall]:
            writer.writerow(_step_row(step))
    return [timeline, steps]


def _plain(p: Percentiles | None) -> dict[str, float] | None:
    return None if p is None else asdict(p)


def _step_summary(step: StepResult) -> dict[str, object]:
    return {
        "index": step.index,
        "label": step.label,
        "status": step.status,
        "target_rate": step.target_rate,
        "achieved_rate": round(step.achieved_rate, 1),
        "duration_s": step.duration_s,
        "sent": step.sent,
        "failed": step.failed,
        "unresolved": step.unresolved,
        "lag_max": step.lag_max,
        "produce_to_queryable_ms": _plain(step.queryable),
        "produce_to_ack_ms": _plain(step.ack),
        "probe_select_ms": _plain(step.probe),
        "query_ms": _plain(step.query_latency),
        "queries": {q.name: {"count": q.count, "failures": q.failures, "ms": _plain(q.latency)} for q in step.queries},
        "query_count": step.query_count,
        "query_failures": step.query_failures,
    }


def summary_dict(result: RunResult, verdict: Verdict, *, out_dir: Path | None = None) -> dict[str, object]:
    """What `--json` prints: the verdict and the figures per step, without the histograms."""
    return {
        "run_id": result.plan.run_id,
        "passed": verdict.passed,
        "exit_code": verdict.exit_code,
        "summary": verdict.summary,
        "profile": result.plan.profile,
        "target_rate": result.plan.target_rate,
        "peak_rate": result.plan.peak_rate,
        "duration_s": result.plan.duration_s,
        "backend": result.backend,
        "highest_held_rate": verdict.highest_held_rate,
        "steps": [_step_summary(s) for s in result.steps],
        "whole_run": _step_summary(result.overall),
        "verdict": verdict.to_dict(),
        "notices": verdict.notices,
        "errors": result.errors,
        "drained_s": round(result.drained_s, 2),
        "method": result.method,
        "breakdown": [
            {"label": b.label, "stages_mean_ms": b.stages, "queryable_mean_ms": b.queryable_mean_ms, "rows": b.rows}
            for b in result.breakdown
        ],
        "out_dir": None if out_dir is None else str(out_dir),
    }
