"""`ClusterStore`: the `Store` of a ClickHouse cluster, reading through `Distributed`, writing per shard.

Everything a plain `Store` call does goes to one host of the cluster (the first of `system.clusters`
that answers; another one if it stops answering), where the plain table names are `Distributed`
tables over the shard-local `<name><local_suffix>` tables: queries of `nova status`,
`parity-check`, `tier-migrate` or the load test's dashboards read the whole cluster unchanged.

What needs one shard — the ingest workers' inserts, their ingest state and its fencing, the
partition-level operations of tiering — asks `shard_store(i)` for a connection to the shard's
**writer**: its first replica in `<remote_servers>` order that answers, is not read-only and holds
everything the shard acknowledged — no inserted part still waiting in its replication queue and
nothing left unread in the shard's replication log. Every process picks the same writer, so the
server-side ownership check of `pipelines.ingest.fencing` sees every claim of the shard, as on one
server. When the writer is down, the next replica takes over once it holds what the down one
acknowledged; until then the shard is unavailable (a retryable `StoreError`): writing to a replica
that lacks acknowledged rows would let a worker insert offsets again that are already stored. A
returning replica becomes the writer again only once it has fetched what was written meanwhile
(a process on a later replica looks every `RECHECK_S`). Two processes can disagree about the
writer for that long after a failover; the fencing's duplicate repair (step 5) is the net there.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl

from pipelines.clickhouse.base import Store
from pipelines.clickhouse.cluster import Host, Topology, discover, host_report, parse_endpoints
from pipelines.errors import StoreError

if TYPE_CHECKING:
    import pyarrow as pa

    from pipelines.clickhouse.native_backend import NativeStore
    from pipelines.config import ClusterSettings, Settings

T = TypeVar("T")
RECHECK_S = 5.0  # how often a shard served by a later replica looks whether the first one is back


class ClusterStore(Store):
    """A cluster: plain calls on one host through Distributed tables, `shard_store` for shard-local work."""

    backend = "cluster"

    def __init__(self, *, settings: Settings, url: str, database: str, topology: Topology) -> None:
        assert settings.clickhouse.cluster is not None
        self.settings = settings
        self.cluster: ClusterSettings = settings.clickhouse.cluster
        self.topology = topology
        self._url_options = parse_endpoints(url)[2]
        if "http_port" in dict(parse_qsl(self._url_options)):
            raise StoreError(
                "the ClickHouse URL option http_port names one server's HTTP port, but clickhouse.cluster is set",
                hint="remove http_port: the hosts of a cluster take their inserts over the native protocol",
            )
        self._front: NativeStore | None = None
        self._front_host: Host | None = None
        self._shards: dict[int, tuple[NativeStore, Host, float]] = {}
        front = self._open_front()
        super().__init__(url=url, database=database, caps=front.caps)

    def local(self, table: str) -> str:
        """The shard-local table behind the Distributed table `table`."""
        return f"{table}{self.cluster.local_suffix}"

    @property
    def shard_count(self) -> int:
        return len(self.topology.shards)

    def shard_of(self, partition: int) -> int:
        return self.topology.shard_of(partition)

    def by_shard(self, partitions: Iterable[int]) -> dict[int, list[int]]:
        """shard index → the partitions of `partitions` it holds (sorted)."""
        out: dict[int, list[int]] = {}
        for p in sorted(set(partitions)):
            out.setdefault(self.shard_of(p), []).append(p)
        return out

    def shard_store(self, shard: int) -> Store:
        """A connection to shard `shard`'s writer replica (see the module docstring). Raises StoreError."""
        with self._lock:
            self._check_open()
            cached = self._shards.get(shard)
            if cached is not None:
                store, host, checked = cached
                first = host.replica == self.topology.shards[shard][0].replica
                if not store.closed and (first or time.monotonic() - checked < RECHECK_S):
                    return store
                if not first:
                    self._drop_shard(shard)
                elif store.closed:
                    del self._shards[shard]
            store, host = self._open_writer(shard)
            self._shards[shard] = (store, host, time.monotonic())
            return store

    def on_shard(self, shard: int, call: Callable[[Store], T]) -> T:
        """`call` with shard `shard`'s writer; after a connection failure the next call picks the writer afresh."""
        store = self.shard_store(shard)
        try:
            return call(store)
        except StoreError as exc:
            if exc.retryable:
                self.reset_shard(shard)
            raise

    def shard_host(self, shard: int) -> Host:
        """The replica `shard_store(shard)` writes to."""
        self.shard_store(shard)
        return self._shards[shard][1]

    def reset_shard(self, shard: int) -> None:
        """Forget shard `shard`'s writer after a connection failure, so the next call picks one afresh."""
        with self._lock:
            self._drop_shard(shard)

    def _drop_shard(self, shard: int) -> None:
        cached = self._shards.pop(shard, None)
        if cached is not None:
            cached[0].close()

    def _open_writer(self, shard: int) -> tuple[NativeStore, Host]:
        replicas = self.topology.shards[shard]
        reasons = []
        for host in replicas:
            report = host_report(
                host.endpoint.host, host.endpoint.port, endpoint=host.endpoint, timeout_s=self._timeout
            )
            if report.problem:
                reasons.append(report.problem)
                continue
            readonly = [r.table for r in report.replicas if r.is_readonly and r.database == self.database]
            if readonly:
                reasons.append(f"{host.label} has read-only replicas ({', '.join(readonly)})")
                continue
            missing = [
                f"{r.table}: {r.inserts_in_queue} inserted part(s) to fetch, {r.log_behind} log entries unread"
                for r in report.replicas
                if r.database == self.database and (r.inserts_in_queue or r.log_behind)
            ]
            if missing:
                reasons.append(f"{host.label} lacks rows another replica acknowledged ({'; '.join(missing)})")
                continue
            try:
                return self.open_host(host), host
            except StoreError as exc:
                reasons.append(f"{host.label}: {exc.message}")
        raise StoreError(
            f"shard {shard + 1} of cluster {self.topology.name!r} has no replica to write to: " + "; ".join(reasons),
            retryable=True,
            hint="start the replica that is down (nova stack up --with clickhouse-cluster); "
            "a replica behind it takes over once it has fetched what that one acknowledged",
        )

    @property
    def _timeout(self) -> float:
        return self.settings.clickhouse.connect_timeout_s

    def open_host(self, host: Host) -> NativeStore:
        """A new connection to one host (the caller closes it), in nova's database once that exists."""
        from pipelines.clickhouse.endpoint import open_native_endpoint

        store = open_native_endpoint(
            self.settings, host=host.endpoint, query=self._url_options, database=self.settings.clickhouse.database
        )
        if store.database_exists():
            store.ensure_database()
        return store

    def _open_front(self) -> NativeStore:
        failures = []
        hosts = self.topology.hosts
        if self._front_host is not None:  # after a failure, start with the host after the one that failed
            at = hosts.index(self._front_host)
            hosts = hosts[at + 1 :] + hosts[: at + 1]
        for host in hosts:
            try:
                store = self.open_host(host)
            except StoreError as exc:
                if not exc.retryable:
                    raise
                failures.append(exc.message)
                continue
            self._front, self._front_host = store, host
            return store
        raise StoreError(
            f"no host of cluster {self.topology.name!r} answers: " + "; ".join(failures),
            retryable=True,
            hint="start it with `nova stack up --with clickhouse-cluster`",
        )

    def _front_store(self) -> NativeStore:
        front = self._front
        if front is None or front.closed:
            front = self._open_front()
            if self._database_active:
                front.ensure_database()
        return front

    def _on_front(self, call: Any, *, retry: bool) -> Any:
        front = self._front_store()
        try:
            return call(front)
        except StoreError as exc:
            if not exc.retryable or exc.code not in (210, 209, 3, 279):
                raise
            front.close()
            self._front = None
            if not retry:
                raise
            return call(self._front_store())

    def _run(self, sql: str, settings: dict[str, Any] | None) -> None:
        self._on_front(lambda s: s._run(sql, settings), retry=False)

    def _fetch(self, sql: str) -> tuple[list[str], list[str], list[tuple[Any, ...]]]:
        result: tuple[list[str], list[str], list[tuple[Any, ...]]] = self._on_front(lambda s: s._fetch(sql), retry=True)
        return result

    def _fetch_arrow(self, sql: str) -> pa.Table:
        return self._on_front(lambda s: s._fetch_arrow(sql), retry=True)

    def _insert_arrow(self, target: str, db: str, name: str, data: pa.Table, settings: dict[str, Any] | None) -> int:
        return int(self._on_front(lambda s: s._insert_arrow(target, db, name, data, settings), retry=False))

    def _insert_columns(
        self, target: str, db: str, name: str, columns: dict[str, Sequence[Any]], settings: dict[str, Any] | None
    ) -> int:
        return int(self._on_front(lambda s: s._insert_columns(target, db, name, columns, settings), retry=False))

    def _check_settings(self, settings: dict[str, Any] | None) -> None:
        super()._check_settings(settings)
        self._front_store()._check_settings(settings)

    def _use_database(self, database: str) -> None:
        self._front_store()._use_database(database)

    def _close(self) -> None:
        for shard in list(self._shards):
            self._drop_shard(shard)
        if self._front is not None:
            self._front.close()

    def __repr__(self) -> str:
        return (
            f"<ClusterStore {self.topology.name} {len(self.topology.shards)} shards, "
            f"{len(self.topology.hosts)} hosts, database={self.database}>"
        )


def open_cluster(settings: Settings, url: str, database: str | None) -> ClusterStore:
    """The cluster of `settings.clickhouse.cluster`, found through the hosts `url` lists."""
    topology = discover(settings, url=url)
    url_db = parse_endpoints(url)[1]
    return ClusterStore(
        settings=settings, url=url, database=database or settings.clickhouse.database or url_db, topology=topology
    )
