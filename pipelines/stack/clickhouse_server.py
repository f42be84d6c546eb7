"""Debian's clickhouse-server (18.16), started only on request (`nova stack up --with clickhouse-server`).

Layout under the state dir (`clickhouse-server/`): `config.xml` and `users.xml` (rewritten at
each start from the settings), `data/` (its `path`), `tmp/`, `user_files/`, `format_schemas/`,
`logs/clickhouse-server.log` (+ `.err.log`), `clickhouse-server.out`, `clickhouse-server.pid`.

It listens on 127.0.0.1 only, on the native and HTTP ports from the settings, and opens no
interserver port, so it never collides with a system-wide clickhouse-server. 18.16 runs as
root without complaint, so it runs as the invoking user.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from xml.sax.saxutils import escape

from pipelines.stack import _proc
from pipelines.stack._base import Service
from pipelines.stack._proc import Progress

_BINARIES = ("clickhouse-server", "/usr/sbin/clickhouse-server", "/usr/bin/clickhouse-server")


def _binary() -> str | None:
    for candidate in _BINARIES:
        found = shutil.which(candidate)
        if found:
            return found
    return None


class ClickHouseServer(Service):
    """The single server; `clickhouse_cluster.ClusterHost` reuses it with its own ports and sections.

    What differs between the two is in the class attributes and the `_*_xml` hooks below, so the
    layout, the logs, the launch and the health probe stay one piece of code.
    """

    name = "clickhouse-server"
    dir_name = "clickhouse-server"
    stop_timeout_s = 30.0
    start_timeout_s = 60.0
    config_comment = "from configs/nova.yaml (stack.clickhouse_*)"
    log_count = 5
    max_connections = 1024
    cache_size = 1073741824  # uncompressed and mark cache, bytes
    users_comment = ": user `default`, empty password, from loopback only."
    # (setting, value, comment above it or "") of the `default` profile in users.xml.
    profile: tuple[tuple[str, str | int, str], ...] = (
        ("max_memory_usage", 10000000000, ""),
        ("use_uncompressed_cache", 0, ""),
        ("load_balancing", "random", ""),
    )

    @property
    def tcp_port(self) -> int:
        return self.stack.clickhouse_tcp_port

    @property
    def http_port(self) -> int:
        return self.stack.clickhouse_http_port

    @property
    def config_file(self) -> Path:
        return self.dir / "config.xml"

    @property
    def signature(self) -> Path:
        return self.config_file  # started as `clickhouse-server --config-file=CONFIG`

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    @property
    def log_file(self) -> Path:
        return self.dir / "logs" / "clickhouse-server.log"

    @property
    def err_log_file(self) -> Path:
        return self.dir / "logs" / "clickhouse-server.err.log"

    @property
    def stdout_file(self) -> Path:
        return self.dir / f"{self.name}.out"

    @property
    def address(self) -> str:
        return f"clickhouse://default:@127.0.0.1:{self.tcp_port}?http_port={self.http_port}"

    def ports(self) -> list[tuple[int, str]]:
        return [
            (self.tcp_port, "stack.clickhouse_tcp_port"),
            (self.http_port, "stack.clickhouse_http_port"),
        ]

    def _extra_logs_hint(self) -> str:
        return f", {self.err_log_file} and {self.stdout_file}"

    def _log_excerpt(self, lines: int = 8) -> str:
        for path in (self.err_log_file, self.stdout_file):
            tail = [line for line in _proc.tail_lines(path, lines) if line.strip()]
            if tail:
                return f"; last lines of {path.name}:\n    " + "\n    ".join(tail)
        return super()._log_excerpt(lines)

    def prepare(self, progress: Progress) -> None:
        _proc.ensure_apt_packages(
            self.name,
            _binary() is not None,
            ["clickhouse-server", "clickhouse-client"],
            log=self.state_dir / "apt.log",
            progress=progress,
        )
        for sub in ("data", "tmp", "user_files", "format_schemas", "logs"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        _proc.write_if_changed(self.config_file, self._config_xml())
        _proc.write_if_changed(self.dir / "users.xml", users_xml(self.users_comment, self.profile))

    def _interserver_xml(self) -> str:
        """The lines after <http_port>: a single server opens no interserver port."""
        return "    <!-- no interserver_http_port: a single server, and no clash with a system-wide one on 9009 -->\n"

    def _tail_xml(self) -> str:
        """The last lines inside <yandex>, after the common settings."""
        return (
            "    <max_session_timeout>3600</max_session_timeout>\n"
            "    <default_session_timeout>60</default_session_timeout>\n"
        )

    def _config_xml(self) -> str:
        def path(sub: str) -> str:
            return escape(str(self.dir / sub)) + "/"

        return f"""<?xml version="1.0"?>
