"""The verdict: each step of a run against `slo:`, the completeness check, and the exit code.

Per step: produce→queryable p99 (the insight latency), dashboard query p95, the share of failed
sends and of failed queries, every sampled event queryable before the drain ended, and the
achieved send rate against the target — below `slo.min_achieved_ratio` the load generator, not
the pipeline, was the limit (generator-bound), and the run proves nothing: a failure too.

A run passes when every step that ran held every SLO and completeness held; find-max passes
when the highest rate that held (every step up to it held) reaches the expected peak, or the
ceiling when that is lower. A check that could not be measured (queries on the embedded store)
is shown as such with the reason, and neither passes nor fails the run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipelines.config import SloSettings
    from pipelines.loadtest.results import Completeness, RunResult, StepResult

SHORT_NOTE = 40  # longer notes go to the notices, the check says "see the notice"


@dataclass(frozen=True)
class Check:
    """One SLO (or completeness) check: what was allowed, what was measured, held or not."""

    name: str
    limit: str
    measured: str
    ok: bool | None  # None: not measured; `note` says why
    note: str = ""


@dataclass
class StepVerdict:
    index: int
    label: str
    status: str
    checks: list[Check] = field(default_factory=list)

    @property
    def held(self) -> bool:
        return self.status != "not run" and all(c.ok is not False for c in self.checks)

    @property
    def broken(self) -> list[Check]:
        return [c for c in self.checks if c.ok is False]


@dataclass
class Verdict:
    profile: str
    steps: list[StepVerdict]
    overall: StepVerdict
    completeness: list[Check]
    notices: list[str]
    passed: bool
    summary: str
    highest_held_rate: float | None = None  # find-max

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["exit_code"] = self.exit_code
        for step, raw in zip([*self.steps, self.overall], [*data["steps"], data["overall"]], strict=True):
            raw["held"] = step.held
        return data


def _seconds(ms: float) -> str:
    return f"{ms / 1000:.3f} s"  # three decimals: a breach never rounds to the limit


def _ratio(part: int, whole: int) -> str:
    return f"{part / whole:.4%} ({part:,} of {whole:,})" if whole else "—"


def judge_step(step: StepResult, slo: SloSettings, *, queries_note: str = "") -> StepVerdict:
    """The checks of one step (or the whole run); `queries_note` says why queries were not measured."""
    verdict = StepVerdict(step.index, step.label, step.status)
    if step.status == "not run":
        return verdict
    checks = verdict.checks
    limit_ms = slo.insight_latency_p99_s * 1000
    allowed = f"≤ {slo.insight_latency_p99_s:g} s"
    q = step.queryable
    if step.sent == 0:
        checks.append(Check("insight latency p99", allowed, "—", None, "nothing was sent"))
    elif q is None:
        checks.append(Check("insight latency p99", allowed, "no sample", False))
    else:
        checks.append(Check("insight latency p99", allowed, _seconds(q.p99_ms), q.p99_ms <= limit_ms))
    if step.unresolved:
        checks.append(Check("queryable before the drain ended", "every sample", f"{step.unresolved:,} not", False))
    if queries_note:
        checks.append(Check("query p95", f"≤ {slo.query_p95_ms:,.0f} ms", "—", None, queries_note))
    elif step.query_latency is not None:
        p95 = step.query_latency.p95_ms
        checks.append(Check("query p95", f"≤ {slo.query_p95_ms:,.0f} ms", f"{p95:,.0f} ms", p95 <= slo.query_p95_ms))
    elif step.query_count:
        checks.append(Check("query p95", f"≤ {slo.query_p95_ms:,.0f} ms", "every query failed", False))
    else:
        checks.append(Check("query p95", f"≤ {slo.query_p95_ms:,.0f} ms", "—", None, "no query ran in this step"))
    limit = f"≤ {slo.max_error_rate:.2%}"
    checks.append(
        Check("send errors", limit, _ratio(step.failed, step.sent), step.send_error_rate <= slo.max_error_rate)
    )
    if step.query_count:
        checks.append(
            Check(
                "query errors",
                limit,
                _ratio(step.query_failures, step.query_count),
                step.query_error_rate <= slo.max_error_rate,
            )
        )
    want = slo.min_achieved_ratio * step.target_rate
    measured = f"{step.achieved_rate:,.0f}/s of {step.target_rate:,.0f}/s"
    if step.status == "cut":
        checks.append(Check("achieved rate", f"≥ {want:,.0f}/s", measured, None, "cut short: find-max stopped here"))
    else:
        ok = step.achieved_rate >= want
        checks.append(Check("achieved rate", f"≥ {want:,.0f}/s", measured, ok, "" if ok else "generator-bound"))
    return verdict


def why_broken(step: StepResult, slo: SloSettings, *, queries_note: str = "") -> str | None:
    """For find-max while it runs: which SLOs a finished step broke, or None if it held."""
    broken = judge_step(step, slo, queries_note=queries_note).broken
    return "; ".join(f"{c.name} {c.measured} (allowed {c.limit})" for c in broken) or None


def completeness_checks(result: RunResult, completeness: Completeness) -> list[Check]:
    checks = [
        Check(
            "pipeline caught up",
            "within the drain timeout",
            f"{result.drained_s:.1f} s after the last send",
            result.drained,
        )
    ]
    if not completeness.checked:
        checks.append(
            Check("every acked event stored once", "count = uniqExact = acked", "—", None, completeness.reason)
        )
        return checks
    c = completeness
    measured = f"{c.stored:,} rows, {c.distinct:,} distinct ids, {c.acked:,} acked"
    ok = c.stored == c.acked and c.distinct == c.acked
    note = ""
    if not ok:
        missing, duplicated = c.acked - c.distinct, c.stored - c.distinct
        note = (
            ", ".join(
                part
                for part in (
                    f"{missing:,} missing" if missing > 0 else "",
                    f"{duplicated:,} duplicated" if duplicated else "",
                )
                if part
            )
            or "more distinct ids than acked"
        )
    checks.append(Check("every acked event stored once", "count = uniqExact = acked", measured, ok, note))
    if c.dlq_found is None:
        checks.append(Check("dead letters", f"= {c.dlq_expected}", "—", None, "the dead-letter topic was not read"))
    else:
        checks.append(Check("dead letters", f"= {c.dlq_expected}", f"{c.dlq_found:,}", c.dlq_found == c.dlq_expected))
    return checks


def judge(result: RunResult, slo: SloSettings, completeness: Completeness, *, queries_note: str = "") -> Verdict:
    """The whole verdict; `queries_note` explains why no queries ran (e.g. the embedded store)."""
    plan = result.plan
    notices = list(result.notices)
    short = queries_note
    if len(queries_note) > SHORT_NOTE:
        notices.append(queries_note)
        short = "see the notice"
    steps = [judge_step(s, slo, queries_note=short) for s in result.steps]
    overall = judge_step(result.overall, slo, queries_note=short)
    if plan.profile == "find-max":
        # the whole run includes the step that broke: it is shown, not judged
        shown = [
            Check(c.name, c.limit, c.measured, None, c.note or "find-max judges each step") for c in overall.checks
        ]
        overall = StepVerdict(overall.index, overall.label, overall.status, shown)
    complete = completeness_checks(result, completeness)
    complete_ok = all(c.ok is not False for c in complete)
    highest: float | None = None
    if plan.profile == "find-max":
        for step, v in zip(result.steps, steps, strict=True):
            if v.status != "ran" or not v.held:
                break
            highest = step.target_rate
        need = min(plan.peak_rate, plan.target_rate)
        passed = highest is not None and highest >= need and complete_ok
        reached = f"{highest:,.0f}/s ({highest / plan.peak_rate:.3g}× peak)" if highest else "no step"
        summary = f"highest rate that held: {reached}"
        if result.stopped_early:
            summary += f"; {result.stopped_early}"
        if not passed:
            summary = ("FAIL — " if complete_ok else "FAIL (completeness) — ") + summary + f"; needed {need:,.0f}/s"
        else:
            summary = "PASS — " + summary
        return Verdict(plan.profile, steps, overall, complete, notices, passed, summary, highest)
    ran = [v for v in steps if v.status != "not run"]
    broken = [(v, c) for v in ran for c in v.broken] + [(overall, c) for c in overall.broken]
    passed = bool(ran) and not broken and complete_ok
    if passed:
        summary = f"PASS — every SLO held ({plan.profile}, {plan.target_rate:,.0f}/s target, {plan.duration_s:g} s)"
    else:
        first = [f"{v.label}: {c.name} {c.measured} (allowed {c.limit})" for v, c in broken[:2]]
        first += [f"{c.name}: {c.measured}" + (f" ({c.note})" if c.note else "") for c in complete if c.ok is False]
        summary = "FAIL — " + ("; ".join(first) or "no step ran")
    return Verdict(plan.profile, steps, overall, complete, notices, passed, summary)
