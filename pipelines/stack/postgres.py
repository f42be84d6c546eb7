"""PostgreSQL, the legacy warehouse: Debian's server binaries, a cluster of the stack's own.

Layout under the state dir (`postgres/`): `data/` (the cluster; `nova.conf` in it holds the
listen address, port and socket dir, rewritten at each start), `run/` (the unix socket),
`postgres.log`. The pid is the postmaster's, from `data/postmaster.pid`.

As root, the cluster belongs to and runs as the OS user `postgres` (PostgreSQL refuses to
run as root). Role `nova` (superuser) and database `legacy` are created on first start.
"""

from __future__ import annotations

import glob
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

from pipelines.errors import StackError
from pipelines.stack import _proc
from pipelines.stack._base import Service, check_reachable, chown, service_user
from pipelines.stack._proc import Progress

ROLE = "nova"
DATABASE = "legacy"
_SUN_PATH_MAX = 107  # sockaddr_un.sun_path, minus the terminating NUL


def _bin_dir(preferred_major: str | None = None) -> Path | None:
    """The newest installed /usr/lib/postgresql/N/bin, or N = the major the data dir was made with."""
    found = {Path(p).parent.parent.name: Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")}
    if preferred_major is not None:
        return found.get(preferred_major)
    if not found:
        return None
    return found[max(found, key=lambda v: [int(x) for x in re.findall(r"\d+", v)] or [0])]


class Postgres(Service):
    name = "postgres"
    dir_name = "postgres"
    # SIGTERM is PostgreSQL's "smart" shutdown, which waits for every client to disconnect;
    # SIGINT is "fast": roll back open transactions, checkpoint, exit. Data is kept either way.
    stop_signal = signal.SIGINT
    stop_timeout_s = 30.0
    start_timeout_s = 60.0

    @property
    def signature(self) -> Path:
        return self.data_dir  # the postmaster runs as `postgres -D DATA`

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "postmaster.pid"

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.dir / "run"

    @property
    def log_file(self) -> Path:
        return self.dir / "postgres.log"

    @property
    def address(self) -> str:
        return f"postgresql://{ROLE}@127.0.0.1:{self.stack.postgres_port}/{DATABASE}"

    def ports(self) -> list[tuple[int, str]]:
        return [(self.stack.postgres_port, "stack.postgres_port")]

    def _conninfo(self, user: str, dbname: str) -> str:
        return f"host=127.0.0.1 port={self.stack.postgres_port} user={user} dbname={dbname}"

    def _bin(self) -> Path:
        version_file = self.data_dir / "PG_VERSION"
        major = version_file.read_text().strip() if version_file.exists() else None
        found = _bin_dir(major)
        if found is None:
            raise StackError(
                f"postgres: the cluster in {self.data_dir} was made by PostgreSQL {major}, which is not installed",
                hint=f"apt-get install -y postgresql-{major}, or move {self.data_dir} away to start afresh",
            )
        return found

    def prepare(self, progress: Progress) -> None:
        _proc.ensure_apt_packages(
            "postgres", _bin_dir() is not None, ["postgresql"], log=self.state_dir / "apt.log", progress=progress
        )
        user = service_user("postgres", self.name)
        socket_path = self.socket_dir / f".s.PGSQL.{self.stack.postgres_port}"
        if len(str(socket_path)) > _SUN_PATH_MAX:
            raise StackError(
                f"postgres: the socket path {socket_path} is longer than the {_SUN_PATH_MAX} bytes unix sockets allow",
                hint="set stack.state_dir to a shorter path",
            )
        self.dir.mkdir(parents=True, exist_ok=True)
        chown(self.dir, user)
        check_reachable(self.dir, user, self.name)
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb(user, progress)
        self.socket_dir.mkdir(exist_ok=True)
        chown(self.socket_dir, user)
        for written in self._write_config():
            chown(written, user)

    def _initdb(self, user: str | None, progress: Progress) -> None:
        progress("creating the PostgreSQL cluster (first time only)…")
        # A data dir without PG_VERSION is what an interrupted initdb leaves: nothing to keep.
        shutil.rmtree(self.data_dir, ignore_errors=True)
        log = self.dir / "initdb.log"
        cmd = [
            str(self._bin() / "initdb"),
            "-D",
            str(self.data_dir),
            "--username=postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
        ]
        with open(log, "wb") as fh:
            result = subprocess.run(
                cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.dir, user=user, check=False
            )
        if result.returncode != 0:
            raise StackError(f"postgres: initdb into {self.data_dir} failed" + self._excerpt(log), hint=f"see {log}")

    def _excerpt(self, log: Path) -> str:
        tail = [line for line in _proc.tail_lines(log, 6) if line.strip()]
        return (":\n    " + "\n    ".join(tail)) if tail else ""

    def _write_config(self) -> list[Path]:
        conf = self.data_dir / "postgresql.conf"
        include = "include_if_exists = 'nova.conf'"
        text = conf.read_text()
        if include not in text:
            conf.write_text(text + f"\n# Added by `nova stack up`: listen address, port and socket dir.\n{include}\n")
        (self.data_dir / "nova.conf").write_text(
            "# Written by `nova stack up` from configs/nova.yaml (stack.postgres_port); edits are overwritten.\n"
            "listen_addresses = '127.0.0.1'\n"
            f"port = {self.stack.postgres_port}\n"
            f"unix_socket_directories = '{self.socket_dir}'\n"
            "log_line_prefix = '%m [%p] %q%u@%d '\n"
        )
        (self.data_dir / "pg_hba.conf").write_text(
            "# Written by `nova stack up`: a dev cluster on loopback only, trust auth.\n"
            "local all all trust\n"
            "host  all all 127.0.0.1/32 trust\n"
            "host  all all ::1/128 trust\n"
        )
        return [conf, self.data_dir / "nova.conf", self.data_dir / "pg_hba.conf"]

    def launch(self, progress: Progress) -> int:
        progress(f"starting PostgreSQL on 127.0.0.1:{self.stack.postgres_port}…")
        user = service_user("postgres", self.name)
        log = self.dir / "pg_ctl.log"
        cmd = [str(self._bin() / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_file), "-W", "start"]
        with open(log, "wb") as fh:
            result = subprocess.run(
                cmd,
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.dir,
                user=user,
                start_new_session=True,
                check=False,
            )
        if result.returncode != 0:
            raise StackError(
                "postgres: pg_ctl start failed" + self._excerpt(log), hint=f"see {log} and {self.log_file}"
            )
        # pg_ctl -W returns once the postmaster is forked; its pid file appears a moment later.
        for _ in range(100):
            pid = self.running_pid()
            if pid is not None:
                return pid
            time.sleep(0.05)
        raise StackError("postgres: the server did not start" + self._log_excerpt(), hint=f"see {self.log_file}")

    def check_health(self, timeout_s: float = 3.0) -> str | None:
        import psycopg

        try:
            with psycopg.connect(self._conninfo(ROLE, DATABASE), connect_timeout=max(1, int(timeout_s))) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error as exc:
            return f"cannot connect to {self.address}: {_first_line(exc)}"
        return None

    def probe_started(self) -> str | None:
        import psycopg

        try:
            with psycopg.connect(self._conninfo("postgres", "postgres"), connect_timeout=2):
                return None
        except psycopg.Error as exc:
            return f"the server does not accept connections yet: {_first_line(exc)}"

    def after_start(self, progress: Progress) -> None:
        """Create role `nova` and database `legacy` unless they exist (as the bootstrap superuser)."""
        import psycopg
        from psycopg import sql

        try:
            with psycopg.connect(self._conninfo("postgres", "postgres"), autocommit=True, connect_timeout=5) as conn:
                if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (ROLE,)).fetchone() is None:
                    conn.execute(sql.SQL("CREATE ROLE {} LOGIN SUPERUSER").format(sql.Identifier(ROLE)))
                if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone() is None:
                    progress(f"creating database {DATABASE}…")
                    conn.execute(
                        sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(DATABASE), sql.Identifier(ROLE))
                    )
        except psycopg.Error as exc:
            raise StackError(
                f"postgres: could not create role {ROLE} / database {DATABASE}: {exc}", hint=f"see {self.log_file}"
            ) from None


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
