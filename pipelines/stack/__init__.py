"""The local stack: Kafka (KRaft), PostgreSQL and, on request, clickhouse-server, as real processes.

`nova stack up` installs what is missing (Debian packages, Kafka's jars via Maven), initialises
data on first use, starts each service detached, records its pid, and returns only when every
service answers its own client protocol. `down` stops them by pid (a polite signal, then
SIGKILL after a timeout), proves no stack process is left, and keeps all data. Everything
lives under `settings.state_dir` (default `.nova/`), so stacks with different state dirs and
ports (the tests' own, say) run side by side.

The embedded ClickHouse (chdb) is not a process: `status` only reports its path, and this
module never opens it (only one process may hold a chdb path).

clickhouse-server and SeaweedFS (the cold tier's S3) are optional. `up --with clickhouse-server`
starts it and records the request in `state_dir/stack.json`; later plain `up`s (after a `down`,
too) start it again, and `status` counts it as expected, until `up --without clickhouse-server`
stops and forgets it. `--with seaweedfs` works the same way, and so does `--with clickhouse-cluster`:
ZooKeeper and three clickhouse-server hosts (two shards, the first with two replicas; see
`clickhouse_cluster`), each a row of `status` with its replica lag.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

from pipelines.config import Settings
from pipelines.errors import StackError, UsageError
from pipelines.stack import _proc
from pipelines.stack._base import Service, ServiceStatus
from pipelines.stack._proc import Progress
from pipelines.stack.clickhouse_cluster import HOST_NAMES, HOSTS, cluster_url
from pipelines.stack.clickhouse_server import ClickHouseServer
from pipelines.stack.kafka import Kafka, jar_cache_dir
from pipelines.stack.postgres import Postgres
from pipelines.stack.seaweedfs import SeaweedFS
from pipelines.stack.zookeeper import ZooKeeper
from pipelines.urls import redact_url

__all__ = [
    "OPTIONAL_SERVICES",
    "SERVICES",
    "ServiceStatus",
    "cluster_url",
    "follow_log",
    "jar_cache_dir",
    "read_log_tail",
    "service_log",
    "stack_down",
    "stack_processes",
    "stack_status",
    "stack_up",
]

SERVICES = ("kafka", "postgres", "clickhouse-server", "seaweedfs", "zookeeper", *HOST_NAMES)
OPTIONAL_SERVICES = ("clickhouse-server", "seaweedfs", "clickhouse-cluster")
# optional service → its key in stack.json
_REQUEST_KEYS = {
    "clickhouse-server": "clickhouse_server",
    "seaweedfs": "seaweedfs",
    "clickhouse-cluster": "clickhouse_cluster",
}
# optional service → the services it stands for (ZooKeeper first: the cluster's hosts need it)
_MEMBERS = {
    "clickhouse-server": ("clickhouse-server",),
    "seaweedfs": ("seaweedfs",),
    "clickhouse-cluster": ("zookeeper", *HOST_NAMES),
}
# launch order: Kafka's JVM is the slowest; ZooKeeper before the cluster's hosts (their launch waits for it)
_LAUNCH_ORDER = {"kafka": 0, "zookeeper": 1, **{name: 3 for name in HOST_NAMES}}
_STATE_FILE = "stack.json"


def _no_progress(_message: str) -> None:
    pass


def _services(settings: Settings) -> dict[str, Service]:
    services: dict[str, Service] = {
        "kafka": Kafka(settings),
        "postgres": Postgres(settings),
        "clickhouse-server": ClickHouseServer(settings),
        "seaweedfs": SeaweedFS(settings),
        "zookeeper": ZooKeeper(settings),
    }
    for host in HOSTS:
        services[host.name] = host(settings)
    return services


def _read_state(settings: Settings) -> dict[str, bool]:
    try:
        data = json.loads((settings.state_dir / _STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_state(settings: Settings, state: dict[str, bool]) -> None:
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    _proc.write_if_changed(settings.state_dir / _STATE_FILE, json.dumps(state, indent=2, sort_keys=True) + "\n")


def _requested(settings: Settings, service: str) -> bool:
    return bool(_read_state(settings).get(_REQUEST_KEYS[service], False))


def _lock(settings: Settings, progress: Progress) -> contextlib.AbstractContextManager[None]:
    return _proc.file_lock(
        settings.state_dir / "stack.lock",
        on_wait="waiting for another `nova stack` command to finish…",
        progress=progress,
    )


def stack_up(
    *,
    settings: Settings,
    with_clickhouse_server: bool | None = None,
    with_seaweedfs: bool | None = None,
    with_clickhouse_cluster: bool | None = None,
    progress: Progress | None = None,
) -> list[ServiceStatus]:
    """Start whatever is not running, wait until every service is healthy; return their status.

    `with_clickhouse_server` / `with_seaweedfs`: True starts that optional service and remembers
    it, False stops and forgets it, None (default) keeps what an earlier `up` asked for. Raises
    `StackError`.
    """
    say = progress or _no_progress
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    with _lock(settings, say):
        state = _read_state(settings)
        choices = {
            "clickhouse-server": with_clickhouse_server,
            "seaweedfs": with_seaweedfs,
            "clickhouse-cluster": with_clickhouse_cluster,
        }
        for service, choice in choices.items():
            if choice is not None:
                state[_REQUEST_KEYS[service]] = choice
                _write_state(settings, state)
        services = _services(settings)
        for service, choice in choices.items():
            if not state.get(_REQUEST_KEYS[service], False):
                # the cluster's hosts before ZooKeeper
                for member in reversed(_MEMBERS[service]):
                    optional = services.pop(member)
                    if choice is False and optional.running_pid() is not None:
                        say(f"stopping {member} (--without {service})…")
                        optional.stop()

        pids = {name: svc.running_pid() for name, svc in services.items()}
        to_start = [name for name, pid in pids.items() if pid is None]
        # Every conflict is reported before anything is fetched, initialised or started.
        for name in to_start:
            services[name].check_ports_free()
        for name in to_start:
            services[name].prepare(say)
        # Launch all (Kafka first: its JVM is the slowest), then poll them together.
        launched_at = {}
        for name in sorted(to_start, key=lambda n: _LAUNCH_ORDER.get(n, 2)):
            launched_at[name] = time.monotonic()
            pids[name] = services[name].launch(say)

        healthy_after = _wait_all(services, pids, launched_at, say)
        rows = []
        for name, svc in services.items():
            detail = f"started, healthy after {healthy_after[name]:.1f}s" if name in launched_at else "already running"
            rows.append(svc.row("healthy", pids[name], detail=detail))
        rows.append(_clickhouse_row(settings))
        return rows


def _wait_all(
    services: dict[str, Service], pids: dict[str, int | None], launched_at: dict[str, float], say: Progress
) -> dict[str, float]:
    """Poll every service in turn until each is up and healthy; seconds from launch to healthy, per service.

    One failing service does not stop the others from being waited for (and PostgreSQL from
    getting its role and database), so a re-run after fixing the failure has less to do.
    """
    now = time.monotonic()
    deadlines = {name: launched_at.get(name, now) + svc.start_timeout_s for name, svc in services.items()}
    pending = dict(pids)
    healthy_after: dict[str, float] = {}
    errors: list[StackError] = []
    said = ""
    while pending:
        message = f"waiting for {', '.join(pending)} to answer…"
        if message != said:
            say(message)
            said = message
        for name in list(pending):
            svc, pid = services[name], pending[name]
            assert pid is not None
            try:
                if not svc.poll_started(pid, deadline=deadlines[name]):
                    continue
                svc.after_start(say)
                reason = svc.check_health()
                if reason:
                    raise StackError(
                        f"{name} (pid {pid}) is running but unhealthy: {reason}",
                        hint=f"see {svc.log_file}; then nova stack down && nova stack up",
                    )
                healthy_after[name] = time.monotonic() - launched_at.get(name, now)
            except StackError as exc:
                errors.append(exc)
            del pending[name]
        if pending:
            time.sleep(0.2)
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise StackError("; ".join(e.message for e in errors), hint="; ".join(e.hint for e in errors if e.hint))
    return healthy_after


def stack_down(*, settings: Settings, progress: Progress | None = None) -> list[ServiceStatus]:
    """Stop every stack service by pid and prove no stack process is left; data is kept.

    A remembered `--with clickhouse-server` stays remembered: the next `up` restores the same stack.
    """
    say = progress or _no_progress
    if not settings.state_dir.exists():
        return [svc.row("stopped", None, detail="was not running") for svc in _services(settings).values()]
    with _lock(settings, say):
        rows = []
        for name in ("seaweedfs", *reversed(HOST_NAMES), "zookeeper", "clickhouse-server", "kafka", "postgres"):
            svc = _services(settings)[name]
            if svc.running_pid() is not None:
                say(f"stopping {name}…")
            detail = svc.stop()
            rows.append(svc.row("stopped", None, detail=detail, expected=False))
        leftovers = stack_processes(settings=settings)
        for proc in leftovers:
            say(f"stopping leftover stack process {proc.pid}…")
            _proc.stop_process(proc.pid, timeout_s=10.0)
        remaining = stack_processes(settings=settings)
        if remaining:
            listing = ", ".join(f"pid {p.pid} ({' '.join(p.info.get('cmdline') or [])[:60]})" for p in remaining)
            raise StackError(
                f"stack processes are still running after down: {listing}",
                hint="kill them by pid (kill -9 PID) and re-run nova stack down",
            )
        order = {name: i for i, name in enumerate(SERVICES)}
        return sorted(rows, key=lambda r: order.get(r.name, 99))


def stack_status(*, settings: Settings) -> list[ServiceStatus]:
    """Each service's state (healthy / unhealthy / stopped), pid, address, data dir; plus embedded chdb."""
    services = _services(settings)
    rows = [services["kafka"].status(), services["postgres"].status()]
    for service in OPTIONAL_SERVICES:
        requested = _requested(settings, service)
        for member in _MEMBERS[service]:
            row = services[member].status(expected=requested)
            if not requested and row.state == "stopped":
                if service != "clickhouse-server":
                    break  # listed once asked for, so stacks without it look as before
                row = dataclasses.replace(row, detail=f"not requested (nova stack up --with {service})")
            rows.append(row)
    rows.append(_clickhouse_row(settings))
    return rows


