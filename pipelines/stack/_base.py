"""What every managed service shares: its status row, pid bookkeeping, start and stop."""

from __future__ import annotations

import dataclasses
import os
import pwd
import re
import shutil
import signal
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

from pipelines.config import Settings
from pipelines.errors import StackError
from pipelines.stack import _proc
from pipelines.stack._proc import Progress

State = Literal["healthy", "unhealthy", "stopped", "embedded", "external"]


@dataclasses.dataclass(frozen=True)
class ServiceStatus:
    """One row of `nova stack status`: what runs, where, and whether it answers."""

    name: str
    state: State
    pid: int | None
    address: str
    data_dir: Path | None
    log_file: Path | None = None
    detail: str = ""
    # The stack should have it running: `status` exits 1 when an expected service is not healthy.
    expected: bool = True

    @property
    def ok(self) -> bool:
        return not self.expected or self.state == "healthy"

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for key in ("data_dir", "log_file"):
            data[key] = str(data[key]) if data[key] is not None else None
        return data


class Service:
    """A process the stack starts by pid and stops by pid, with its files under `state_dir/<dir_name>`."""

    name: ClassVar[str]
    dir_name: ClassVar[str]
    stop_signal: ClassVar[int] = signal.SIGTERM
    stop_timeout_s: ClassVar[float] = 30.0
    start_timeout_s: ClassVar[float] = 90.0

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stack = settings.stack
        self.state_dir = settings.state_dir
        self.dir = self.state_dir / self.dir_name

    @property
    def pid_file(self) -> Path:
        return self.dir / f"{self.name}.pid"

    @property
    def signature(self) -> Path:
        """An absolute path that appears verbatim among the service's arguments."""
        raise NotImplementedError

    @property
    def data_dir(self) -> Path:
        raise NotImplementedError

    @property
    def log_file(self) -> Path:
        """The service's main log (what `nova stack logs NAME` shows)."""
        raise NotImplementedError

    @property
    def address(self) -> str:
        raise NotImplementedError

    def ports(self) -> list[tuple[int, str]]:
        """(port, setting) pairs the service listens on, for conflict messages."""
        raise NotImplementedError

    def prepare(self, progress: Progress) -> None:
        """Install, fetch, initialise: everything before the first start, idempotently."""

    def launch(self, progress: Progress) -> int:
        """Start the service detached and return its pid (without waiting for health)."""
        raise NotImplementedError

    def check_health(self, timeout_s: float = 3.0) -> str | None:
        """None when the service answers its client protocol, else why not."""
        raise NotImplementedError

    def probe_started(self) -> str | None:
        """Like check_health, but before `after_start` ran (default: the same check)."""
        return self.check_health()

    def after_start(self, progress: Progress) -> None:
        """One-off setup that needs the running service (roles, databases), idempotently."""

    def running_pid(self) -> int | None:
        """The service's live pid: from the pid file, else adopted from a matching process."""
        pid = _proc.read_pid(self.pid_file)
        if pid is not None and _proc.process_matches(pid, self.signature):
            return pid
        procs = _proc.find_processes(self.signature)
        return procs[0].pid if procs else None

    def check_ports_free(self) -> None:
        for port, setting in self.ports():
            if _proc.port_in_use(port):
                owner = _proc.port_owner(port)
                env = "NOVA_" + setting.upper().replace(".", "__")
                raise StackError(
                    f"{self.name}: port {port} on 127.0.0.1 is already in use"
                    + (f" by {owner}" if owner else "")
                    + f", so {self.name} cannot listen on it",
                    hint=f"stop that process, or choose another port with {setting} in "
                    f"{self.settings.source} (or {env}=PORT)",
                )

    def poll_started(self, pid: int, *, deadline: float) -> bool:
        """True once the process answers `probe_started`; raises if it died or `deadline` passed."""
        if not _proc.process_matches(pid, self.signature):
            raise StackError(
                f"{self.name} exited during start-up (pid {pid})" + self._log_excerpt(),
                hint=f"see {self.log_file}" + self._extra_logs_hint(),
            )
        reason = self.probe_started()
        if reason is None:
            return True
        if time.monotonic() > deadline:
            raise StackError(
                f"{self.name} (pid {pid}) did not become healthy within {self.start_timeout_s:.0f}s: {reason}",
                hint=f"see {self.log_file}{self._extra_logs_hint()}; then nova stack down && nova stack up",
            )
        return False

    def _extra_logs_hint(self) -> str:
        return ""

    def _log_excerpt(self, lines: int = 8) -> str:
        tail = [line for line in _proc.tail_lines(self.log_file, lines) if line.strip()]
        return ("; last log lines:\n    " + "\n    ".join(tail)) if tail else ""

    def stop(self) -> str:
        """Stop the service by pid; returns what happened, for the `down` report."""
        pid = self.running_pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return "was not running"
        started = time.monotonic()
        how = _proc.stop_process(pid, sig=self.stop_signal, timeout_s=self.stop_timeout_s)
        # A second process with our signature (an orphan whose pid file was lost) goes too.
        for proc in _proc.find_processes(self.signature):
            _proc.stop_process(proc.pid, sig=self.stop_signal, timeout_s=self.stop_timeout_s)
        self.pid_file.unlink(missing_ok=True)
        return f"stopped pid {pid} ({how}, {time.monotonic() - started:.1f}s)"

    def status(self, *, expected: bool = True) -> ServiceStatus:
        pid = self.running_pid()
        if pid is None:
            return self.row("stopped", None, expected=expected)
        reason = self.check_health()
        if reason:
            return self.row("unhealthy", pid, detail=reason, expected=expected)
        return self.row("healthy", pid, expected=expected)

    def row(self, state: State, pid: int | None, *, detail: str = "", expected: bool = True) -> ServiceStatus:
        return ServiceStatus(
            name=self.name,
            state=state,
            pid=pid,
            address=self.address,
            data_dir=self.data_dir,
            log_file=self.log_file,
            detail=detail,
            expected=expected,
        )


