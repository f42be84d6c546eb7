"""`nova provision`: plan, then create or reconcile topics, schema subjects and ClickHouse objects.

Never deletes data: shrinking a topic, changing its replication factor, changing a column's
type or a table's engine are refused; lowering a topic's retention (which deletes messages)
needs `allow_data_loss`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

from pipelines import kafka
from pipelines.clickhouse import ddl
from pipelines.contracts.specs import TableSpec, load_tables, load_topics
from pipelines.errors import ProvisionRefused

if TYPE_CHECKING:
    from pipelines.clickhouse import Store
    from pipelines.config import Settings

Action = Literal["create", "change", "unchanged", "refused"]

# Topic configs whose decrease deletes data already in the topic.
_RETENTION_KEYS = ("retention.ms", "retention.bytes")


@dataclass
class PlanItem:
    kind: str
    name: str
    action: Action
    detail: str = ""
    apply: Callable[[], None] | None = field(default=None, repr=False)


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


def template_names(settings: Settings) -> dict[str, str]:
    p = settings.pipeline
    return {"topic": p.topic, "dlq_topic": p.dlq_topic, "table": p.table, "database": settings.clickhouse.database}


def plan_provision(*, settings: Settings, store: Store, allow_data_loss: bool = False) -> Plan:
    """Compare what the specs ask for with what exists; nothing is changed here."""
    names = template_names(settings)
    topics = load_topics(settings.configs_dir / "topics.yaml", names=names)
    tables = load_tables(settings.configs_dir / "clickhouse" / "tables.yaml", names=names)
    items: list[PlanItem] = []
    items += _plan_topics(settings, topics, allow_data_loss=allow_data_loss)
    items += _plan_schemas(settings)
    items += _plan_clickhouse(settings, store, tables)
    return Plan(items)


def apply_plan(plan: Plan, *, on_item: Callable[[PlanItem], None] | None = None) -> None:
    if plan.refused:
        raise _refusal(plan)
    for item in plan.changes:
        assert item.apply is not None
        item.apply()
        if on_item:
            on_item(item)


def _refusal(plan: Plan) -> ProvisionRefused:
    lines = [f"{i.kind} '{i.name}': {i.detail}" for i in plan.refused]
    return ProvisionRefused(
        "provision refused, nothing was changed:\n  " + "\n  ".join(lines),
        hint="fix the spec under configs/, or make the change by hand if you accept the data loss",
    )


def check_plan(plan: Plan) -> None:
    if plan.refused:
        raise _refusal(plan)


# --- Kafka topics -------------------------------------------------------------------------


def _plan_topics(settings: Settings, specs: list, *, allow_data_loss: bool) -> list[PlanItem]:
    existing = kafka.describe_topics(settings, [s.name for s in specs])
    items = []
    for spec in specs:
        current = existing.get(spec.name)
        if current is None:
            detail = f"{spec.partitions} partitions, rf {spec.replication_factor}" + "".join(
                f", {k}={v}" for k, v in spec.config.items()
            )
            items.append(PlanItem("topic", spec.name, "create", detail, _create_topic(settings, spec)))
            continue
        problems: list[str] = []
        changes: list[str] = []
        steps: list[Callable[[], Any]] = []
        if spec.partitions < current.partitions:
            problems.append(
                f"has {current.partitions} partitions; topics.yaml asks for {spec.partitions} — "
                "partitions can't shrink, create a new topic"
            )
        elif spec.partitions > current.partitions:
            changes.append(f"partitions {current.partitions} → {spec.partitions}")
            steps.append(partial(kafka.add_partitions, settings, spec.name, total=spec.partitions))
        if spec.replication_factor != current.replication_factor:
            problems.append(
                f"has replication factor {current.replication_factor}; topics.yaml asks for "
                f"{spec.replication_factor} — reassign replicas with kafka-reassign-partitions"
            )
        diff = {k: v for k, v in spec.config.items() if current.config.get(k) != v}
        for key, value in diff.items():
            old = current.config.get(key)
            if key in _RETENTION_KEYS and _is_decrease(old, value) and not allow_data_loss:
                problems.append(
                    f"{key} {old} → {value} would delete messages already in the topic; "
                    "pass --allow-data-loss to accept"
                )
            else:
                changes.append(f"{key} {old} → {value}")
        if diff:
            steps.append(partial(kafka.alter_topic_config, settings, spec.name, diff))
        if problems:
            items.append(PlanItem("topic", spec.name, "refused", "; ".join(problems)))
        elif changes:
            items.append(PlanItem("topic", spec.name, "change", ", ".join(changes), _run_all(steps)))
        else:
            items.append(PlanItem("topic", spec.name, "unchanged", f"{current.partitions} partitions"))
    return items


def _is_decrease(old: str | None, new: str) -> bool:
    try:
        old_v, new_v = int(old or -1), int(new)
    except ValueError:
        return False
    # -1 means unlimited: anything finite is a decrease.
    return (old_v == -1 and new_v != -1) or (new_v != -1 and new_v < old_v)


def _create_topic(settings: Settings, spec) -> Callable[[], None]:
    return lambda: kafka.create_topic(
        settings, spec.name, partitions=spec.partitions, replication_factor=spec.replication_factor, config=spec.config
    )


def _run_all(steps: Sequence[Callable[[], Any]]) -> Callable[[], None]:
    def run() -> None:
        for step in steps:
            step()

    return run


# --- Schema registry ----------------------------------------------------------------------


def _plan_schemas(settings: Settings) -> list[PlanItem]:
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
        steps: list[Callable[[], Any]] = []
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
            items.append(PlanItem("schema", subject, action, ", ".join(details), _run_all(steps)))
    return items


def _register(registry: Any, subject: str, schema_str: str) -> None:
    registry.register(subject, schema_str)


# --- ClickHouse ---------------------------------------------------------------------------


def _plan_clickhouse(settings: Settings, store: Store, tables) -> list[PlanItem]:
    db = settings.clickhouse.database
    items = []
    db_exists = bool(store.query_rows("SELECT 1 FROM system.databases WHERE name = %(db)s", {"db": db}))
    if not db_exists:
        items.append(
            PlanItem(
                "database",
                db,
                "create",
                store.backend,
                lambda: store.execute(f"CREATE DATABASE IF NOT EXISTS {ddl.quote(db)}"),
            )
        )
        existing_tables: dict[str, str] = {}
    else:
        items.append(PlanItem("database", db, "unchanged", store.backend))
        rows = store.query_rows("SELECT name, engine FROM system.tables WHERE database = %(db)s", {"db": db})
        existing_tables = {name: engine for name, engine in rows}
    for spec in tables.tables:
        items.append(_plan_table(store, db, spec, existing_tables.get(spec.name)))
    for view in tables.views:
        if view.name in existing_tables:
            items.append(PlanItem("view", view.name, "unchanged", f"→ {view.to}"))
        else:
            sql = ddl.render_create_view(view, db)
            items.append(PlanItem("view", view.name, "create", f"→ {view.to}", partial(store.execute, sql)))
    return items


def _plan_table(store: Store, db: str, spec: TableSpec, engine: str | None) -> PlanItem:
    wanted = ddl.render_columns(spec, store.caps)
    if engine is None:
        sql = ddl.render_create_table(spec, db, store.caps)
        settings = _ddl_settings(store)
        detail = f"{spec.engine}, {len(wanted)} columns"
        return PlanItem("table", spec.name, "create", detail, lambda: store.execute(sql, settings=settings))
    wanted_engine = spec.engine.split("(")[0]
    if engine != wanted_engine:
        return PlanItem(
            "table",
            spec.name,
            "refused",
            f"exists with engine {engine}; the spec asks for {wanted_engine} — migrate the data into a new table",
        )
    have = dict(store.table_columns(f"{db}.{spec.name}"))
    problems: list[str] = []
    adds: list[tuple[str, str, str | None]] = []
    previous: str | None = None
    for name, ctype in wanted:
        if name not in have:
            adds.append((name, ctype, previous))
        elif ddl.normalise_type(have[name]) != ddl.normalise_type(ctype):
            problems.append(f"column {name} is {have[name]}, the spec says {ctype} — types are never changed in place")
        previous = name
    if problems:
        return PlanItem("table", spec.name, "refused", "; ".join(problems))
    extra = [n for n in have if n not in dict(wanted)]
    note = f" (kept columns not in the spec: {', '.join(extra)})" if extra else ""
    if adds:
        sqls = [ddl.render_add_column(spec.name, db, n, t, after) for n, t, after in adds]
        settings = _ddl_settings(store)
        return PlanItem(
            "table",
            spec.name,
            "change",
            "add " + ", ".join(f"{n} {t}" for n, t, _ in adds) + note,
            _run_all([partial(store.execute, sql, settings=settings) for sql in sqls]),
        )
    return PlanItem("table", spec.name, "unchanged", f"{len(have)} columns{note}")


def _ddl_settings(store: Store) -> dict[str, int]:
    setting = getattr(store.caps, "low_cardinality_setting", None)
    return {setting: 1} if setting and store.caps.low_cardinality else {}


def provision(
    *,
    settings: Settings,
    store: Store,
    dry_run: bool,
    allow_data_loss: bool = False,
    on_item: Callable[[PlanItem], None] | None = None,
) -> Plan:
    plan = plan_provision(settings=settings, store=store, allow_data_loss=allow_data_loss)
    if not dry_run:
        apply_plan(plan, on_item=on_item)
    return plan
