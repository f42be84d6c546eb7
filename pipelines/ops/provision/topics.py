"""Kafka topics of configs/topics.yaml: create, grow partitions, alter configs; never shrink or delete."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines import kafka
from pipelines.config import check_kafka_name
from pipelines.errors import ConfigError
from pipelines.ops.provision.plan import PlanItem, run_all

if TYPE_CHECKING:
    from pipelines.config import Settings
    from pipelines.contracts.specs import TopicSpec

# Topic configs whose decrease deletes data already in the topic.
_RETENTION_KEYS = ("retention.ms", "retention.bytes")


def check_topic_names(specs: list[TopicSpec], path: Path) -> None:
    """Every topic name (placeholders filled) must be one Kafka accepts; ConfigError naming the spec otherwise."""
    problems = []
    for i, spec in enumerate(specs):
        try:
            check_kafka_name(spec.name)
        except ValueError as exc:
            problems.append(f"{path}: key 'topics.{i}.name': {exc}")
    if problems:
        raise ConfigError("invalid spec:\n  " + "\n  ".join(problems), hint="rename the topic in the spec")


def plan_topics(settings: Settings, specs: list[TopicSpec], *, allow_data_loss: bool) -> list[PlanItem]:
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
        steps: list[Callable[[], object]] = []
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
            items.append(PlanItem("topic", spec.name, "change", ", ".join(changes), run_all(steps)))
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


def _create_topic(settings: Settings, spec: TopicSpec) -> Callable[[], None]:
    return partial(
        kafka.create_topic,
        settings,
        spec.name,
        partitions=spec.partitions,
        replication_factor=spec.replication_factor,
        config=spec.config,
    )
