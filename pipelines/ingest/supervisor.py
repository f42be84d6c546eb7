"""`--workers N`: N worker processes in one consumer group, restarted if one dies.

Children report `dataclasses.asdict(WorkerStatus)` snapshots over a pipe each (channel.py:
safe against kill -9 mid-message, unlike a shared multiprocessing.Queue); a child that fails
with a NovaError sends `NovaError.to_dict()` and exits with FATAL_EXIT, and the supervisor raises
the same error (`NovaError.from_dict`: same kind, message, hint and exit code).
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from types import FrameType
from typing import TYPE_CHECKING, Any

from pipelines.errors import NovaError
from pipelines.ingest.channel import StatusReceiver, StatusSender
from pipelines.ingest.models import WorkerStatus

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess

    from pipelines.config import Settings
RESTART_DELAY_S = 1.0
FATAL_EXIT = 3
CRASH_LOOP = (5, 60.0)  # this many crashes (exit code > 0) within this many seconds: give up
CAUGHT_UP_STABLE_S = 1.0  # --until-caught-up: every worker caught up, every partition owned, this long
STOP_GRACE_S = 9.0


def install_stop_handlers(stop_event: threading.Event) -> None:
    """SIGTERM/SIGINT: finish the current batch, commit, leave the group."""

    def handler(signum: int, frame: FrameType | None) -> None:
        stop_event.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _child(settings_json: str, source: str, root: str, index: int, until_caught_up: bool, conn: Connection) -> None:
    from pathlib import Path

    from pipelines.config import Settings
    from pipelines.ingest.worker import run_worker  # only children run workers: numpy, pyarrow load here

    settings = Settings.model_validate_json(settings_json)
    settings.source, settings.root = Path(source), Path(root)
    stop = threading.Event()
    install_stop_handlers(stop)
    sender = StatusSender(conn, index)
    last = 0.0

    def report(status: WorkerStatus) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= 0.5 or status.state in ("stopped", "waiting"):
            last = now
            sender.post(asdict(status))

    _stop_with_parent(stop)
    try:
        status = run_worker(
            settings=settings,
            until_caught_up=until_caught_up,
            index=index,
            on_status=report,
            stop_event=stop,
            coordinated=True,
            own_process=True,
        )
    except NovaError as exc:  # an expected failure (e.g. table missing): no point restarting
        sender.close({"fatal": exc.to_dict()})
        raise SystemExit(FATAL_EXIT) from None
    sender.close(asdict(status))


def _stop_with_parent(stop: threading.Event) -> None:
    """A worker whose supervisor died (kill -9) stops too, gracefully, instead of running orphaned."""
    import os

    parent = os.getppid()

    def watch() -> None:
        while not stop.wait(0.5):
            if os.getppid() != parent:
                stop.set()

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def supervise(
    *,
    settings: Settings,
    workers: int,
    until_caught_up: bool,
    on_status: Callable[[list[WorkerStatus]], None] | None,
    stop_event: threading.Event,
) -> list[WorkerStatus]:
    ctx = mp.get_context("spawn")
    inbox = StatusReceiver()
    payload = settings.model_dump_json(by_alias=True)
    procs: dict[int, BaseProcess] = {}
    latest: dict[int, WorkerStatus] = {}
    retired: list[WorkerStatus] = []  # last words of crashed incarnations, so totals stay right
    restart_at: dict[int, float] = {}
    partitions = _partition_count(settings) if until_caught_up else 0
    caught_up_since: float | None = None
    crashes: list[float] = []

    def start(i: int) -> None:
        reader, writer = ctx.Pipe(duplex=False)
        proc = ctx.Process(
            target=_child,
            name=f"nova-ingest-{i}",
            daemon=False,
            args=(payload, str(settings.source), str(settings.root), i, until_caught_up, writer),
        )
        proc.start()
        writer.close()  # the child holds the only write end: its death is EOF here
        inbox.add(reader)
        procs[i] = proc

    for i in range(workers):
        start(i)
    try:
        while True:
            fatal = _drain(inbox, latest)
            if fatal:
                raise NovaError.from_dict(fatal)
            if on_status:
                on_status([*latest.values()])
            if stop_event.is_set():
                break
            for i, proc in list(procs.items()):
                if proc.is_alive():
                    continue
                # Died (kill -9, crash) or stopped on its own without being asked: restart it.
                if i not in restart_at:
                    if proc.exitcode is not None and proc.exitcode > 0:
                        now = time.monotonic()
                        crashes[:] = [t for t in crashes if now - t < CRASH_LOOP[1]] + [now]
                        if len(crashes) >= CRASH_LOOP[0]:
                            raise NovaError(
                                f"ingest workers crashed {len(crashes)} times within {CRASH_LOOP[1]:.0f}s; giving up",
                                hint="see the tracebacks above",
                            )
                    restart_at[i] = time.monotonic() + RESTART_DELAY_S
                    if i in latest:
                        retired.append(latest.pop(i))
                elif time.monotonic() >= restart_at[i]:
                    del restart_at[i]
                    start(i)
            if until_caught_up:
                if _all_caught_up(procs, latest, partitions):
                    caught_up_since = caught_up_since or time.monotonic()
                    if time.monotonic() - caught_up_since >= CAUGHT_UP_STABLE_S:
                        break
                else:
                    caught_up_since = None
            time.sleep(0.2)
    finally:
        for proc in procs.values():
            if proc.is_alive():
                proc.terminate()  # SIGTERM: flush, commit, leave the group
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in procs.values():
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join(1)
        _drain(inbox, latest, finish=True)
    return [*retired, *latest.values()]


def _partition_count(settings: Settings) -> int:
    from pipelines import kafka
    from pipelines.errors import KafkaError

    topic = settings.pipeline.topic
    found = kafka.describe_topics(settings, [topic])
    if topic not in found:
        raise KafkaError(f"topic '{topic}' does not exist", hint="run `nova provision --yes`")
    return found[topic].partitions


def _all_caught_up(procs: dict[int, BaseProcess], latest: dict[int, WorkerStatus], partitions: int) -> bool:
    """Every worker alive and caught up on its partitions, and together they own every partition.

    The second half matters: during a rebalance a partition can be owned by nobody for a moment.
    """
    owned: set[int] = set()
    for i, proc in procs.items():
        status = latest.get(i)
        if not proc.is_alive() or status is None or status.state != "running" or not status.caught_up:
            return False
        owned.update(status.assigned)
    return owned >= set(range(partitions))


def _drain(inbox: StatusReceiver, latest: dict[int, WorkerStatus], *, finish: bool = False) -> dict[str, Any] | None:
    """Apply the statuses received; `finish`: the workers have exited, collect their last words too."""
    fatal = None
    for index, data in inbox.finish(2.0) if finish else inbox.drain():
        if "fatal" in data:
            fatal = data["fatal"]
        else:
            latest[index] = WorkerStatus.from_dict(data)
    return fatal
