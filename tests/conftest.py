"""Shared fixtures: the CLI helper, settings of an isolated project copy, unique names."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def nova_executable() -> list[str]:
    candidate = Path(sys.executable).parent / "nova"
    if candidate.exists():
        return [str(candidate)]
    found = shutil.which("nova")
    return [found] if found else [sys.executable, "-c", "from cli.main import main; main()"]


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_nova(
    *args: str, expect: int | None = 0, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 600
) -> Result:
    """Invoke `nova` in a subprocess, assert its exit code, return what it printed."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("NOVA_")}
    full_env.update({"COLUMNS": "200", "TERM": "dumb", "NO_COLOR": "1"})
    full_env.update(env or {})
    proc = subprocess.run(
        [*nova_executable(), *args], capture_output=True, text=True, env=full_env, cwd=cwd or REPO, timeout=timeout
    )
    result = Result(proc.returncode, proc.stdout, proc.stderr)
    if expect is not None:
        assert proc.returncode == expect, (
            f"nova {' '.join(args)} exited {proc.returncode}, expected {expect}:\n{result.output}"
        )
    return result


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of configs/ in a temp project root, so a test can edit specs and keep its own state dir."""
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    return tmp_path


# Run alone, after the parallel part of `make test` (see the Makefile): they stop or restart a service
# other tests use (the cluster's hosts, clickhouse-server), start a stack of their own, or judge
# SLOs that a neighbour test's load would decide. Chaos tests (kill -9, SIGSTOP) run in the parallel
# part: what they assert must hold however the machine is loaded. A test marks itself with
# @pytest.mark.serial; these files are serial as a whole.
SERIAL_FILES = {"test_cluster.py", "test_cluster_tiering.py", "test_loadtest.py", "test_stack.py"}


@pytest.hookimpl(tryfirst=True)  # before -m deselects by markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in SERIAL_FILES:
            item.add_marker(pytest.mark.serial)
