"""Schema subjects pinned in configs/schemas, registered in the configured registry."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from pipelines.ops.provision.plan import Action, PlanItem, run_all

if TYPE_CHECKING:
    from pipelines.config import Settings
    from pipelines.contracts.registry import SchemaRegistry


def plan_schemas(settings: Settings) -> list[PlanItem]:
    """Every subject pinned in configs/schemas (latest version) must be in the configured registry.

    With the default file registry that is the same directory, so the plan says unchanged; with
    an http(s) registry the pinned contracts are registered there (compatibility checked first).
    """
    from pipelines.contracts.registry import FileRegistry, open_registry

    pinned = FileRegistry(settings.configs_dir / "schemas", compatibility=settings.schema_registry.compatibility)
    registry = open_registry(settings)
    level = settings.schema_registry.compatibility
    items = []
    for subject in pinned.subjects():
        schema_str = pinned.latest(subject).schema.raw
        plan = registry.plan_register(subject, schema_str)
        where = f"version {plan.version}" if plan.version is not None else ""
        if plan.id is not None:
            where += f", id {plan.id}"
        if not plan.compatible:
            items.append(PlanItem("schema", subject, "refused", "incompatible: " + "; ".join(plan.messages)))
            continue
        steps: list[Callable[[], object]] = []
        details: list[str] = []
        current = registry.compatibility(subject)
        if current != level:  # an http registry's own default (Apicurio: NONE) must not weaken the contract
            steps.append(partial(registry.set_compatibility, level, subject))
            details.append(f"compatibility {current} → {level}")
        if plan.action != "unchanged":
            steps.append(partial(_register, registry, subject, schema_str))
            details.insert(0, f"{plan.action} {where}".strip())
        if not steps:
            items.append(PlanItem("schema", subject, "unchanged", where))
        else:
            action: Action = "create" if plan.action == "create" else "change"
            items.append(PlanItem("schema", subject, action, ", ".join(details), run_all(steps)))
    return items


def _register(registry: SchemaRegistry, subject: str, schema_str: str) -> None:
    registry.register(subject, schema_str)
