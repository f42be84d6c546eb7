"""nova on the local ClickHouse cluster (`nova stack up --with clickhouse-cluster`): provision, ingest, reads.

The cluster is the real one: ZooKeeper and three clickhouse-server 18.16 hosts, shard 1 with two
replicas (127.0.0.1:19101, :19102), shard 2 with one (:19103). Tests that take a host down bring it
back with `nova stack up` before they end.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import REPO, run_nova, unique
from tests.pipeline_env import SERVER_URL, PipelineEnv, wait_until, worker_pids
from tests.test_parity import legacy_schema  # noqa: F401 (a fixture: an empty legacy warehouse of the test's own)

pytestmark = [pytest.mark.integration, pytest.mark.server]

HOSTS = {"s1r1": 19101, "s1r2": 19102, "s2r1": 19103}
CLUSTER_URL = "clickhouse://default:@127.0.0.1:19101,127.0.0.1:19102,127.0.0.1:19103"


def _settings() -> Any:
    from pipelines.config import load_settings

    return load_settings(REPO / "configs" / "nova.yaml", environ={})


def _host(name: str) -> Any:
    from pipelines.stack import clickhouse_cluster

    cls = next(c for c in clickhouse_cluster.HOSTS if c.name == f"clickhouse-{name}")
    return cls(_settings())


def _on_host(port: int, sql: str) -> list[tuple[Any, ...]]:
    from pipelines.clickhouse import open_store

    with open_store(url=f"clickhouse://default:@127.0.0.1:{port}/default") as store:
        return store.query_rows(sql)


def _kill_host(name: str) -> None:
    pid = _host(name).running_pid()
    assert pid is not None, f"clickhouse-{name} is not running: start it with nova stack up --with clickhouse-cluster"
    os.kill(pid, signal.SIGKILL)
    psutil.Process(pid).wait(10)


def _restart_hosts() -> None:
    """`nova stack up` brings a killed host back; then wait until every replica has caught up again."""
    run_nova("stack", "up", "--with", "clickhouse-cluster", timeout=120)
    from pipelines.clickhouse.cluster import host_report

    def caught_up() -> bool:
        return all(not host_report("127.0.0.1", port).behind(5.0) for port in HOSTS.values())

    wait_until(caught_up, timeout=60, interval=0.3, what="every replica caught up")


@pytest.fixture(scope="module", autouse=True)
def _cluster_up() -> None:
    """The cluster must be running (CI and `make test` start it); say how to start it otherwise."""
    down = [name for name in HOSTS if _host(name).check_health() is not None]
    assert not down, f"cluster host(s) {down} not healthy: run nova stack up --with clickhouse-cluster"


def cluster_env(*, single: bool = False) -> PipelineEnv:
    name = unique("cl")
    env = {
        "NOVA_PIPELINE__TOPIC": f"{name}.tx",
        "NOVA_PIPELINE__DLQ_TOPIC": f"{name}.dlq",
        "NOVA_PIPELINE__GROUP_ID": f"{name}-ingest",
        "NOVA_PIPELINE__SESSION_TIMEOUT_MS": "3000",
        "NOVA_CLICKHOUSE__DATABASE": name,
        "NOVA_CLICKHOUSE__URL": CLUSTER_URL,
        "NOVA_CLICKHOUSE__CLUSTER__NAME": "nova",
        # Storage only: the fraud detector's per-partition state has its own tests (tests/test_detect_*).
        "NOVA_DETECTION__ENABLED": "false",
    }
    return PipelineEnv(env, "cluster", env["NOVA_PIPELINE__TOPIC"], env["NOVA_PIPELINE__DLQ_TOPIC"], name)


@pytest.fixture
def cluster() -> Iterator[PipelineEnv]:
    pe = cluster_env()
    try:
        yield pe
    finally:
        _cleanup(pe)


def _cleanup(pe: PipelineEnv) -> None:
    for proc in pe.procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    from pipelines import kafka
    from pipelines.config import load_settings

    with contextlib.suppress(Exception):
        kafka.delete_topics(load_settings(REPO / "configs" / "nova.yaml", environ=pe.env), [pe.topic, pe.dlq_topic])
    with contextlib.suppress(Exception):
        _on_host(19101, f"DROP DATABASE IF EXISTS `{pe.database}` ON CLUSTER nova")


def _plan(pe: PipelineEnv, *, expect: int = 0) -> list[dict[str, Any]]:
    return json.loads(pe.nova("provision", "--dry-run", "--json", expect=expect).stdout)


def _databases(database: str) -> dict[str, bool]:
    return {
        name: bool(_on_host(port, f"SELECT count() FROM system.databases WHERE name = '{database}'")[0][0])
        for name, port in HOSTS.items()
    }


def test_provision_twice_second_run_all_unchanged_on_every_host(cluster: PipelineEnv) -> None:
    first = cluster.nova("provision", "--yes")
    assert "provisioned" in first.stderr
    plan = _plan(cluster)
    assert {item["action"] for item in plan} == {"unchanged"}, plan
    hosts = [item["name"] for item in plan if item["kind"] == "host"]
    assert len(hosts) == 3 and all(f":{port}" in " ".join(hosts) for port in HOSTS.values())
    db = cluster.database
    for name, port in HOSTS.items():
        engines = dict(_on_host(port, f"SELECT name, engine FROM system.tables WHERE database = '{db}'"))
        assert engines["transactions"] == "Distributed", (name, engines)
        assert engines["transactions_local"] == "ReplicatedMergeTree", (name, engines)
        assert engines["ingest_state_local"] == "ReplicatedReplacingMergeTree", (name, engines)
        assert engines["transactions_by_merchant_minute_local"] == "ReplicatedSummingMergeTree", (name, engines)
        assert engines["transactions_by_merchant_minute_mv"] == "MaterializedView", (name, engines)
    # shard 1's replicas share a replication log, shard 2 has its own
    paths = {
        name: _on_host(
            port, f"SELECT zookeeper_path FROM system.replicas WHERE database = '{db}' AND table = 'transactions_local'"
        )[0][0]
        for name, port in HOSTS.items()
    }
    assert paths["s1r1"] == paths["s1r2"] != paths["s2r1"]


def test_a_host_down_refuses_provision_naming_it_and_changes_nothing(cluster: PipelineEnv) -> None:
    _kill_host("s2r1")
    try:
        result = cluster.nova("provision", "--yes", expect=1)
        assert "127.0.0.1:19103" in result.stderr and "refused" in result.stderr, result.output
        assert "nothing was changed" in result.stderr
        # nothing half-applied: the hosts that are up did not get the database either
        assert _alive_only(cluster.database)
    finally:
        _restart_hosts()
    cluster.nova("provision", "--yes")
    assert _databases(cluster.database) == {"s1r1": True, "s1r2": True, "s2r1": True}


def _alive_only(database: str) -> bool:
    """While s2r1 is down it cannot be asked: the two live hosts must not have the database."""
    return all(
        not _on_host(port, f"SELECT count() FROM system.databases WHERE name = '{database}'")[0][0]
        for name, port in HOSTS.items()
        if name != "s2r1"
    )


def test_bad_cluster_config_is_a_config_error_before_anything(tmp_path: Path) -> None:
    env = {"NOVA_CLICKHOUSE__URL": CLUSTER_URL, "NOVA_CLICKHOUSE__CLUSTER__NAME": "nova"}
    bad = run_nova(
        "provision", "--dry-run", expect=2, env={**env, "NOVA_CLICKHOUSE__CLUSTER__REPLICA_PATH": "/x/{table}"}
    )
    assert "clickhouse.cluster.replica_path" in bad.stderr and "{shard}" in bad.stderr
    chdb = run_nova(
        "provision",
        "--dry-run",
        expect=2,
        env={"NOVA_CLICKHOUSE__URL": f"chdb://{tmp_path}/c", "NOVA_CLICKHOUSE__CLUSTER__NAME": "nova"},
    )
    assert "clickhouse.cluster needs a server URL" in chdb.stderr
    assert not (tmp_path / "c").exists()
    key = run_nova("provision", "--dry-run", expect=2, env={**env, "NOVA_CLICKHOUSE__CLUSTER__SHARD_KEY": "card_id"})
    assert "clickhouse.cluster.shard_key" in key.stderr


def _replica_counts(database: str) -> dict[str, int]:
    return {
        name: int(_on_host(port, f"SELECT count() FROM `{database}`.transactions_local")[0][0])
        for name, port in HOSTS.items()
    }


def _sync_replicas(database: str) -> None:
    for port in HOSTS.values():
        _on_host(port, f"SYSTEM SYNC REPLICA `{database}`.transactions_local")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("events", "rate", "worker_kills"), [(30_000, 5_000, 4), pytest.param(200_000, 12_000, 10, marks=pytest.mark.long)]
)
def test_ingest_exactly_once_with_workers_and_a_replica_killed(
    cluster: PipelineEnv,
    tmp_path: Path,
    events: int,
    rate: int,
    worker_kills: int,
    legacy_schema: str,  # noqa: F811
) -> None:
    """kill -9 of workers and of shard 1's writer replica mid-run; Distributed counts every event once."""
    cluster.nova("provision", "--yes")
    gen = cluster.spawn(
        "generate", "--count", str(events), "--rate", str(rate), "--seed", "21", log=tmp_path / "gen.log"
    )
    ingest = cluster.spawn("ingest", "--workers", "3", "--quiet", log=tmp_path / "ingest.log")
    sup = psutil.Process(ingest.pid)
    rng = random.Random(7)
    kills, replica_killed = 0, False
    deadline = time.monotonic() + 150
    while (kills < worker_kills or not replica_killed) and time.monotonic() < deadline:
        time.sleep(rng.uniform(0.4, 1.2))
        if not replica_killed and kills >= 2:
            _kill_host("s1r1")  # shard 1's writer: workers fail over to s1r2 once it holds what s1r1 acknowledged
            replica_killed = True
            time.sleep(2.0)
            _restart_hosts()
            continue
        pids = worker_pids(sup)
        if pids:
            os.kill(rng.choice(pids), signal.SIGKILL)
            kills += 1
    assert replica_killed and kills >= worker_kills, f"{kills} worker kills, replica killed: {replica_killed}"
    assert gen.wait(120) == 0, (tmp_path / "gen.log").read_text()[-2000:]
    # the supervisor restarts killed workers: the running ingest finishes what was in flight
    query = "SELECT count(), uniqExact(transaction_id) FROM transactions"
    try:
        wait_until(lambda: _read(cluster, query)[0][0] >= events, timeout=120, interval=0.5, what=f"{events} rows")
    except AssertionError as exc:
        status = cluster.nova("status", expect=None).output
        raise AssertionError(f"{exc}\n{status}\n{(tmp_path / 'ingest.log').read_text()[-3000:]}") from None
    time.sleep(1.0)  # a duplicate would land right after the last batch
    ingest.send_signal(signal.SIGTERM)
    assert ingest.wait(60) == 0, (tmp_path / "ingest.log").read_text()[-3000:]
    assert _read(cluster, query)[0] == (events, events)
    assert cluster.counts() == (events, events), cluster.nova("status", "--json").stdout
    # the killed replica caught up and agrees with its shard's other replica
    _sync_replicas(cluster.database)
    counts = _replica_counts(cluster.database)
    assert counts["s1r1"] == counts["s1r2"] and counts["s1r1"] + counts["s2r1"] == events, counts
    assert counts["s2r1"] > 0 and counts["s1r1"] > 0
    rows = _on_host(19101, f"SELECT count(), uniqExact(_partition) FROM `{cluster.database}`.transactions_local")
    assert rows[0][1] == 3  # 6 partitions, 0/2/4 on shard 1
    _same_answers_as_a_single_server(cluster, events, legacy_schema)


