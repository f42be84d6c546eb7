"""Locust file of `nova loadtest`: Kafka producers and dashboard analysts against the running pipeline.

`nova loadtest` runs it headless and judges the result; it also runs on its own, e.g.

    locust -f loadtests/pipeline.py --headless --processes 2 --nova-rate 20000 --nova-duration 60s

Users: `ProducerUser` (one Kafka producer per process, paced to the plan's rate; one Locust
request event per batch) and `AnalystUser` (the dashboard queries of `loadtest.queries`, each a
Locust request; server backend only). `PipelineShape` runs the plan's steps and its phases:
producers build their pools, the clock starts, the steps run, producers stop and flush, the
pipeline drains, the result is written (`--nova-out DIR`: live.json every second, result.json
at the end). The master measures produce→queryable from the ingest group's committed offsets;
the method is in `pipelines/loadtest/measure.py`. Everything that is not Locust glue lives in
`pipelines/loadtest/`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import gevent
from locust import LoadTestShape, User, constant, events, task
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

from pipelines.config import Settings, load_settings
from pipelines.loadtest.measure import Collector, Control
from pipelines.loadtest.plan import LoadPlan, build_plan, parse_duration, runs_dir
from pipelines.loadtest.producer import MAX_BATCH, PacedProducer
from pipelines.loadtest.queries import Analyst, active_cards, analysts_unavailable, dashboard_queries
from pipelines.loadtest.stamping import PayloadPool
from pipelines.loadtest.verdict import why_broken

log = logging.getLogger("nova.loadtest")
FINISH_TIMEOUT_S = 30.0
BATCH_INTERVAL_S = 0.005
PROBE_INTERVAL_S = 0.25
MAX_PROBES_PER_QUERY = 200
PROBE_SKEW_S = 5  # event times are the producers' clocks: allow for some skew


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument(
        "--nova-config", default="", help="nova config file (default: $NOVA_CONFIG or configs/nova.yaml)"
    )
    parser.add_argument("--nova-plan", default="", include_in_web_ui=False, help="a load plan as JSON (from nova)")
    parser.add_argument("--nova-profile", default="", help="steady | step | spike | find-max")
    parser.add_argument("--nova-rate", type=float, default=0.0, help="target messages/s (default: peak × multiplier)")
    parser.add_argument("--nova-peak-multiplier", type=float, default=0.0, help="target as a multiple of the peak")
    parser.add_argument("--nova-duration", default="", help="length of the run, e.g. 60s or 5m")
    parser.add_argument("--nova-analysts", type=int, default=-1, help="analyst users (default: loadtest.analysts)")
    parser.add_argument("--nova-no-queries", action="store_true", default=False, help="no analyst users")
    parser.add_argument("--nova-out", default="", help="directory for live.json and result.json")


class _Process:
    """What one Locust process holds: settings, plan, its producer, the analysts' timings."""

    def __init__(self) -> None:
        self.settings: Settings | None = None
        self.plan: LoadPlan | None = None
        self.control: Control | None = None
        self.producer: PacedProducer | None = None
        self.producer_users = 0
        self.queries: list[tuple[str, int, int, bool]] = []
        self.reporting = False
        self.finished = False
        self.hub: _Hub | None = None

    def load(self, environment: Environment) -> tuple[Settings, LoadPlan]:
        if self.settings is None or self.plan is None:
            options = _parsed(environment)
            self.settings = load_settings(options.nova_config or None)
            self.plan = _plan(self.settings, options)
        return self.settings, self.plan

    def index(self, environment: Environment) -> int:
        runner = environment.runner
        return max(0, int(getattr(runner, "worker_index", 0)))


PROCESS = _Process()


def _parsed(environment: Environment) -> Any:
    """Locust's parsed options (with ours); a worker has the master's once the first spawn arrived."""
    options = environment.parsed_options
    if options is None:
        raise RuntimeError("run this file with the locust command: it needs Locust's parsed options")
    return options