def stack_processes(*, settings: Settings) -> list[psutil.Process]:
    """Live java/postgres/clickhouse processes whose arguments point into the state dir."""
    return _proc.stack_processes(settings.state_dir)


def _clickhouse_row(settings: Settings) -> ServiceStatus:
    url = settings.clickhouse.url
    if url.startswith("chdb://"):
        path = settings.resolve(url[len("chdb://") :])
        return ServiceStatus(
            name="clickhouse",
            state="embedded",
            pid=None,
            address=f"chdb://{path}",
            data_dir=path,
            detail=f"embedded (chdb) at {path}",
            expected=False,
        )
    return ServiceStatus(
        name="clickhouse",
        state="external",
        pid=None,
        address=redact_url(url),
        data_dir=None,
        detail="configured clickhouse.url (not managed by nova stack)",
        expected=False,
    )


def service_log(*, settings: Settings, service: str) -> Path:
    """The main log file of `service` (one of SERVICES). Raises UsageError / StackError."""
    if service not in SERVICES:
        raise UsageError(f"unknown service {service!r}", hint=f"choose one of: {', '.join(SERVICES)}")
    path = _services(settings)[service].log_file
    if not path.exists():
        raise StackError(f"{service} has no log yet ({path} does not exist)", hint="start it with nova stack up")
    return path


def read_log_tail(path: Path, *, lines: int) -> list[str]:
    """The last `lines` lines of a log file."""
    return _proc.tail_lines(path, lines)


def follow_log(path: Path) -> Iterator[str]:
    """Lines appended to a log file from now on, across rotation (like tail -F); runs until interrupted."""
    return _proc.follow_lines(path)