PARITY_QUERIES = (
    "SELECT count() AS n, uniqExact(transaction_id) AS u, sum(amount_minor) AS a, sum(amount_reporting_minor) AS r "
    "FROM transactions",
    "SELECT toDate(event_time) AS day, currency, count() AS n, sum(amount_minor) AS a FROM transactions "
    "GROUP BY day, currency ORDER BY day, currency",
    "SELECT merchant_id, sum(transactions) AS n, sum(amount_minor) AS a FROM transactions_by_merchant_minute "
    "GROUP BY merchant_id ORDER BY merchant_id",
    "SELECT count() AS n FROM transactions WHERE card_id IN (SELECT card_id FROM transactions WHERE risk_score > 0.9)",
)


def _read(pe: PipelineEnv, sql: str) -> list[tuple[Any, ...]]:
    """Rows of a query through the store `pe`'s settings open (a ClusterStore on the cluster)."""
    from pipelines.clickhouse import open_store
    from pipelines.config import load_settings

    with open_store(load_settings(REPO / "configs" / "nova.yaml", environ=pe.env)) as store:
        return store.query_rows(sql)


def _execute(pe: PipelineEnv, sql: str) -> None:
    from pipelines.clickhouse import open_store
    from pipelines.config import load_settings

    with open_store(load_settings(REPO / "configs" / "nova.yaml", environ=pe.env)) as store:
        store.execute(sql)