<!-- Written by `nova stack up` {self.config_comment}; edits are overwritten. -->
<yandex>
    <logger>
        <level>information</level>
        <log>{escape(str(self.log_file))}</log>
        <errorlog>{escape(str(self.err_log_file))}</errorlog>
        <size>100M</size>
        <count>{self.log_count}</count>
    </logger>
    <listen_host>127.0.0.1</listen_host>
    <tcp_port>{self.tcp_port}</tcp_port>
    <http_port>{self.http_port}</http_port>
{self._interserver_xml()}    <path>{path("data")}</path>
    <tmp_path>{path("tmp")}</tmp_path>
    <user_files_path>{path("user_files")}</user_files_path>
    <format_schema_path>{path("format_schemas")}</format_schema_path>
    <users_config>users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <max_connections>{self.max_connections}</max_connections>
    <keep_alive_timeout>3</keep_alive_timeout>
    <max_concurrent_queries>100</max_concurrent_queries>
    <uncompressed_cache_size>{self.cache_size}</uncompressed_cache_size>
    <mark_cache_size>{self.cache_size}</mark_cache_size>
    <mlock_executable>false</mlock_executable>
{self._tail_xml()}</yandex>
"""

    def launch(self, progress: Progress) -> int:
        progress(f"starting {self.name} on 127.0.0.1:{self.tcp_port}…")
        binary = _binary() or "clickhouse-server"
        pid = _proc.spawn_detached([binary, f"--config-file={self.config_file}"], log=self.stdout_file, cwd=self.dir)
        _proc.write_pid(self.pid_file, pid)
        return pid

    def check_health(self, timeout_s: float = 3.0) -> str | None:
        port = self.tcp_port
        if not _proc.port_accepts(port):
            return f"nothing accepts connections on 127.0.0.1:{port}"
        from pipelines.clickhouse import server_problem

        return server_problem("127.0.0.1", port, timeout_s=timeout_s)


def users_xml(comment: str, profile: tuple[tuple[str, str | int, str], ...]) -> str:
    """users.xml: user `default` from loopback, no password, with `profile` as its `default` profile.

    Settings go in the profile rather than in each client's query settings when clickhouse-driver
    would send them in a form 18.16 misreads (the cluster's timeouts).
    """
    settings = "".join(
        (f"            <!-- {note} -->\n" if note else "") + f"            <{key}>{value}</{key}>\n"
        for key, value, note in profile
    )
    return f"""<?xml version="1.0"?>
<!-- Written by `nova stack up`{comment} -->
<yandex>
    <profiles>
        <default>
{settings}        </default>
        <readonly>
            <readonly>1</readonly>
        </readonly>
    </profiles>
    <users>
        <default>
            <password></password>
            <networks>
                <ip>::1</ip>
                <ip>127.0.0.1</ip>
            </networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
    </users>
    <quotas>
        <default>
            <interval>
                <duration>3600</duration>
                <queries>0</queries>
                <errors>0</errors>
                <result_rows>0</result_rows>
                <read_rows>0</read_rows>
                <execution_time>0</execution_time>
            </interval>
        </default>
    </quotas>
</yandex>
"""
