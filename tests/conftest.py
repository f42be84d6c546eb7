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
