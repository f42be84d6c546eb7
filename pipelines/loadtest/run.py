"""`run_loadtest`: ingest workers and Locust as subprocesses, the live view, completeness, the verdict.

The order of a run:

1. the dead-letter topic's end offsets are noted (the completeness check reads from there);
2. with `with_ingest`, `nova ingest` starts (the caller passes its command line) and the run waits
   until the consumer group owns every partition; without, a running group is required;
3. Locust runs headless (`loadtests/pipeline.py`, the plan as JSON) and writes `live.json` every
   second and `result.json` when the pipeline has drained; `on_live` gets each snapshot;
4. the ingest workers started here stop (SIGTERM: they flush and commit) — on the embedded store
   this frees it for the completeness check — and the run's rows are counted;
5. the verdict judges the result against `slo:`.

Everything lands in `<state dir>/loadtest/<run id>/`: the plan, the Locust and ingest logs,
live.json, result.json and verdict.json.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from pipelines.config import PACKAGE_ROOT
from pipelines.errors import KafkaError, NovaError, UsageError
from pipelines.kafka.offsets import OffsetWatcher, end_offsets
from pipelines.loadtest.breakdown import breakdowns
from pipelines.loadtest.completeness import check_completeness
from pipelines.loadtest.plan import runs_dir
from pipelines.loadtest.prefill import PrefillResult, prefill
from pipelines.loadtest.queries import analysts_unavailable
from pipelines.loadtest.results import Completeness, RunResult
from pipelines.loadtest.verdict import Verdict, judge

if TYPE_CHECKING:
    from pipelines.config import Settings
    from pipelines.loadtest.plan import LoadPlan

LOCUSTFILE = PACKAGE_ROOT / "loadtests" / "pipeline.py"
ASSIGN_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0
STARTUP_SLACK_S = 180.0  # Locust start, pools, warm-up, final reports: on top of duration and drain


@dataclass
class Distributed:
    """Locust's own distributed mode: this process is the master, `workers` connect to it."""

    workers: int
    bind_port: int = 5557


@dataclass
class LoadtestOutcome:
    result: RunResult
    completeness: Completeness
    verdict: Verdict
    out_dir: Path
    # the ingest workers' own figure, when the run started them: event time → insert returned, every
    # event, from their HdrHistograms (`nova ingest --json`, latency_event) — a cross-check, not judged
    ingest_latency: dict[str, Any] | None = None


class _Child:
    """A subprocess in its own session with its output in a log file; stopped as a group."""

    def __init__(
        self, name: str, cmd: Sequence[str], log: Path, env: dict[str, str], *, stdout: Path | None = None
    ) -> None:
        self.name = name
        self.log = log
        self._files: list[IO[bytes]] = [open(log, "wb")]  # noqa: SIM115 - closed in stop()
        if stdout is not None:
            self._files.append(open(stdout, "wb"))  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            list(cmd),
            stdout=self._files[-1],
            stderr=self._files[0] if stdout is not None else subprocess.STDOUT,
            env=env,
            cwd=PACKAGE_ROOT,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM the group (a graceful stop for both ingest and Locust), SIGKILL after `timeout_s`."""
        if self.alive():
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.proc.wait(10)
        for f in self._files:
            f.close()
        return self.proc.returncode

    def _signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):  # already gone
            os.killpg(self.proc.pid, sig)

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])


def locust_command(
    settings: Settings,
    *,
    plan: LoadPlan,
    out_dir: Path,
    processes: int,
    csv_prefix: Path | None,
    distributed: Distributed | None,
) -> list[str]:
    """The Locust command line of a run (headless, the plan as JSON)."""
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary"]
    cmd += ["--nova-plan", plan.to_json(), "--nova-config", str(settings.source), "--nova-out", str(out_dir)]
    if distributed is not None:
        cmd += ["--master", "--expect-workers", str(distributed.workers)]
        cmd += ["--master-bind-port", str(distributed.bind_port)]
    elif processes > 1:
        cmd += ["--processes", str(processes)]
    if csv_prefix is not None:
        cmd += ["--csv", str(csv_prefix)]
    return cmd


def worker_command(settings: Settings, *, master_host: str, master_port: int, processes: int) -> list[str]:
    """A Locust worker that connects to a `nova loadtest --master` elsewhere (the plan comes from the master)."""
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--worker"]
    cmd += ["--master-host", master_host, "--master-port", str(master_port), "--nova-config", str(settings.source)]
    if processes > 1:
        cmd += ["--processes", str(processes)]
    return cmd


def run_worker(*, settings: Settings, master_host: str, master_port: int = 5557, processes: int = 1) -> int:
    """Run Locust worker process(es) for a master on `master_host` until it ends the run; Locust's exit code."""
    if processes < 1:
        raise UsageError(f"--processes must be at least 1, got {processes}")
    _require_locust()
    cmd = worker_command(settings, master_host=master_host, master_port=master_port, processes=processes)
    return subprocess.call(cmd, env=_child_env(), cwd=PACKAGE_ROOT)


