"""A local ClickHouse cluster: three Debian clickhouse-server 18.16 processes, two shards, on ZooKeeper.

`nova stack up --with clickhouse-cluster` starts ZooKeeper (`pipelines.stack.zookeeper`) and, once
`srvr` reports `Mode: standalone`, three servers on their own ports:

    host               shard  replica  native       HTTP         interserver
    clickhouse-s1r1    01     r1       PORT+1       PORT+11      PORT+21
    clickhouse-s1r2    01     r2       PORT+2       PORT+12      PORT+22
    clickhouse-s2r1    02     r1       PORT+3       PORT+13      PORT+23

(PORT = stack.clickhouse_cluster_port, 19100 by default). Every server has the same
`<remote_servers>` (the cluster is named by clickhouse.cluster.name, else `nova`, with
`internal_replication`: the replicated tables copy rows between replicas, not the Distributed
table), its own `{shard}`/`{replica}`/`{cluster}` macros, `<zookeeper>` and `<distributed_ddl>`.

Timeouts that clickhouse-driver would send as Int64 settings live in the user profile instead:
the driver encodes them in a form 18.16 misreads (a `distributed_ddl_task_timeout` of 5 arrives
as −3, wait forever). Reads prefer the first live replica (`load_balancing = in_order`), the one
nova writes to, so a query sees what was just inserted; a subquery over a Distributed table inside a
distributed query runs once and is sent to the shards (`distributed_product_mode = global`), so the
queries written for one server give the same answers here.

Layout under the state dir: `clickhouse-cluster/<host>/` with `config.xml`, `users.xml`, `data/`,
`tmp/`, `logs/`, `<host>.out`, `<host>.pid`, like the single clickhouse-server.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import ClassVar
from xml.sax.saxutils import escape

from pipelines.config import Settings
from pipelines.errors import StackError
from pipelines.stack import _proc
from pipelines.stack._base import Service, ServiceStatus
from pipelines.stack._proc import Progress
from pipelines.stack.clickhouse_server import _binary
from pipelines.stack.zookeeper import ZooKeeper

# (shard, replica) of each host, in the order of <remote_servers>.
LAYOUT: tuple[tuple[int, int], ...] = ((1, 1), (1, 2), (2, 1))
DEFAULT_CLUSTER = "nova"
DDL_TIMEOUT_S = 60
ZOOKEEPER_WAIT_S = 60.0


def cluster_name(settings: Settings) -> str:
    """The name the local cluster's servers know it by: clickhouse.cluster.name, else `nova`."""
    cluster = settings.clickhouse.cluster
    return cluster.name if cluster is not None else DEFAULT_CLUSTER


def host_name(shard: int, replica: int) -> str:
    return f"clickhouse-s{shard}r{replica}"


def host_ports(settings: Settings, index: int) -> tuple[int, int, int]:
    """(native, HTTP, interserver) ports of host `index` (0-based, in LAYOUT order)."""
    base = settings.stack.clickhouse_cluster_port + index + 1
    return base, base + 10, base + 20


def cluster_url(settings: Settings) -> str:
    """A clickhouse.url that lists the local cluster's hosts (with clickhouse.cluster set, nova uses them all)."""
    hosts = ",".join(f"127.0.0.1:{host_ports(settings, i)[0]}" for i in range(len(LAYOUT)))
    return f"clickhouse://default:@{hosts}/{settings.clickhouse.database}"


