"""Where produce→queryable goes, per step: the load test's own figures and the ingest workers' stages.

The producer side (send → ack) comes from the sampled delivery reports; the pipeline side from the
ingest workers' stage windows (`pipelines.ingest.latency.STAGES`, in `nova ingest --json`), cut to
each step by when the batches were committed. Means, not percentiles: means of consecutive stages
add up to the mean of the whole, so they stack; each stage's tail is in the workers' histograms.

- send → ack: the producer's linger and batching, the broker's append and the acknowledgement;
- ack → fetched: the rest of the worker's `fetch` stage (Kafka timestamp → consume returned) —
  fetch wait and the time messages sit in the consumer's queue while the worker is busy;
- accumulate, decode, queue, insert, commit: the worker's stages;
- commit → seen: the remainder to the measured produce→queryable mean — how long until the
  load test's offset poll saw the commit (up to `loadtest.commit_poll_s`).

Visibility after the insert is no stage of its own: an INSERT into a MergeTree (chdb, and 18.16,
which has no `async_insert`) returns once its part is committed, so the rows are visible to a
SELECT from then on. On a server the probe SELECTs check that independently.
"""

from __future__ import annotations

from typing import Any

from pipelines.ingest.latency import STAGES, stage_means
from pipelines.loadtest.latency import Latency
from pipelines.loadtest.results import StageBreakdown, StepResult

PRODUCER_STAGES = {
    "send → ack": "producer linger and batching, broker append, acknowledgement (sampled delivery reports)",
    "ack → fetched": "broker → consumer: fetch wait, and waiting in the consumer's queue while the worker is busy",
}
TAIL_STAGE = {"commit → seen": "until the load test's offset poll saw the commit (its resolution)"}


def describe() -> dict[str, str]:
    """Every stage of a breakdown and what it covers, in order."""
    worker = {name: text for name, text in STAGES.items() if name != "fetch"}
    return {**PRODUCER_STAGES, **worker, **TAIL_STAGE}


def _mean_ms(encoded: str) -> float | None:
    if not encoded:
        return None
    latency = Latency.decode(encoded)
    return latency.mean_ms() if latency.count else None


def _rows(windows: list[dict[str, dict[str, list[float]]]], start: float, end: float) -> float:
    from pipelines.ingest.latency import WINDOW_S

    total = 0.0
    for per_worker in windows:
        for key, stages in per_worker.items():
            at = int(key)
            if at + WINDOW_S > start and at < end and "insert" in stages:
                total += stages["insert"][0]
    return total


def step_breakdown(
    step: StepResult, windows: list[dict[str, dict[str, list[float]]]], *, started_at: float
) -> StageBreakdown:
    """The breakdown of one step; `windows` are the workers' stage windows (epoch s keys)."""
    if step.index < 0:
        start, end = started_at, float("inf")
    else:
        start, end = started_at + step.start_s, started_at + step.start_s + step.duration_s
    worker = stage_means(windows, start=start, end=end if end != float("inf") else None)
    ack = _mean_ms(step.histograms.get("ack", ""))
    queryable = _mean_ms(step.histograms.get("queryable", ""))
    stages: dict[str, float] = {}
    if ack is not None:
        stages["send → ack"] = ack
    if "fetch" in worker:
        stages["ack → fetched"] = max(0.0, worker["fetch"] - (ack or 0.0))
    for name in STAGES:
        if name != "fetch" and name in worker:
            stages[name] = worker[name]
    if queryable is not None and worker:
        stages["commit → seen"] = max(0.0, queryable - sum(stages.values()))
    return StageBreakdown(
        index=step.index,
        label=step.label,
        stages=stages,
        queryable_mean_ms=queryable,
        rows=_rows(windows, start, end),
    )


def breakdowns(
    steps: list[StepResult], overall: StepResult, ingest: dict[str, Any] | None, *, started_at: float
) -> list[StageBreakdown]:
    """One breakdown per step that ran, then the whole run; empty without the workers' summary."""
    windows = (ingest or {}).get("stage_windows") or []
    if not isinstance(windows, list) or not windows:
        return []
    ran = [s for s in steps if s.status != "not run"]
    return [step_breakdown(s, windows, started_at=started_at) for s in [*ran, overall]]
