"""`nova stack` on real services: Kafka, PostgreSQL and clickhouse-server, started and stopped by pid.

Each test runs a stack of its own (a temp state dir, free ports), so the main stack in .nova/
is never touched. Kafka's jars come from the shared cache (~/.cache/nova/kafka-<version>), so
only the very first run on a machine pays for Maven.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipelines.config import Settings, load_settings
from pipelines.errors import StackError, UsageError
from pipelines.stack import service_log, stack_down, stack_status, stack_up
from tests.conftest import REPO, run_nova

pytestmark = pytest.mark.integration


def _free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


@dataclass
class IsolatedStack:
    settings: Settings
    env: dict[str, str]  # the same configuration for `nova` subprocesses

    @property
    def state_dir(self) -> Path:
        return self.settings.state_dir


@pytest.fixture
def test_stack() -> Iterator[IsolatedStack]:
    # Not pytest's tmp_path: it is mode 0700 below /tmp/pytest-of-root, and PostgreSQL runs as
    # the `postgres` user, who must be able to reach its data dir.
    root = Path(tempfile.mkdtemp(prefix="nova-stack-"))
    root.chmod(0o755)
    kafka, controller, pg, ch_tcp, ch_http = _free_ports(5)
    env = {
        "NOVA_STACK__STATE_DIR": str(root / "state"),
        "NOVA_STACK__KAFKA_PORT": str(kafka),
        "NOVA_STACK__KAFKA_CONTROLLER_PORT": str(controller),
        "NOVA_STACK__KAFKA_HEAP": "512M",
        "NOVA_STACK__POSTGRES_PORT": str(pg),
        "NOVA_STACK__CLICKHOUSE_TCP_PORT": str(ch_tcp),
        "NOVA_STACK__CLICKHOUSE_HTTP_PORT": str(ch_http),
        "NOVA_LEGACY__DSN": f"postgresql://nova@127.0.0.1:{pg}/legacy",
        "NOVA_CLICKHOUSE__URL": f"chdb://{root / 'chdb'}",
    }
    settings = load_settings(REPO / "configs" / "nova.yaml", environ=env)
    try:
        yield IsolatedStack(settings, env)
    finally:
        try:
            stack_down(settings=settings)
        finally:
            shutil.rmtree(root, ignore_errors=True)


def _processes_mentioning(path: Path) -> list[tuple[int, str]]:
    """(pid, cmdline) of every process whose command line mentions `path`, straight from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(path) in cmdline:
            found.append((int(entry.name), cmdline))
    return found


def _by_name(rows: list) -> dict:  # type: ignore[type-arg]
    return {row.name: row for row in rows}


def _kafka_admin(settings: Settings):  # type: ignore[no-untyped-def]
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": f"127.0.0.1:{settings.stack.kafka_port}"})


def test_up_status_down_up_keeps_data(test_stack: IsolatedStack) -> None:
    import psycopg
    from clickhouse_driver import Client
    from confluent_kafka.admin import NewTopic

    settings = test_stack.settings

    # up through the CLI: every service is healthy when it returns.
    run_nova("stack", "up", "--with", "clickhouse-server", env=test_stack.env)
    status = json.loads(run_nova("stack", "status", "--json", env=test_stack.env).stdout)
    states = {row["name"]: row["state"] for row in status}
    assert states == {
        "kafka": "healthy",
        "postgres": "healthy",
        "clickhouse-server": "healthy",
        "clickhouse": "embedded",
    }
    pids = {row["name"]: row["pid"] for row in status if row["pid"]}
    assert set(pids) == {"kafka", "postgres", "clickhouse-server"}

    # up again: nothing restarted.
    again = _by_name(stack_up(settings=settings))
    for name, pid in pids.items():
        assert again[name].pid == pid and again[name].state == "healthy"
        assert again[name].detail == "already running"

    # Data in each service, to find again after a restart.
    topic = f"stack_test_{uuid.uuid4().hex[:8]}"
    admin = _kafka_admin(settings)
    for future in admin.create_topics([NewTopic(topic, num_partitions=2)]).values():
        future.result(timeout=30)
    del admin
    with psycopg.connect(settings.legacy.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (id int PRIMARY KEY, note text)")
        conn.execute("INSERT INTO kept VALUES (1, 'survives down/up')")
    ch = Client("127.0.0.1", port=settings.stack.clickhouse_tcp_port)
    ch.execute("CREATE TABLE default.kept (id UInt32) ENGINE = MergeTree ORDER BY id")
    ch.execute("INSERT INTO default.kept VALUES", [(7,)])
    ch.disconnect()

    # down: every pid gone, no process of this stack left, pid files removed, data kept.
    down = _by_name(stack_down(settings=settings))
    assert {down[name].state for name in pids} == {"stopped"}
    assert _processes_mentioning(test_stack.state_dir) == []
    for pid in pids.values():
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    assert not (test_stack.state_dir / "kafka" / "kafka.pid").exists()
    assert not (test_stack.state_dir / "postgres" / "data" / "postmaster.pid").exists()
    assert not (test_stack.state_dir / "clickhouse-server" / "clickhouse-server.pid").exists()
    assert (test_stack.state_dir / "kafka" / "data" / "meta.properties").exists()
    stopped = run_nova("stack", "status", env=test_stack.env, expect=1)
    assert "not healthy" in stopped.stderr

    # A plain up brings back the whole stack (clickhouse-server was remembered) with its data.
    rows = _by_name(stack_up(settings=settings))
    assert {rows[name].state for name in pids} == {"healthy"}
    assert all(rows[name].pid != pid for name, pid in pids.items())
    assert topic in _kafka_admin(settings).list_topics(timeout=10).topics
    with psycopg.connect(settings.legacy.dsn) as conn:
        assert conn.execute("SELECT note FROM kept WHERE id = 1").fetchone() == ("survives down/up",)
    ch = Client("127.0.0.1", port=settings.stack.clickhouse_tcp_port)
    assert ch.execute("SELECT id FROM default.kept") == [(7,)]
    ch.disconnect()

    # --without stops and forgets the optional server; status no longer expects it.
    rows = _by_name(stack_up(settings=settings, with_clickhouse_server=False))
    assert "clickhouse-server" not in rows
    status_rows = _by_name(stack_status(settings=settings))
    assert status_rows["clickhouse-server"].state == "stopped"
    assert all(row.ok for row in status_rows.values())

    assert "ready to accept connections" in service_log(settings=settings, service="postgres").read_text()
    logs = run_nova("stack", "logs", "kafka", "-n", "5", env=test_stack.env)
    assert len(logs.stdout.splitlines()) == 5

    stack_down(settings=settings)
    assert _processes_mentioning(test_stack.state_dir) == []


def test_port_in_use_is_reported_with_the_setting(test_stack: IsolatedStack) -> None:
    port = test_stack.settings.stack.kafka_port
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        with pytest.raises(StackError) as info:
            stack_up(settings=test_stack.settings)
    message = str(info.value)
    assert f"port {port}" in message and "stack.kafka_port" in message and "NOVA_STACK__KAFKA_PORT" in message
    assert _processes_mentioning(test_stack.state_dir) == []


def test_logs_of_an_unknown_service_is_a_usage_error(test_stack: IsolatedStack) -> None:
    with pytest.raises(UsageError):
        service_log(settings=test_stack.settings, service="nosuchservice")
