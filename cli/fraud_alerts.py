"""`nova fraud alerts` (placeholder until the detection runtime lands)."""

from __future__ import annotations

from pipelines.errors import NovaError


def alerts_cmd() -> None:
    """List recent fraud alerts."""
    raise NovaError("nova fraud alerts is not built yet")
