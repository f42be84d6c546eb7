"""What a load test measured, as plain data: per step, per second, for the whole run.

The Locust master builds it (`measure.Collector`) and writes it as JSON; `nova loadtest` reads
it back, adds the completeness check and judges it (`verdict`); the report renders it. Latency
figures are `Percentiles` in milliseconds; the histograms behind them travel along encoded, so
anyone can merge or re-cut them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from pipelines.loadtest.latency import Percentiles
from pipelines.loadtest.plan import LoadPlan

StepStatus = str  # "ran" | "cut" (find-max stopped the run during it) | "not run"


@dataclass
class QueryStats:
    """One dashboard query over a step (or the run)."""

    name: str
    count: int = 0
    failures: int = 0
    latency: Percentiles | None = None
    histogram: str = ""


@dataclass
class StepResult:
    """One step of the plan (or, with index −1, the whole run), as measured."""

    index: int
    label: str
    target_rate: float
    start_s: float
    duration_s: float  # how long it ran (a cut step ran shorter than planned)
    status: StepStatus = "ran"
    sent: int = 0
    bytes: int = 0
    failed: int = 0
    ack: Percentiles | None = None
    queryable: Percentiles | None = None
    probe: Percentiles | None = None  # produce→visible by SELECT of probe ids (server backend only)
    unresolved: int = 0  # sampled events not seen queryable before the drain ended
    queries: list[QueryStats] = field(default_factory=list)
    query_latency: Percentiles | None = None  # every query of the step together
    query_count: int = 0
    query_failures: int = 0
    lag_max: int = 0
    histograms: dict[str, str] = field(default_factory=dict)  # "ack", "queryable", "probe", "query"

    @property
    def achieved_rate(self) -> float:
        return self.sent / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def send_error_rate(self) -> float:
        return self.failed / self.sent if self.sent else 0.0

    @property
    def query_error_rate(self) -> float:
        return self.query_failures / self.query_count if self.query_count else 0.0


@dataclass
class SecondRow:
    """One second of the run, for the charts (latencies by the second the events were due in)."""

    second: int
    target_rate: float
    sent: int
    ack_p50_ms: float | None = None
    ack_p99_ms: float | None = None
    queryable_p50_ms: float | None = None
    queryable_p99_ms: float | None = None
    lag: int | None = None
    queries: int = 0
    query_p95_ms: float | None = None


@dataclass
class StageBreakdown:
    """Mean ms per event in each stage over one step (or the whole run, index −1): `breakdown`."""

    index: int
    label: str
    stages: dict[str, float] = field(default_factory=dict)  # stage → mean ms, in the order events pass them
    queryable_mean_ms: float | None = None
    rows: float = 0.0  # events the workers committed in the step's time

    @property
    def total_ms(self) -> float:
        return sum(self.stages.values())


@dataclass
class RunResult:
    """The whole run as the Locust master saw it."""

    plan: LoadPlan
    backend: str  # "embedded" | "server"
    started_at: float  # epoch seconds of the schedule's start
    ended_at: float  # when the last producer stopped sending
    drained_s: float  # how long the pipeline took to catch up after that
    drained: bool  # every message sent was committed by the ingest group before the drain timeout
    steps: list[StepResult]
    overall: StepResult
    seconds: list[SecondRow]
    producers: int  # producers that reported
    errors: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    stopped_early: str | None = None  # find-max: which step broke what
    method: str = ""  # how produce→queryable was measured, and its resolution
    # per step, then the whole run: where the time went (`breakdown`), once the ingest summary is in
    breakdown: list[StageBreakdown] = field(default_factory=list)

    def to_json(self) -> str:
        data = asdict(self)
        data["plan"] = json.loads(self.plan.to_json())
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> RunResult:
        raw: dict[str, Any] = json.loads(text)
        raw["plan"] = LoadPlan.from_json(json.dumps(raw["plan"]))
        raw["steps"] = [_step(s) for s in raw["steps"]]
        raw["overall"] = _step(raw["overall"])
        raw["seconds"] = [SecondRow(**s) for s in raw["seconds"]]
        raw["breakdown"] = [StageBreakdown(**b) for b in raw.get("breakdown", [])]
        return cls(**raw)


def _percentiles(raw: dict[str, Any] | None) -> Percentiles | None:
    return None if raw is None else Percentiles(**raw)


def _step(raw: dict[str, Any]) -> StepResult:
    for key in ("ack", "queryable", "probe", "query_latency"):
        raw[key] = _percentiles(raw[key])
    raw["queries"] = [QueryStats(**{**q, "latency": _percentiles(q["latency"])}) for q in raw["queries"]]
    return StepResult(**raw)


@dataclass
class Completeness:
    """Did every acknowledged event of the run land in ClickHouse exactly once, and none in the DLQ?"""

    checked: bool
    reason: str = ""  # why it was not checked
    acked: int = 0
    stored: int = 0  # count() of the run's ids
    distinct: int = 0  # uniqExact(transaction_id) of the run's ids
    dlq_expected: int = 0
    dlq_found: int | None = None

    @property
    def ok(self) -> bool:
        return (
            self.checked
            and self.stored == self.acked
            and self.distinct == self.acked
            and (self.dlq_found is None or self.dlq_found == self.dlq_expected)
        )