def _require_locust() -> None:
    import importlib.util

    if importlib.util.find_spec("locust") is None:
        raise UsageError(
            f"Locust is not installed in {sys.prefix}: `nova loadtest` runs it",
            hint="pip install -e '.[load]' (or '.[dev]')",
        )


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run_loadtest(
    *,
    settings: Settings,
    plan: LoadPlan,
    processes: int,
    with_ingest: bool,
    ingest_command: Sequence[str],
    csv_prefix: Path | None = None,
    distributed: Distributed | None = None,
    on_live: Callable[[dict[str, Any]], None] | None = None,
    stop_event: threading.Event | None = None,
    prefill_rows: int = 0,
) -> LoadtestOutcome:
    """Run `plan` against the pipeline of `settings` and judge it; see the module docstring.

    `prefill_rows` rows are first written into the table by ClickHouse itself
    (`pipelines.loadtest.prefill`), so the dashboard queries run against a table of that size.
    """
    _require_locust()
    out_dir = runs_dir(settings) / plan.run_id
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "plan.json").write_text(plan.to_json())
    env = _child_env()
    p = settings.pipeline
    embedded = settings.clickhouse.url.startswith("chdb://")
    watcher = OffsetWatcher(settings, group_id=p.group_id, topic=p.topic)
    ingest: _Child | None = None
    locust: _Child | None = None
    ingest_latency: dict[str, Any] | None = None
    prefilled: PrefillResult | None = None
    try:
        if prefill_rows:
            prefilled = prefill(settings=settings, rows=prefill_rows)  # before ingest opens an embedded store
        dlq_start = end_offsets(settings, p.dlq_topic)
        if with_ingest:
            ingest = _Child("ingest", ingest_command, out_dir / "ingest.log", env, stdout=out_dir / "ingest.json")
            _wait_assigned(watcher, ingest)
        else:
            _require_consumers(watcher)
        cmd = locust_command(
            settings, plan=plan, out_dir=out_dir, processes=processes, csv_prefix=csv_prefix, distributed=distributed
        )
        locust = _Child("locust", cmd, out_dir / "locust.log", env)
        deadline = time.monotonic() + plan.duration_s + settings.loadtest.drain_timeout_s + STARTUP_SLACK_S
        _follow(locust, ingest, out_dir / "live.json", deadline, on_live, stop_event)
        result_path = out_dir / "result.json"
        if not result_path.exists():
            raise NovaError(
                f"Locust ended (exit code {locust.proc.returncode}) without writing {result_path}",
                hint=f"see {locust.log}:\n{locust.tail()}",
            )
        result = RunResult.from_json(result_path.read_text())
        if prefilled is not None:
            result.notices.append(
                f"table prefilled with {prefilled.rows:,} rows before the run, in {prefilled.seconds:.1f} s "
                f"({prefilled.rows_per_s:,.0f} rows/s)"
            )
        if ingest is not None:
            ingest.stop()  # flushes and commits; on the embedded store it also frees the store
            ingest = None
            summary = _ingest_summary(out_dir / "ingest.json")
            ingest_latency = _latency_event(summary)
            result.breakdown = breakdowns(result.steps, result.overall, summary, started_at=result.started_at)
            result_path.write_text(result.to_json())
        completeness = _completeness(settings, result, dlq_start, ours=with_ingest, embedded=embedded)
    finally:
        for child in (locust, ingest):
            if child is not None:
                child.stop()
        watcher.close()
    queries_note = analysts_unavailable(settings) if plan.queries and embedded else ""
    if not plan.queries:
        queries_note = "queries not run (--no-queries)"
    elif not plan.analysts and not queries_note:
        queries_note = "queries not run (no analyst users: --users 0)"
    verdict = judge(result, settings.slo, completeness, queries_note=queries_note)
    (out_dir / "verdict.json").write_text(json.dumps(verdict.to_dict(), default=str))
    return LoadtestOutcome(
        result=result, completeness=completeness, verdict=verdict, out_dir=out_dir, ingest_latency=ingest_latency
    )