_JVM_VERSION = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.\-]*$")
_JVM_HEAP = re.compile(r"^[0-9]+[kKmMgG]?$")


class JvmService(Service):
    """A Java service run from jars Maven fetched (Kafka, ZooKeeper): the files and checks they share.

    Its settings are `stack.<name>_version` and `stack.<name>_heap`; the JVM writes what it says
    before its own logging starts (or instead of it, when it dies early) to `<name>.out`.
    """

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    @property
    def stdout_file(self) -> Path:
        return self.dir / f"{self.name}.out"

    def _extra_logs_hint(self) -> str:
        return f" and {self.stdout_file}"

    def _prepare_jvm(
        self, *, version: str, version_example: str, heap: str, heap_example: str, progress: Progress
    ) -> None:
        """Refuse a version or heap size that would reach Maven or the JVM malformed; install Java if missing."""
        if not _JVM_VERSION.match(version):
            raise StackError(
                f"{self.name}: stack.{self.name}_version {version!r} is not a version", hint=f"e.g. {version_example}"
            )
        if not _JVM_HEAP.match(heap):
            raise StackError(
                f"{self.name}: stack.{self.name}_heap {heap!r} is not a JVM size", hint=f"e.g. {heap_example}"
            )
        _proc.ensure_apt_packages(
            "java",
            shutil.which("java") is not None,
            ["openjdk-17-jre-headless"],
            log=self.dir / "apt.log",
            progress=progress,
        )


def service_user(preferred: str, service: str) -> str | None:
    """The OS user to run a service as: `preferred` when we are root (PostgreSQL refuses root), else us."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(preferred)
    except KeyError:
        raise StackError(
            f"{service}: OS user '{preferred}' does not exist and {service} must not run as root",
            hint=f"create it (useradd --system {preferred}) or reinstall the Debian package, which creates it",
        ) from None
    return preferred


def chown(path: Path, user: str | None) -> None:
    """Give `path` to `user` (no-op when the service runs as ourselves)."""
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def check_reachable(path: Path, user: str | None, service: str) -> None:
    """Fail clearly when `user` cannot traverse the directories above `path` (e.g. a 0700 /root or tmp dir)."""
    if user is None:
        return
    entry = pwd.getpwnam(user)
    for parent in reversed(path.parents):
        try:
            st = parent.stat()
        except FileNotFoundError:
            return
        if st.st_uid == entry.pw_uid:
            continue
        if st.st_gid == entry.pw_gid and st.st_mode & 0o010:
            continue
        if not st.st_mode & 0o001:
            raise StackError(
                f"{service}: it runs as OS user '{user}', who cannot enter {parent} (mode {st.st_mode & 0o777:o})",
                hint=f"chmod o+x {parent}, or set stack.state_dir to a directory below a world-searchable path",
            )