class ClusterHost(Service):
    """One server of the local cluster; subclasses fix which."""

    index: ClassVar[int]
    dir_name = "clickhouse-cluster"
    stop_timeout_s = 30.0
    start_timeout_s = 60.0

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.dir = self.state_dir / self.dir_name / self.name
        self.shard, self.replica = LAYOUT[self.index]
        self.tcp_port, self.http_port, self.interserver_port = host_ports(settings, self.index)

    @property
    def config_file(self) -> Path:
        return self.dir / "config.xml"

    @property
    def signature(self) -> Path:
        return self.config_file

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
        return f"127.0.0.1:{self.tcp_port} (http :{self.http_port}, shard {self.shard} replica {self.replica})"

    def ports(self) -> list[tuple[int, str]]:
        return [
            (port, "stack.clickhouse_cluster_port") for port in (self.tcp_port, self.http_port, self.interserver_port)
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
        _proc.write_if_changed(self.dir / "users.xml", _USERS_XML.format(ddl_timeout=DDL_TIMEOUT_S))

    def _remote_servers(self) -> str:
        shards: dict[int, list[str]] = {}
        for i, (shard, _replica) in enumerate(LAYOUT):
            port = host_ports(self.settings, i)[0]
            shards.setdefault(shard, []).append(
                f"                <replica><host>127.0.0.1</host><port>{port}</port></replica>"
            )
        body = "".join(
            "            <shard>\n"
            "                <internal_replication>true</internal_replication>\n"
            + "\n".join(replicas)
            + "\n            </shard>\n"
            for _shard, replicas in sorted(shards.items())
        )
        name = cluster_name(self.settings)
        return f"        <{name}>\n{body}        </{name}>\n"

    def _config_xml(self) -> str:
        def path(sub: str) -> str:
            return escape(str(self.dir / sub)) + "/"

        s = self.stack
        return f"""<?xml version="1.0"?>
<!-- Written by `nova stack up` (with clickhouse-cluster) from configs/nova.yaml; edits are overwritten. -->
<yandex>
    <logger>
        <level>information</level>
        <log>{escape(str(self.log_file))}</log>
        <errorlog>{escape(str(self.err_log_file))}</errorlog>
        <size>100M</size>
        <count>3</count>
    </logger>
    <listen_host>127.0.0.1</listen_host>
    <tcp_port>{self.tcp_port}</tcp_port>
    <http_port>{self.http_port}</http_port>
    <interserver_http_port>{self.interserver_port}</interserver_http_port>
    <interserver_http_host>127.0.0.1</interserver_http_host>
    <path>{path("data")}</path>
    <tmp_path>{path("tmp")}</tmp_path>
    <user_files_path>{path("user_files")}</user_files_path>
    <format_schema_path>{path("format_schemas")}</format_schema_path>
    <users_config>users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <max_connections>512</max_connections>
    <keep_alive_timeout>3</keep_alive_timeout>
    <max_concurrent_queries>100</max_concurrent_queries>
    <uncompressed_cache_size>134217728</uncompressed_cache_size>
    <mark_cache_size>134217728</mark_cache_size>
    <mlock_executable>false</mlock_executable>
    <remote_servers>
{self._remote_servers()}    </remote_servers>
    <zookeeper>
        <node><host>127.0.0.1</host><port>{s.zookeeper_port}</port></node>
        <session_timeout_ms>10000</session_timeout_ms>
    </zookeeper>
    <macros>
        <cluster>{escape(cluster_name(self.settings))}</cluster>
        <shard>{self.shard:02d}</shard>
        <replica>r{self.replica}</replica>
    </macros>
    <distributed_ddl>
        <path>/clickhouse/task_queue/ddl</path>
    </distributed_ddl>
</yandex>
"""

    def launch(self, progress: Progress) -> int:
        _wait_for_zookeeper(self.settings, progress)
        progress(f"starting {self.name} on 127.0.0.1:{self.tcp_port}…")
        binary = _binary() or "clickhouse-server"
        pid = _proc.spawn_detached([binary, f"--config-file={self.config_file}"], log=self.stdout_file, cwd=self.dir)
        _proc.write_pid(self.pid_file, pid)
        return pid

    def probe_started(self) -> str | None:
        if not _proc.port_accepts(self.tcp_port):
            return f"nothing accepts connections on 127.0.0.1:{self.tcp_port}"
        from pipelines.clickhouse import server_problem

        return server_problem("127.0.0.1", self.tcp_port, timeout_s=3.0)

    def check_health(self, timeout_s: float = 3.0) -> str | None:
        reason = self.probe_started()
        if reason:
            return reason
        from pipelines.clickhouse.cluster import host_report

        return host_report("127.0.0.1", self.tcp_port, timeout_s=timeout_s).problem

    def status(self, *, expected: bool = True) -> ServiceStatus:
        """Healthy or not, plus the replica lag of this host's replicated tables."""
        row = super().status(expected=expected)
        if row.state != "healthy":
            return row
        from pipelines.clickhouse.cluster import host_report

        report = host_report("127.0.0.1", self.tcp_port)
        return self.row("healthy", row.pid, detail=report.summary, expected=expected)


class ClusterHostS1R1(ClusterHost):
    name = host_name(*LAYOUT[0])
    index = 0


class ClusterHostS1R2(ClusterHost):
    name = host_name(*LAYOUT[1])
    index = 1


class ClusterHostS2R1(ClusterHost):
    name = host_name(*LAYOUT[2])
    index = 2


HOSTS: tuple[type[ClusterHost], ...] = (ClusterHostS1R1, ClusterHostS1R2, ClusterHostS2R1)
HOST_NAMES = tuple(cls.name for cls in HOSTS)


def _wait_for_zookeeper(settings: Settings, progress: Progress) -> None:
    """Return once ZooKeeper reports `Mode: standalone` (a server started before that can crash)."""
    zookeeper = ZooKeeper(settings)
    deadline = time.monotonic() + ZOOKEEPER_WAIT_S
    said = False
    while True:
        reason = zookeeper.check_health()
        if reason is None:
            return
        if zookeeper.running_pid() is None:
            raise StackError(
                "zookeeper is not running, and the cluster's servers must not start without it",
                hint=f"see {zookeeper.log_file} and {zookeeper.stdout_file}; then nova stack up again",
            )
        if time.monotonic() > deadline:
            raise StackError(
                f"zookeeper did not report Mode: standalone within {ZOOKEEPER_WAIT_S:.0f}s: {reason}",
                hint=f"see {zookeeper.log_file}",
            )
        if not said:
            progress("waiting for ZooKeeper (srvr: Mode: standalone) before starting the cluster…")
            said = True
        time.sleep(0.1)


_USERS_XML = """<?xml version="1.0"?>
<!-- Written by `nova stack up` (with clickhouse-cluster): user `default`, empty password, loopback only. -->
<yandex>
    <profiles>
        <default>
            <max_memory_usage>4000000000</max_memory_usage>
            <use_uncompressed_cache>0</use_uncompressed_cache>
            <!-- the first live replica of a shard: the one nova writes to -->
            <load_balancing>in_order</load_balancing>
            <!-- here, not from the client: clickhouse-driver's Int64 encoding reaches 18.16 garbled -->
            <distributed_ddl_task_timeout>{ddl_timeout}</distributed_ddl_task_timeout>
            <connect_timeout_with_failover_ms>200</connect_timeout_with_failover_ms>
            <skip_unavailable_shards>0</skip_unavailable_shards>
            <!-- `x IN (SELECT … FROM distributed)` inside a distributed query: always right, if not cheapest -->
            <distributed_product_mode>global</distributed_product_mode>
            <!-- an INSERT into a Distributed table returns once the rows are on their shards -->
            <insert_distributed_sync>1</insert_distributed_sync>
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