def _same_answers_as_a_single_server(cluster: PipelineEnv, events: int, legacy: str) -> None:
    """The same rows on the single server: every read query, --all-tiers and parity-check agree.

    The rows are copied from the cluster (through its Distributed table) into a provisioned database
    of the single server, whose views fill its rollups as ingest would. That database has another
    name, so a query that reached the wrong server fails.
    """
    cluster.env["NOVA_LEGACY__SCHEMA"] = legacy
    single_env = {
        **{k: v for k, v in cluster.env.items() if not k.startswith("NOVA_CLICKHOUSE__CLUSTER")},
        "NOVA_CLICKHOUSE__URL": SERVER_URL,
        "NOVA_CLICKHOUSE__DATABASE": cluster.database + "_single",
        "NOVA_PIPELINE__GROUP_ID": cluster.env["NOVA_PIPELINE__GROUP_ID"] + "-single",
    }
    single = PipelineEnv(single_env, "server", cluster.topic, cluster.dlq_topic, cluster.database + "_single")
    try:
        single.nova("provision", "--yes")
        _execute(
            single,
            f"INSERT INTO `{single.database}`.transactions SELECT * FROM "
            f"remote('127.0.0.1:19101', `{cluster.database}`, transactions)",
        )
        for sql in PARITY_QUERIES:
            assert _read(cluster, sql) == _read(single, sql), sql
        # transactions is the tiered table of configs/lifecycle.yaml
        tiered = ("query", "--all-tiers", "--format", "json", PARITY_QUERIES[0])
        assert json.loads(cluster.nova(*tiered).stdout) == json.loads(single.nova(*tiered).stdout)
        ((day, until),) = _read(
            cluster, "SELECT toString(min(toDate(event_time))), toString(max(toDate(event_time)) + 1) FROM transactions"
        )
        args = ("parity-check", "--since", day, "--until", until, "--json")
        # the legacy warehouse is empty: a mismatch (exit 1), with the ClickHouse side computed in full
        on_cluster = json.loads(cluster.nova(*args, expect=1).stdout)
        on_single = json.loads(single.nova(*args, expect=1).stdout)
        assert on_cluster["totals"]["clickhouse"] == on_single["totals"]["clickhouse"]
        assert on_cluster["totals"]["clickhouse"]["count"] == events
        assert on_cluster["daily"] == on_single["daily"]
    finally:
        with contextlib.suppress(Exception):
            single.nova("query", f"DROP DATABASE IF EXISTS {single.database}", expect=None)


