"""Process, port, file and package mechanics shared by the stack's services.

A stack process is recognised by its command line, never by name alone: each service has a
*signature*, an absolute path under the state dir that appears as one of its arguments (the
Kafka properties file, the PostgreSQL data dir, the clickhouse-server config). Two stacks
with different state dirs therefore never see, adopt or stop each other's processes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import psutil

from pipelines.errors import StackError

Progress = Callable[[str], None]

# Executables the stack runs; a process of one of these whose arguments point into the state
# dir belongs to the stack (used by `down` to prove nothing is left behind).
STACK_EXECUTABLES = frozenset({"java", "postgres", "pg_ctl", "initdb", "clickhouse-server", "clickhouse", "weed"})


def _arg_points_at(arg: str, path: str) -> bool:
    """`arg` is `path` itself, `--opt=path`, or `-Dprop=path` (exact, so /a/.nova ≠ /a/.nova2)."""
    return arg == path or arg.endswith("=" + path)


def _arg_under(arg: str, directory: str) -> bool:
    value = arg.split("=", 1)[1] if arg.startswith("-") and "=" in arg else arg
    return value == directory or value.startswith(directory + os.sep)


def _alive(proc: psutil.Process) -> bool:
    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return list(proc.cmdline())
    except psutil.Error:
        return []


def process_matches(pid: int, signature: Path) -> bool:
    """Whether `pid` is alive and is the service whose command line carries `signature`."""
    try:
        proc = psutil.Process(pid)
    except psutil.Error:
        return False
    return _alive(proc) and any(_arg_points_at(a, str(signature)) for a in _cmdline(proc))


def find_processes(signature: Path) -> list[psutil.Process]:
    """Live processes whose command line carries `signature` (oldest first)."""
    me = os.getpid()
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "create_time"]):
        cmdline = proc.info.get("cmdline") or []
        if proc.pid != me and any(_arg_points_at(a, str(signature)) for a in cmdline) and _alive(proc):
            found.append(proc)
    return sorted(found, key=lambda p: p.info.get("create_time") or 0.0)


def stack_processes(state_dir: Path) -> list[psutil.Process]:
    """Live java/postgres/clickhouse processes with an argument under `state_dir`."""
    me = os.getpid()
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if proc.pid == me or not cmdline or os.path.basename(cmdline[0]) not in STACK_EXECUTABLES:
            continue
        if any(_arg_under(a, str(state_dir)) for a in cmdline[1:]) and _alive(proc):
            found.append(proc)
    return found


def read_pid(path: Path) -> int | None:
    """The pid in the first line of a pid file, or None when absent or unreadable."""
    try:
        first = path.read_text().splitlines()[0].strip()
        return int(first)
    except (OSError, IndexError, ValueError):
        return None


def write_pid(path: Path, pid: int) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{pid}\n")
    tmp.replace(path)


def stop_process(pid: int, *, sig: int = signal.SIGTERM, timeout_s: float) -> str:
    """Send `sig`, wait up to `timeout_s`, then SIGKILL; also kill children left behind.

    Returns how it ended ("SIGTERM", "SIGKILL", …). Zombies count as gone: the stack's
    services are not our children, so reaping them is their parent's business.
    """
    try:
        proc = psutil.Process(pid)
        children = proc.children(recursive=True)
    except psutil.Error:
        return "already gone"
    how = signal.Signals(sig).name
    with contextlib.suppress(psutil.Error):
        proc.send_signal(sig)
    if not _wait_gone([proc], timeout_s):
        how = "SIGKILL"
        with contextlib.suppress(psutil.Error):
            proc.kill()
        _wait_gone([proc], 10.0)
    # Children (PostgreSQL backends) exit on their own once the parent is gone; give them a moment.
    if not _wait_gone(children, 5.0):
        for child in children:
            with contextlib.suppress(psutil.Error):
                child.kill()
        _wait_gone(children, 5.0)
    return how


def _wait_gone(procs: Sequence[psutil.Process], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        if not any(_alive(p) for p in procs):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something already listens on host:port (a bind test, so 0.0.0.0 listeners count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.errno in (errno.EADDRINUSE, errno.EACCES)
        return False


def port_accepts(port: int, host: str = "127.0.0.1", timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def port_owner(port: int) -> str:
    """'pid 123 (java …)' for the listener on `port`, or '' when unknown."""
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return ""
    for conn in conns:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
            try:
                cmd = " ".join(psutil.Process(conn.pid).cmdline())
            except psutil.Error:
                cmd = "?"
            return f"pid {conn.pid} ({cmd[:80]}{'…' if len(cmd) > 80 else ''})"
    return ""


def spawn_detached(
    cmd: Sequence[str], *, log: Path, cwd: Path, env: dict[str, str] | None = None, user: str | None = None
) -> int:
    """Start `cmd` in a new session, detached from us, stdout+stderr appended to `log`; return its pid.

    A throwaway `sh` starts the command in the background, prints its pid and exits, so the
    service is not our child: it outlives this process and we leave no Popen or zombie behind.
    """
    with open(log, "ab") as log_fh:
        proc = subprocess.run(
            ["/bin/sh", "-c", '"$@" </dev/null >&2 &\necho $!', "sh", *cmd],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log_fh,
            cwd=cwd,
            env=env,
            user=user,
            start_new_session=True,
            check=False,
        )
    try:
        return int(proc.stdout.decode().strip())
    except ValueError:
        raise StackError(f"could not start {cmd[0]}", hint=f"see {log}") from None


def write_if_changed(path: Path, text: str) -> None:
    """Atomically replace `path` with `text`, leaving it untouched (and its mtime) when equal."""
    if not path.exists() or path.read_text() != text:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)


def tail_lines(path: Path, lines: int) -> list[str]:
    """The last `lines` lines of a text file, read from the end (logs can be large)."""
    if lines <= 0 or not path.exists():
        return []
    block = 64 * 1024
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        end = fh.tell()
        data = b""
        pos = end
        while pos > 0 and data.count(b"\n") <= lines:
            step = min(block, pos)
            pos -= step
            fh.seek(pos)
            data = fh.read(step) + data
    text = data.decode("utf-8", errors="replace").splitlines()
    return text[-lines:]


def follow_lines(path: Path, *, poll_s: float = 0.5) -> Iterator[str]:
    """Yield lines appended to `path` from now on, surviving rotation and truncation (tail -F)."""
    fh = None
    inode = None
    buffer = ""
    try:
        while True:
            if fh is None and path.exists():
                fh = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115 (closed in finally)
                inode = os.fstat(fh.fileno()).st_ino
                fh.seek(0, os.SEEK_END)
            if fh is not None:
                chunk = fh.read()
                if chunk:
                    buffer += chunk
                    *complete, buffer = buffer.split("\n")
                    yield from complete
                    continue
                try:
                    st = os.stat(path)
                    rotated = st.st_ino != inode or st.st_size < fh.tell()
                except FileNotFoundError:
                    rotated = True
                if rotated:
                    fh.close()
                    fh = None
                    if path.exists():
                        # The new file is read from its start: everything in it is new.
                        fh = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115
                        inode = os.fstat(fh.fileno()).st_ino
                    continue
            time.sleep(poll_s)
    finally:
        if fh is not None:
            fh.close()


@contextlib.contextmanager
def file_lock(path: Path, *, on_wait: str | None = None, progress: Progress | None = None) -> Iterator[None]:
    """Hold an exclusive flock on `path` (two `nova stack up` at once would race on ports and pid files)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if progress and on_wait:
                progress(on_wait)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_apt_packages(
    service: str, binary_present: bool, packages: Sequence[str], *, log: Path, progress: Progress | None
) -> None:
    """Install Debian packages when `binary_present` is false (apt-get update first only if needed)."""
    if binary_present:
        return
    names = " ".join(packages)
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise StackError(
            f"{service}: not installed",
            hint=f"install it (Debian: sudo apt-get install -y {names}) and re-run nova stack up",
        )
    if progress:
        progress(f"installing {names} with apt-get (first time only)…")
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    with open(log, "ab") as fh:
        if subprocess.run(install, stdout=fh, stderr=subprocess.STDOUT, env=env, check=False).returncode == 0:
            return
        subprocess.run(["apt-get", "update"], stdout=fh, stderr=subprocess.STDOUT, env=env, check=False)
        if subprocess.run(install, stdout=fh, stderr=subprocess.STDOUT, env=env, check=False).returncode == 0:
            return
    raise StackError(f"{service}: apt-get install {names} failed", hint=f"see {log}")


