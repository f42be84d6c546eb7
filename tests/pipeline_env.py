"""An isolated pipeline for one test: unique topics, group and database, on either ClickHouse backend."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import REPO, nova_executable, run_nova, unique

SERVER_URL = "clickhouse://default:@127.0.0.1:19000/default?http_port=18123"  # inserts as Native over HTTP


@dataclass
class PipelineEnv:
    env: dict[str, str]
    backend: str
    topic: str
    dlq_topic: str
    database: str
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    def nova(self, *args: str, expect: int | None = 0, timeout: float = 600) -> Any:
        return run_nova(*args, expect=expect, env=self.env, timeout=timeout)

    def query(self, sql: str) -> list[dict[str, Any]]:
        result = self.nova("query", "--format", "json", sql)
        return json.loads(result.stdout)

    def scalar(self, sql: str) -> Any:
        rows = self.query(sql)
        return next(iter(rows[0].values()))

    def spawn(self, *args: str, log: Path | None = None) -> subprocess.Popen[str]:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("NOVA_")}
        full_env.update(self.env)
        cmd = [*nova_executable(), *args]
        if log is None:
            proc = subprocess.Popen(
                cmd,
                env=full_env,
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        else:
            with open(log, "w") as out:  # the child keeps its own copy of the descriptor
                proc = subprocess.Popen(cmd, env=full_env, cwd=REPO, stdout=out, stderr=out, start_new_session=True)
        self.procs.append(proc)
        return proc

    def counts(self) -> tuple[int, int]:
        row = self.query(f"SELECT count() AS n, uniqExact(transaction_id) AS u FROM {self.database}.transactions")[0]
        return int(row["n"]), int(row["u"])

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        from pipelines import kafka
        from pipelines.config import load_settings

        settings = load_settings(REPO / "configs" / "nova.yaml", environ=self.env)
        with contextlib.suppress(Exception):
            kafka.delete_topics(settings, [self.topic, self.dlq_topic])
        if self.backend == "server":
            with contextlib.suppress(Exception):
                self.nova("query", f"DROP DATABASE IF EXISTS {self.database}", expect=None)


def make_env(tmp_path: Path, backend: str, *, partitions: int | None = None) -> PipelineEnv:
    name = unique("t")
    topic, dlq = f"{name}.tx", f"{name}.dlq"
    database = name
    env = {
        "NOVA_PIPELINE__TOPIC": topic,
        "NOVA_PIPELINE__DLQ_TOPIC": dlq,
        "NOVA_PIPELINE__GROUP_ID": f"{name}-ingest",
        "NOVA_PIPELINE__SESSION_TIMEOUT_MS": "3000",
        "NOVA_CLICKHOUSE__DATABASE": database,
        "NOVA_CLICKHOUSE__URL": f"chdb://{tmp_path / 'chdb'}" if backend == "embedded" else SERVER_URL,
    }
    pe = PipelineEnv(env, backend, topic, dlq, database)
    pe.nova("provision", "--yes")
    return pe


def wait_until(predicate: Any, *, timeout: float, interval: float = 1.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def worker_pids(supervisor: Any) -> list[int]:
    """The ingest worker processes of a `nova ingest` (its multiprocessing children, `psutil.Process`)."""
    import psutil

    pids = []
    for child in supervisor.children():
        with contextlib.suppress(psutil.Error):
            if "spawn_main" in " ".join(child.cmdline()):
                pids.append(child.pid)
    return pids