def _plan(settings: Settings, options: Any) -> LoadPlan:
    if options.nova_plan:
        return LoadPlan.from_json(options.nova_plan)
    producers = int(getattr(options, "expect_workers", 1) or 1) if getattr(options, "master", False) else 1
    note = analysts_unavailable(settings)
    analysts = None if options.nova_analysts < 0 else options.nova_analysts
    plan = build_plan(
        settings,
        profile=options.nova_profile or None,
        rate=options.nova_rate or None,
        peak_multiplier=options.nova_peak_multiplier or None,
        duration_s=parse_duration(options.nova_duration) if options.nova_duration else None,
        producers=producers,
        analysts=0 if note else analysts,
        queries=not options.nova_no_queries and not note,
    )
    options.nova_plan = plan.to_json()  # the workers get the master's options: the same plan, the same run id
    return plan


class _Hub:
    """The master's side (or the only process's): the collector, offset polling, probes, output files."""

    def __init__(self, environment: Environment, settings: Settings, plan: LoadPlan) -> None:
        self.environment = environment
        self.settings = settings
        self.plan = plan
        backend = "embedded" if settings.clickhouse.url.startswith("chdb://") else "server"
        note = analysts_unavailable(settings) if plan.queries or plan.analysts else ""
        self.collector = Collector(
            plan,
            backend=backend,
            commit_poll_s=settings.loadtest.commit_poll_s,
            drain_timeout_s=settings.loadtest.drain_timeout_s,
            judge=partial(why_broken, slo=settings.slo, queries_note=note),
            settle_s=settings.slo.insight_latency_p99_s + 2.0,
        )
        out = _parsed(environment).nova_out
        self.out = Path(out) if out else runs_dir(settings) / plan.run_id
        self.out.mkdir(parents=True, exist_ok=True)
        self.written = False
        gevent.spawn(self._poll_offsets)
        if backend == "server":
            gevent.spawn(self._probe)

    def _poll_offsets(self) -> None:
        from pipelines.kafka.offsets import OffsetWatcher

        pool = gevent.get_hub().threadpool
        p = self.settings.pipeline
        watcher: OffsetWatcher = pool.apply(OffsetWatcher, (self.settings,), {"group_id": p.group_id, "topic": p.topic})
        interval = self.settings.loadtest.commit_poll_s
        last_ends = 0.0
        last_error = ""
        while self.collector.phase != "done":
            started = time.time()
            try:
                committed = pool.apply(watcher.committed)
                self.collector.add_commits(time.time_ns() // 1000, committed)
                if time.time() - last_ends >= 1.0 or self.collector.phase == "draining":
                    last_ends = time.time()
                    ends = pool.apply(watcher.end_offsets)
                    self.collector.add_end_offsets(time.time_ns() // 1000, ends)
            except Exception as exc:  # a missed poll costs resolution, not the run
                if str(exc) != last_error:
                    log.warning("reading offsets of group %s failed: %s", p.group_id, exc)
                last_error = str(exc)
            gevent.sleep(max(0.0, interval - (time.time() - started)))
        pool.apply(watcher.close)

    def _probe(self) -> None:
        from pipelines.clickhouse import open_store

        store = open_store(self.settings)
        sql = (
            f"SELECT transaction_id FROM {self.settings.pipeline.table} "
            "WHERE event_time >= %(since)s AND transaction_id IN %(ids)s"  # parts prune by event time
        )
        try:
            while self.collector.phase != "done":
                ids, earliest = self.collector.probes(MAX_PROBES_PER_QUERY)
                if ids and earliest is not None:
                    since = datetime.fromtimestamp(int(earliest) - PROBE_SKEW_S, UTC)
                    try:
                        rows = store.query_rows(sql, {"ids": tuple(ids), "since": since})
                        self.collector.probes_seen((str(r[0]) for r in rows), time.time_ns() // 1000)
                    except Exception as exc:
                        log.warning("probe SELECT failed: %s", exc)
                gevent.sleep(PROBE_INTERVAL_S)
        finally:
            store.close()

    def tick(self) -> bool:
        """Advance the phases and write the files; False once the run is over."""
        control = self.collector.tick()
        if control is not None:
            runner = self.environment.runner
            assert runner is not None
            runner.send_message("nova_control", control.as_dict())
        live = self.collector.live()
        _write(self.out / "live.json", json.dumps(live))
        if self.collector.phase != "done":
            return True
        if not self.written:
            result = self.collector.result()
            _write(self.out / "result.json", result.to_json())
            self.written = True
            log.info("nova load test %s done: %s", self.plan.run_id, self.out / "result.json")
        return False


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)  # readers never see half a file


@events.init.add_listener
def _init(environment: Environment, **_: Any) -> None:
    runner = environment.runner
    if runner is None:
        return
    if not isinstance(runner, WorkerRunner):
        plan = PROCESS.load(environment)[1]
        ProducerUser.fixed_count = plan.producers
        AnalystUser.fixed_count = plan.analysts
        runner.register_message("nova_ready", _on_ready)
        runner.register_message("nova_report", _on_report)
    if not isinstance(runner, MasterRunner):
        runner.register_message("nova_control", _on_control)


@events.test_start.add_listener
def _test_start(environment: Environment, **_: Any) -> None:
    if isinstance(environment.runner, WorkerRunner) or PROCESS.hub is not None:
        return
    settings, plan = PROCESS.load(environment)
    PROCESS.hub = _Hub(environment, settings, plan)


def _on_ready(environment: Environment, msg: Any) -> None:
    assert PROCESS.hub is not None
    PROCESS.hub.collector.producer_ready(int(msg.data["producer"]), int(msg.data["users"]))


def _on_report(environment: Environment, msg: Any) -> None:
    assert PROCESS.hub is not None
    data = msg.data
    if data.get("report"):
        PROCESS.hub.collector.add_report(data["report"])
    if data.get("queries"):
        PROCESS.hub.collector.add_queries(tuple(q) for q in data["queries"])


def _on_control(environment: Environment, msg: Any) -> None:
    PROCESS.control = Control(**msg.data)
    _apply_control()


def _apply_control() -> None:
    """Start this process's producer on the plan's clock, or stop it; its share is its users'."""
    producer, plan, control = PROCESS.producer, PROCESS.plan, PROCESS.control
    if producer is None or plan is None or control is None:
        return
    if control.phase == "run":
        share = PROCESS.producer_users / plan.producers
        segments = [(control.t0 + s.start_s, s.rate * share, s.index) for s in plan.steps]
        producer.schedule([*segments, (control.t0 + plan.duration_s, 0.0, -1)], started_at=control.t0)
    elif control.phase == "drain":
        producer.send_due(control.at)  # what fell due before the stop still goes (late, and measured so)
        producer.stop(control.at)


def _start_reporting(environment: Environment) -> None:
    if PROCESS.reporting:
        return
    PROCESS.reporting = True

    def loop() -> None:
        while not PROCESS.finished:
            gevent.sleep(1.0)
            if not PROCESS.finished:
                _send_report(environment, final=False)

    gevent.spawn(loop)


def _send_report(environment: Environment, *, final: bool) -> None:
    data: dict[str, Any] = {"queries": PROCESS.queries}
    PROCESS.queries = []
    if PROCESS.producer is not None:
        data["report"] = asdict(PROCESS.producer.take_report(final=final))
    if environment.runner is not None:
        environment.runner.send_message("nova_report", data)


class ProducerUser(User):
    """Sends the plan's share of this process; one Kafka producer per process, however many of these."""

    fixed_count = 1
    wait_time = constant(0)

    def on_start(self) -> None:
        settings, plan = PROCESS.load(self.environment)
        PROCESS.producer_users += 1
        self.owner = PROCESS.producer is None  # the first user drives the producer at the process's share
        index = PROCESS.index(self.environment)
        if self.owner:
            # in a thread: building the pool takes seconds, and the process must keep its heartbeat
            pool = gevent.get_hub().threadpool.apply(
                PayloadPool.build,
                (settings,),
                {
                    "run_id": plan.run_id,
                    "producer": index,
                    "size": settings.loadtest.pool_size,
                    "seed": plan.seed + index,
                },
            )
            PROCESS.producer = PacedProducer(
                settings=settings,
                pool=pool,
                topic=settings.pipeline.topic,
                producer_index=index,
                samples_per_s=settings.loadtest.ack_samples_per_s,
            )
            _apply_control()  # joined late (after the warm-up gave up waiting): catch up with the clock
        _start_reporting(self.environment)
        runner = self.environment.runner
        assert runner is not None
        runner.send_message("nova_ready", {"producer": index, "users": PROCESS.producer_users})

    @task
    def produce(self) -> None:
        producer = PROCESS.producer
        assert producer is not None
        if not self.owner:
            gevent.sleep(1.0)
            return
        fire = self.environment.events.request.fire
        while True:
            control = PROCESS.control
            if control is None:
                gevent.sleep(0.05)
                continue
            if control.phase == "drain":
                if not PROCESS.finished:
                    producer.finish(FINISH_TIMEOUT_S)
                    PROCESS.finished = True
                    _send_report(self.environment, final=True)
                gevent.sleep(1.0)
                continue
            started = time.perf_counter()
            n, size = producer.send_due()
            producer.poll()
            if n:
                fire(
                    request_type="kafka",
                    name="produce batch",
                    response_time=(time.perf_counter() - started) * 1000,
                    response_length=size,
                    exception=None,
                    context={"messages": n},
                )
            # Batches at least BATCH_INTERVAL_S apart: a message leaves up to that late, and its latency,
            # measured from the intended time, includes it.
            gevent.sleep(0 if n >= MAX_BATCH else max(BATCH_INTERVAL_S, producer.wait_s()))


class AnalystUser(User):
    """Runs the dashboard queries one after another while the steps run (server backend only)."""

    fixed_count = 0

    def wait_time(self) -> float:
        settings = PROCESS.settings
        return settings.loadtest.think_time_s if settings is not None else 1.0

    def on_start(self) -> None:
        from pipelines.clickhouse import open_store

        settings, plan = PROCESS.load(self.environment)
        self.store = open_store(settings)
        seed = plan.seed + 7919 * (PROCESS.index(self.environment) + 1)
        cards = gevent.get_hub().threadpool.apply(active_cards, (1000,), {"seed": seed})
        self.analyst = Analyst(self.store, dashboard_queries(settings), cards, seed=seed)
        _start_reporting(self.environment)

    def on_stop(self) -> None:
        self.store.close()

    @task
    def query(self) -> None:
        control = PROCESS.control
        if control is None or control.phase != "run" or time.time() < control.t0:
            gevent.sleep(0.2)
            return
        name, start_us, duration_us, error = self.analyst.run_next()
        PROCESS.queries.append((name, start_us, duration_us, error is None))
        self.environment.events.request.fire(
            request_type="clickhouse",
            name=name,
            response_time=duration_us / 1000,
            response_length=0,
            exception=error,
            context={},
        )


class PipelineShape(LoadTestShape):
    """The plan's users for as long as the run lasts; the collector decides when it is over."""

    def tick(self) -> tuple[int, float, list[type[User]]] | None:
        plan = PROCESS.plan
        assert plan is not None  # loaded at init on this (master or only) process
        classes: list[type[User]] = [ProducerUser, AnalystUser] if plan.analysts else [ProducerUser]
        users = (plan.producers + plan.analysts, 100.0, classes)
        hub = PROCESS.hub
        if hub is not None and not hub.tick():
            return None
        return users
