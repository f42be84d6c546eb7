"""`nova provision`: plan, then create or reconcile topics, schema subjects and ClickHouse objects.

Never deletes data: shrinking a topic, changing its replication factor, changing a column's
type or a table's engine are refused; lowering a topic's retention (which deletes messages)
needs `allow_data_loss`.

Never half-applies what it can check: planning validates every name the specs produce, reaches
Kafka, the schema registry and ClickHouse, and has ClickHouse parse each statement; any problem
stops provision before its first change. A change that fails while applying (a broker that goes
away) stops the run and says how far it got; every step is idempotent, so a re-run finishes it.

Modules: `plan` (the plan's items), `topics`, `schemas`, `clickhouse` (one planner each), and `cluster`
(the ClickHouse planner for a cluster: per-host state, `ON CLUSTER` DDL, Replicated and Distributed tables).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from pipelines.clickhouse.cluster_store import ClusterStore
from pipelines.clickhouse.sql import quote_identifier
from pipelines.contracts.specs import load_tables, load_topics
from pipelines.errors import NovaError, ProvisionRefused
from pipelines.ops.provision.clickhouse import check_table_names, plan_clickhouse
from pipelines.ops.provision.cluster import plan_cluster
from pipelines.ops.provision.plan import Action, Plan, PlanItem
from pipelines.ops.provision.schemas import plan_schemas
from pipelines.ops.provision.topics import check_topic_names, plan_topics

if TYPE_CHECKING:
    from pipelines.clickhouse import Store
    from pipelines.config import Settings

__all__ = ["Action", "Plan", "PlanItem", "apply_plan", "check_plan", "plan_provision", "provision", "template_names"]


def template_names(settings: Settings) -> dict[str, str]:
    """The values of the `{topic}`-style placeholders in configs/topics.yaml and clickhouse/tables.yaml."""
    p = settings.pipeline
    d = settings.detection
    return {
        "topic": p.topic, "dlq_topic": p.dlq_topic, "labels_topic": d.labels_topic, "alerts_topic": d.alerts_topic,
        "table": p.table, "database": settings.clickhouse.database,
    }  # fmt: skip


def plan_provision(*, settings: Settings, store: Store, allow_data_loss: bool = False) -> Plan:
    """Compare what the specs ask for with what exists; nothing is changed here.

    Raises ConfigError for a name the specs produce that Kafka or ClickHouse would not take, and
    KafkaError / RegistryError / StoreError when a service can't be reached.
    """
    names = template_names(settings)
    topics_path = settings.configs_dir / "topics.yaml"
    tables_path = settings.configs_dir / "clickhouse" / "tables.yaml"
    topics = load_topics(topics_path, names=names)
    sql_names = {key: quote_identifier(names[key]) for key in ("database", "table")}
    tables = load_tables(tables_path, names=names, sql_names={**names, **sql_names})
    check_topic_names(topics, topics_path)
    check_table_names(tables, tables_path)
    items: list[PlanItem] = []
    items += plan_topics(settings, topics, allow_data_loss=allow_data_loss)
    items += plan_schemas(settings)
    if isinstance(store, ClusterStore):
        items += plan_cluster(store, settings.clickhouse.database, tables)
    else:
        items += plan_clickhouse(store, settings.clickhouse.database, tables)
    return Plan(items)


def check_plan(plan: Plan) -> None:
    """Raise ProvisionRefused (nothing changed) when any item is refused."""
    if plan.refused:
        lines = [f"{i.kind} '{i.name}': {i.detail}" for i in plan.refused]
        hint = "fix the spec under configs/, or make the change by hand if you accept the data loss"
        if any(i.kind == "host" for i in plan.refused):
            hint = "bring the cluster host(s) named above back (or let their replicas catch up), then re-run"
        raise ProvisionRefused("provision refused, nothing was changed:\n  " + "\n  ".join(lines), hint=hint)


def apply_plan(plan: Plan, *, on_item: Callable[[PlanItem], None] | None = None) -> None:
    """Apply every change in order; refuses the whole plan if one item is refused."""
    check_plan(plan)
    changes = plan.changes
    for done, item in enumerate(changes):
        assert item.apply is not None
        try:
            item.apply()
        except NovaError as exc:
            exc.message = (
                f"{item.kind} '{item.name}': {exc.message}\n"
                f"provision stopped after {done} of {len(changes)} change(s); the ones before stay applied"
            )
            rerun = "then re-run nova provision: it is idempotent and finishes the rest"
            exc.hint = f"{exc.hint}; {rerun}" if exc.hint else f"fix the cause, {rerun}"
            raise
        if on_item:
            on_item(item)


def provision(
    *,
    settings: Settings,
    store: Store,
    dry_run: bool,
    allow_data_loss: bool = False,
    on_item: Callable[[PlanItem], None] | None = None,
) -> Plan:
    """Plan, and unless `dry_run` apply: the whole of `nova provision --yes` for scripts and benchmarks."""
    plan = plan_provision(settings=settings, store=store, allow_data_loss=allow_data_loss)
    if not dry_run:
        apply_plan(plan, on_item=on_item)
    return plan