def fetch_maven_jars(
    service: str,
    *,
    pom: Path,
    version_property: str,
    version: str,
    lib_dir: Path,
    marker_jar: str,
    artifact: str,
    setting: str,
    progress: Progress,
) -> None:
    """Copy the runtime dependencies of `pom` (at `-D<version_property>=version`) into `lib_dir`, once.

    Kafka and ZooKeeper ship as jars on Maven Central; `lib_dir` is shared between state dirs, so
    the fetch holds a lock next to it (two `nova stack up` from two checkouts), stages into a temp
    dir and renames it: a lib dir is complete (it has `marker_jar`) or absent.
    """
    if (lib_dir / marker_jar).exists():
        return
    cache = lib_dir.parent
    cache.mkdir(parents=True, exist_ok=True)
    with file_lock(cache.parent / f"{cache.name}.lock", on_wait="waiting for another Maven fetch…", progress=progress):
        if (lib_dir / marker_jar).exists():  # fetched by whoever held the lock
            return
        ensure_apt_packages(
            "maven", shutil.which("mvn") is not None, ["maven"], log=cache.parent / "apt.log", progress=progress
        )
        if not pom.exists():
            raise StackError(f"{service}: {pom} is missing", hint="run nova from a checkout of the project")
        progress(f"fetching {artifact}:{version} and its dependencies with Maven (first time only)…")
        log = cache / "maven.log"
        staging = Path(tempfile.mkdtemp(prefix="lib.", dir=cache))
        cmd = [
            "mvn",
            "-B",
            "-q",
            "-f",
            str(pom),
            f"-D{version_property}={version}",
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={staging}",
        ]
        with open(log, "wb") as fh:
            result = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=False)
        if result.returncode != 0 or not (staging / marker_jar).exists():
            shutil.rmtree(staging, ignore_errors=True)
            excerpt = "\n    ".join(line for line in tail_lines(log, 6) if line.strip())
            raise StackError(
                f"{service}: Maven could not fetch {artifact}:{version}" + (f":\n    {excerpt}" if excerpt else ""),
                hint=f"check that {setting} exists on Maven Central and that it is reachable; see {log}",
            )
        shutil.rmtree(lib_dir, ignore_errors=True)
        staging.rename(lib_dir)  # atomic: a lib dir is complete or absent