def _ingest_summary(path: Path) -> dict[str, Any] | None:
    """The ingest workers' `--json` summary, if they wrote one (they do on a clean stop)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _latency_event(summary: dict[str, Any] | None) -> dict[str, Any] | None:
    """`latency_event` of the ingest summary: event time → insert returned, every event."""
    latency = (summary or {}).get("latency_event")
    return latency if isinstance(latency, dict) else None


def _wait_assigned(watcher: OffsetWatcher, ingest: _Child) -> None:
    """Until the group's members own every partition (the load must not start before ingest does)."""
    deadline = time.monotonic() + ASSIGN_TIMEOUT_S
    wanted = set(watcher.partitions)
    while True:
        if not ingest.alive():
            raise NovaError(
                f"`nova ingest` exited with code {ingest.proc.returncode} before the load test started",
                hint=f"see {ingest.log}:\n{ingest.tail()}\n(if another ingest holds the embedded store, "
                "stop it or pass --no-with-ingest)",
            )
        try:
            state = watcher.group_state()
            if state.assigned >= wanted:
                return
        except KafkaError:
            pass  # the group may not exist yet
        if time.monotonic() > deadline:
            raise NovaError(
                f"the ingest workers did not own every partition of '{watcher.topic}' within {ASSIGN_TIMEOUT_S:.0f}s",
                hint=f"see {ingest.log}",
            )
        time.sleep(0.5)


def _require_consumers(watcher: OffsetWatcher) -> None:
    state = watcher.group_state()
    if not state.members:
        raise UsageError(
            f"consumer group '{watcher.group_id}' has no members: nothing ingests topic '{watcher.topic}'",
            hint="start `nova ingest` first, or drop --no-with-ingest so the load test starts it",
        )


def _follow(
    locust: _Child,
    ingest: _Child | None,
    live_path: Path,
    deadline: float,
    on_live: Callable[[dict[str, Any]], None] | None,
    stop_event: threading.Event | None,
) -> None:
    """Relay live snapshots until Locust exits; stop everything if ingest dies, time runs out or we are asked to."""
    last_mtime = 0.0
    while locust.alive():
        if stop_event is not None and stop_event.is_set():
            raise KeyboardInterrupt
        if ingest is not None and not ingest.alive():
            raise NovaError(
                f"`nova ingest` died during the load test (exit code {ingest.proc.returncode})",
                hint=f"see {ingest.log}:\n{ingest.tail()}",
            )
        if time.monotonic() > deadline:
            raise NovaError("the load test overran its time budget; Locust was stopped", hint=f"see {locust.log}")
        try:
            mtime = live_path.stat().st_mtime
            if on_live is not None and mtime != last_mtime:
                last_mtime = mtime
                on_live(json.loads(live_path.read_text()))
        except (OSError, ValueError):
            pass  # not written yet, or replaced while we read it
        time.sleep(0.5)


def _completeness(
    settings: Settings, result: RunResult, dlq_start: dict[int, int], *, ours: bool, embedded: bool
) -> Completeness:
    from pipelines.clickhouse import open_store

    if embedded and not ours:
        reason = (
            f"not checked: the embedded store ({settings.clickhouse.url}) is held by the running ingest — "
            "let the load test start ingest (--with-ingest) or use a server"
        )
        return check_completeness(settings=settings, result=result, store=None, dlq_start=None, reason=reason)
    with open_store(settings) as store:
        return check_completeness(settings=settings, result=result, store=store, dlq_start=dlq_start)
