"""`nova fraud train` and `nova fraud evaluate` (placeholders until they land)."""

from __future__ import annotations

from pipelines.errors import NovaError


def train_cmd() -> None:
    """Train the fraud model from labelled history."""
    raise NovaError("nova fraud train is not built yet")


def evaluate_cmd() -> None:
    """Evaluate the detector on a labelled corpus."""
    raise NovaError("nova fraud evaluate is not built yet")
