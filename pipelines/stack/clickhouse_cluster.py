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
from typing import ClassVar
from xml.sax.saxutils import escape

from pipelines.config import Settings
from pipelines.errors import StackError
from pipelines.stack._base import ServiceStatus
from pipelines.stack._proc import Progress
from pipelines.stack.clickhouse_server import ClickHouseServer
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


class ClusterHost(ClickHouseServer):
    """One server of the local cluster; subclasses fix which.

    The single server's layout, logs, launch and probe, with the host's own ports, an
    interserver port, the cluster's sections in config.xml and its profile in users.xml.
    """

    index: ClassVar[int]
    dir_name = "clickhouse-cluster"
    config_comment = "(with clickhouse-cluster) from configs/nova.yaml"
    log_count = 3
    max_connections = 512
    cache_size = 134217728
    users_comment = " (with clickhouse-cluster): user `default`, empty password, loopback only."
    profile = (
        ("max_memory_usage", 4000000000, ""),
        ("use_uncompressed_cache", 0, ""),
        ("load_balancing", "in_order", "the first live replica of a shard: the one nova writes to"),
        (
            "distributed_ddl_task_timeout",
            DDL_TIMEOUT_S,
            "here, not from the client: clickhouse-driver's Int64 encoding reaches 18.16 garbled",
        ),
        ("connect_timeout_with_failover_ms", 200, ""),
        ("skip_unavailable_shards", 0, ""),
        (
            "distributed_product_mode",
            "global",
            "`x IN (SELECT … FROM distributed)` inside a distributed query: always right, if not cheapest",
        ),
        ("insert_distributed_sync", 1, "an INSERT into a Distributed table returns once the rows are on their shards"),
    )

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.dir = self.state_dir / self.dir_name / self.name
        self.shard, self.replica = LAYOUT[self.index]
        self._ports = host_ports(settings, self.index)

    @property
    def tcp_port(self) -> int:
        return self._ports[0]

    @property
    def http_port(self) -> int:
        return self._ports[1]

    @property
    def interserver_port(self) -> int:
        return self._ports[2]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.tcp_port} (http :{self.http_port}, shard {self.shard} replica {self.replica})"

    def ports(self) -> list[tuple[int, str]]:
        return [(port, "stack.clickhouse_cluster_port") for port in self._ports]

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

    def _interserver_xml(self) -> str:
        return (
            f"    <interserver_http_port>{self.interserver_port}</interserver_http_port>\n"
            "    <interserver_http_host>127.0.0.1</interserver_http_host>\n"
        )

    def _tail_xml(self) -> str:
        return f"""    <remote_servers>
{self._remote_servers()}    </remote_servers>
    <zookeeper>
        <node><host>127.0.0.1</host><port>{self.stack.zookeeper_port}</port></node>
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
"""

    def launch(self, progress: Progress) -> int:
        _wait_for_zookeeper(self.settings, progress)
        return super().launch(progress)

    def probe_started(self) -> str | None:
        """Answers queries (the single server's health); check_health adds the replication checks."""
        return super().check_health()

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