def test_stack_status_shows_each_host_and_its_replica_lag(cluster: PipelineEnv) -> None:
    cluster.nova("provision", "--yes")  # a database of its own: every host has replicated tables to report on
    rows = {r["name"]: r for r in json.loads(run_nova("stack", "status", "--json", expect=None).stdout)}
    for name, port in HOSTS.items():
        row = rows[f"clickhouse-{name}"]
        assert row["state"] == "healthy" and f":{port}" in row["address"]
        assert "lag" in row["detail"] and "queue" in row["detail"], row
    assert rows["zookeeper"]["state"] == "healthy"


def test_failover_waits_for_a_replica_that_lacks_acknowledged_rows() -> None:
    """With shard 1's first replica down, the second is written to only once it holds everything."""
    from pipelines.clickhouse import open_store
    from pipelines.clickhouse.cluster_store import ClusterStore

    settings = _settings().model_copy(deep=True)
    settings.clickhouse.url = CLUSTER_URL
    from pipelines.config import ClusterSettings

    settings.clickhouse.cluster = ClusterSettings(name="nova")
    with open_store(settings) as store:
        assert isinstance(store, ClusterStore)
        assert store.shard_host(0).endpoint.port == 19101 and store.shard_host(1).endpoint.port == 19103
        _kill_host("s1r1")
        try:
            store.reset_shard(0)
            wait_until(lambda: _writer_port(store) == 19102, timeout=20, interval=0.5, what="failover to s1r2")
        finally:
            _restart_hosts()
        # back on the first replica once it answers with writable replicas again
        wait_until(lambda: _back_on_first(store), timeout=30, interval=0.5, what="s1r1 writer again")


def _back_on_first(store: Any) -> bool:
    store.reset_shard(0)
    return _writer_port(store) == 19101


def _writer_port(store: Any) -> int | None:
    from pipelines.errors import StoreError

    try:
        return int(store.shard_host(0).endpoint.port)
    except StoreError:
        return None
