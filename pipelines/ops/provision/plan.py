"""What `nova provision` would do: one item per object, each with the step that applies it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

Action = Literal["create", "change", "unchanged", "refused"]


@dataclass
class PlanItem:
    """One topic, schema subject or ClickHouse object, and what provision would do to it."""

    kind: str
    name: str
    action: Action
    detail: str = ""
    apply: Callable[[], None] | None = field(default=None, repr=False)
    # The ClickHouse statements `apply` runs, so the plan can have the server parse them first.
    statements: tuple[str, ...] = field(default=(), repr=False)


@dataclass
class Plan:
    items: list[PlanItem]

    @property
    def refused(self) -> list[PlanItem]:
        return [i for i in self.items if i.action == "refused"]

    @property
    def changes(self) -> list[PlanItem]:
        return [i for i in self.items if i.action in ("create", "change")]

    def counts(self) -> dict[str, int]:
        out = {"create": 0, "change": 0, "unchanged": 0, "refused": 0}
        for item in self.items:
            out[item.action] += 1
        return out


def run_all(steps: Sequence[Callable[[], object]]) -> Callable[[], None]:
    """One step that runs `steps` in order."""

    def run() -> None:
        for step in steps:
            step()

    return run
