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
    name = "clickhouse-server"
    dir_name = "clickhouse-server"
    stop_timeout_s = 30.0
    start_timeout_s = 60.0

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
        return self.dir / "clickhouse-server.out"

    @property
    def address(self) -> str:
        s = self.stack
        return f"clickhouse://default:@127.0.0.1:{s.clickhouse_tcp_port} (http :{s.clickhouse_http_port})"

    def ports(self) -> list[tuple[int, str]]:
        return [
            (self.stack.clickhouse_tcp_port, "stack.clickhouse_tcp_port"),
            (self.stack.clickhouse_http_port, "stack.clickhouse_http_port"),
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
        _proc.write_if_changed(self.dir / "users.xml", _USERS_XML)

    def _config_xml(self) -> str:
        def path(sub: str) -> str:
            return escape(str(self.dir / sub)) + "/"

        s = self.stack
        return f"""<?xml version="1.0"?>
<!-- Written by `nova stack up` from configs/nova.yaml (stack.clickhouse_*); edits are overwritten. -->
<yandex>
    <logger>
        <level>information</level>
        <log>{escape(str(self.log_file))}</log>
        <errorlog>{escape(str(self.err_log_file))}</errorlog>
        <size>100M</size>
        <count>5</count>
    </logger>
    <listen_host>127.0.0.1</listen_host>
    <tcp_port>{s.clickhouse_tcp_port}</tcp_port>
    <http_port>{s.clickhouse_http_port}</http_port>
    <!-- no interserver_http_port: a single server, and no clash with a system-wide one on 9009 -->
    <path>{path("data")}</path>
    <tmp_path>{path("tmp")}</tmp_path>
    <user_files_path>{path("user_files")}</user_files_path>
    <format_schema_path>{path("format_schemas")}</format_schema_path>
    <users_config>users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <max_connections>1024</max_connections>
    <keep_alive_timeout>3</keep_alive_timeout>
    <max_concurrent_queries>100</max_concurrent_queries>
    <uncompressed_cache_size>1073741824</uncompressed_cache_size>
    <mark_cache_size>1073741824</mark_cache_size>
    <mlock_executable>false</mlock_executable>
    <max_session_timeout>3600</max_session_timeout>
    <default_session_timeout>60</default_session_timeout>
</yandex>
"""

    def launch(self, progress: Progress) -> int:
        progress(f"starting clickhouse-server on 127.0.0.1:{self.stack.clickhouse_tcp_port}…")
        binary = _binary() or "clickhouse-server"
        pid = _proc.spawn_detached([binary, f"--config-file={self.config_file}"], log=self.stdout_file, cwd=self.dir)
        _proc.write_pid(self.pid_file, pid)
        return pid

    def check_health(self, timeout_s: float = 3.0) -> str | None:
        port = self.stack.clickhouse_tcp_port
        if not _proc.port_accepts(port):
            return f"nothing accepts connections on 127.0.0.1:{port}"
        from pipelines.clickhouse import server_problem

        return server_problem("127.0.0.1", port, timeout_s=timeout_s)


_USERS_XML = """<?xml version="1.0"?>
<!-- Written by `nova stack up`: user `default`, empty password, from loopback only. -->
<yandex>
    <profiles>
        <default>
            <max_memory_usage>10000000000</max_memory_usage>
            <use_uncompressed_cache>0</use_uncompressed_cache>
            <load_balancing>random</load_balancing>
        </default>
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
