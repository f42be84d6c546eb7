"""A ClickHouse cluster as nova sees it: its hosts (from `system.clusters`), their health and replica lag.

The topology is ClickHouse's own: every server of the cluster lists the same `<remote_servers>`,
so nova asks one reachable host (the ones `clickhouse.url` names are tried in order) for
`system.clusters` and learns every shard and replica from it, instead of repeating them in its
own config. A host that does not answer is reported by name, never skipped silently.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from pipelines.errors import StoreError
from pipelines.urls import redact_url

if TYPE_CHECKING:
    from pipelines.config import ClusterSettings, Settings


# As in native_backend: failed connects are reported as StoreError or HostReport, not as logged tracebacks.
logging.getLogger("clickhouse_driver").addHandler(logging.NullHandler())

# 18.16 reports a replica's absolute_delay as seconds since 1970 until it has loaded its queue after a start.
STARTING_DELAY_S = 10 * 365 * 86400


@dataclass(frozen=True)
class Endpoint:
    """Where to reach one server, and who to be there."""

    host: str
    port: int
    user: str = "default"
    password: str = field(default="", repr=False)

    @property
    def label(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Host:
    """One replica of one shard, as `system.clusters` lists it (shard and replica numbers from 1)."""

    shard: int
    replica: int
    endpoint: Endpoint

    @property
    def label(self) -> str:
        return f"{self.endpoint.label} (shard {self.shard} replica {self.replica})"


@dataclass(frozen=True)
class Topology:
    """The shards of a cluster, each a list of its replicas in `<remote_servers>` order."""

    name: str
    shards: tuple[tuple[Host, ...], ...]

    @property
    def hosts(self) -> list[Host]:
        return [host for shard in self.shards for host in shard]

    def shard_of(self, partition: int) -> int:
        """The shard index (0-based) that holds Kafka `partition`: the Distributed tables' `_partition % shards`.

        Every shard has weight 1 (nova's cluster and `stack up --with clickhouse-cluster` say so), so
        this is what the Distributed engine computes for a sharding key of `_partition`.
        """
        return int(partition) % len(self.shards)


@dataclass(frozen=True)
class ReplicaLag:
    """One replicated table on one host (`system.replicas`)."""

    database: str
    table: str
    is_readonly: bool
    absolute_delay: int
    queue_size: int
    inserts_in_queue: int
    log_behind: int  # log entries the replica has not even copied into its queue yet


@dataclass(frozen=True)
class HostReport:
    """Whether a host answers, reaches ZooKeeper, and how far behind its replicas are."""

    endpoint: Endpoint
    problem: str | None
    replicas: tuple[ReplicaLag, ...] = ()

    @property
    def max_delay(self) -> int:
        return max((r.absolute_delay for r in self.replicas), default=0)

    @property
    def queue(self) -> int:
        return sum(r.queue_size for r in self.replicas)

    @property
    def summary(self) -> str:
        if self.problem:
            return self.problem
        if not self.replicas:
            return "no replicated tables yet"
        readonly = [r.table for r in self.replicas if r.is_readonly]
        if self.max_delay >= STARTING_DELAY_S:
            return f"{len(self.replicas)} replicated tables, loading their replication queues (just started)"
        text = f"{len(self.replicas)} replicated tables, lag {self.max_delay}s, queue {self.queue}"
        return text + (f", read-only: {', '.join(readonly)}" if readonly else "")

    def behind(self, max_delay_s: float, database: str | None = None) -> list[str]:
        """Why this host's replicas (of `database`, else all) are not fit to write to; [] when they are."""
        out = []
        for r in self.replicas:
            if database is not None and r.database != database:
                continue
            if r.is_readonly:
                out.append(f"{r.database}.{r.table} is read-only (lost its ZooKeeper session)")
            elif r.absolute_delay >= STARTING_DELAY_S:
                out.append(f"{r.database}.{r.table} has not loaded its replication queue yet (the server just started)")
            elif r.absolute_delay > max_delay_s:
                out.append(f"{r.database}.{r.table} is {r.absolute_delay}s behind (limit {max_delay_s:g}s)")
        return out


def _client(endpoint: Endpoint, *, timeout_s: float) -> Any:
    from clickhouse_driver import Client

    return Client(
        endpoint.host,
        port=endpoint.port,
        user=endpoint.user,
        password=endpoint.password,
        connect_timeout=timeout_s,
        send_receive_timeout=max(timeout_s, 5.0),
        sync_request_timeout=timeout_s,
        client_name="nova-cluster",
    )


def host_report(host: str, port: int, *, timeout_s: float = 3.0, endpoint: Endpoint | None = None) -> HostReport:
    """Ask one server whether it reaches ZooKeeper and how far behind its replicated tables are."""
    from clickhouse_driver.errors import Error as ClickHouseError

    endpoint = endpoint or Endpoint(host, port)
    client = _client(endpoint, timeout_s=timeout_s)
    try:
        try:
            client.execute("SELECT count() FROM system.zookeeper WHERE path = '/'")
        except (ClickHouseError, OSError, EOFError) as exc:
            text = str(getattr(exc, "message", "") or exc).split("Stack trace:")[0].strip()
            if isinstance(exc, ClickHouseError) and getattr(exc, "code", None) in (210, 209, 279):
                return HostReport(endpoint, f"{endpoint.label} does not answer: {text}")
            if isinstance(exc, OSError | EOFError) or "refused" in text.lower():
                return HostReport(endpoint, f"{endpoint.label} does not answer: {text}")
            return HostReport(endpoint, f"{endpoint.label} cannot reach ZooKeeper: {text[:200]}")
        rows = client.execute(
            "SELECT database, table, is_readonly, absolute_delay, queue_size, inserts_in_queue, "
            "log_max_index, log_pointer FROM system.replicas"
        )
    except (ClickHouseError, OSError, EOFError) as exc:
        return HostReport(endpoint, f"{endpoint.label} does not answer: {exc}")
    finally:
        client.disconnect()
    lags = tuple(
        ReplicaLag(str(db), str(t), bool(ro), int(delay), int(queue), int(inserts), _unread(int(top), int(pointer)))
        for db, t, ro, delay, queue, inserts, top, pointer in rows
    )
    return HostReport(endpoint, None, lags)


def _unread(log_max_index: int, log_pointer: int) -> int:
    """Replication-log entries a replica has not copied into its queue (the pointer is the next one to copy).

    Both are 0 for a table whose log is still empty, which reads the same as one entry not copied yet:
    taken as empty (the entry, if any, shows up in the queue a moment later).
    """
    if log_pointer == 0 and log_max_index == 0:
        return 0
    return max(0, log_max_index - log_pointer + 1)


def parse_endpoints(url: str) -> tuple[list[Endpoint], str, str]:
    """The hosts of `clickhouse://user:pass@h1:p1,h2:p2/db?opts`, its database and its query string."""
    rest = url[len("clickhouse://") :]
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, _, hosts = netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    endpoints = []
    for item in hosts.split(","):
        host, _, port_text = item.strip().rpartition(":")
        if not host:
            host, port_text = port_text, "9000"
        try:
            port = int(port_text)
        except ValueError:
            raise StoreError(f"the ClickHouse URL {redact_url(url)!r} has a bad port {port_text!r}") from None
        if not host:
            raise StoreError(
                f"the ClickHouse URL {redact_url(url)!r} names no host", hint="clickhouse://u:p@h1:9000,h2:9000/db"
            )
        endpoints.append(Endpoint(host.strip("[]"), port, unquote(user or "default"), unquote(password)))
    return endpoints, unquote(path), query


def discover(settings: Settings, *, url: str | None = None, timeout_s: float | None = None) -> Topology:
    """The cluster's shards and replicas from `system.clusters` on the first host of the URL that answers."""
    from clickhouse_driver.errors import Error as ClickHouseError

    cluster = _cluster(settings)
    seeds, _db, _query = parse_endpoints(url or settings.clickhouse.url)
    timeout = timeout_s or settings.clickhouse.connect_timeout_s
    failures = []
    for seed in seeds:
        client = _client(seed, timeout_s=timeout)
        try:
            rows = client.execute(
                "SELECT shard_num, replica_num, host_name, port, shard_weight FROM system.clusters "
                f"WHERE cluster = '{cluster.name}' ORDER BY shard_num, replica_num"
            )
        except (ClickHouseError, OSError, EOFError) as exc:
            failures.append(f"{seed.label}: {str(exc).splitlines()[0][:160]}")
            continue
        finally:
            client.disconnect()
        if not rows:
            raise StoreError(
                f"ClickHouse at {seed.label} has no cluster {cluster.name!r} in system.clusters",
                hint="set clickhouse.cluster.name to a cluster of the servers' <remote_servers>, "
                "or start the local one with nova stack up --with clickhouse-cluster",
            )
        weights = {int(r[4]) for r in rows}
        if weights != {1}:
            raise StoreError(
                f"cluster {cluster.name!r} has shard weights {sorted(weights)}; nova routes Kafka partitions "
                "as partition % shards, which needs every shard_weight = 1",
                hint="set <weight>1</weight> on every shard of <remote_servers>",
            )
        shards: dict[int, list[Host]] = {}
        for shard, replica, host, port, _w in rows:
            shards.setdefault(int(shard), []).append(
                Host(int(shard), int(replica), Endpoint(str(host), int(port), seed.user, seed.password))
            )
        return Topology(cluster.name, tuple(tuple(hosts) for _s, hosts in sorted(shards.items())))
    raise StoreError(
        f"no host of the ClickHouse cluster {cluster.name!r} answers: " + "; ".join(failures),
        retryable=True,
        hint="start it with `nova stack up --with clickhouse-cluster`, or list reachable hosts in clickhouse.url",
    )


def _cluster(settings: Settings) -> ClusterSettings:
    cluster = settings.clickhouse.cluster
    if cluster is None:
        raise StoreError("clickhouse.cluster is not set", hint="set clickhouse.cluster.name in configs/nova.yaml")
    return cluster
