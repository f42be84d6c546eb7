"""Topic administration: describe, create, grow, reconfigure, delete."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipelines.errors import KafkaError
from pipelines.kafka.clients import admin_client, reason

if TYPE_CHECKING:
    from pipelines.config import Settings


@dataclass
class TopicState:
    name: str
    partitions: int
    replication_factor: int
    config: dict[str, str] = field(default_factory=dict)


def describe_topics(settings: Settings, names: list[str], *, timeout: float = 10.0) -> dict[str, TopicState]:
    """The current state of those of `names` that exist."""
    from confluent_kafka.admin import ConfigResource

    admin = admin_client(settings)
    try:
        metadata = admin.list_topics(timeout=timeout)
    except Exception as exc:
        raise KafkaError(
            f"cannot list topics on {settings.kafka.bootstrap_servers}: {reason(exc)}",
            hint="is Kafka up? `nova stack status`",
        ) from None
    found: dict[str, TopicState] = {}
    for name in names:
        meta = metadata.topics.get(name)
        if meta is None or meta.error is not None:
            continue
        rf = max((len(p.replicas) for p in meta.partitions.values()), default=0)
        found[name] = TopicState(name, len(meta.partitions), rf)
    if found:
        resources = [ConfigResource(ConfigResource.Type.TOPIC, n) for n in found]
        try:
            for resource, future in admin.describe_configs(resources, request_timeout=timeout).items():
                entries = future.result()
                found[resource.name].config = {k: e.value for k, e in entries.items() if e.value is not None}
        except Exception as exc:
            raise KafkaError(f"cannot describe topic configs: {reason(exc)}") from None
    return found


def create_topic(
    settings: Settings, name: str, *, partitions: int, replication_factor: int, config: dict[str, str]
) -> None:
    from confluent_kafka.admin import NewTopic

    admin = admin_client(settings)
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=replication_factor, config=config)],
        operation_timeout=30,
    )
    _wait(futures, f"create topic '{name}'")


def add_partitions(settings: Settings, name: str, *, total: int) -> None:
    from confluent_kafka.admin import NewPartitions

    admin = admin_client(settings)  # keep a reference: the futures need the client alive
    futures = admin.create_partitions([NewPartitions(name, total)], operation_timeout=30)
    _wait(futures, f"grow topic '{name}' to {total} partitions")


def alter_topic_config(settings: Settings, name: str, config: dict[str, str]) -> None:
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

    entries = [ConfigEntry(k, str(v), incremental_operation=AlterConfigOpType.SET) for k, v in config.items()]
    resource = ConfigResource(ConfigResource.Type.TOPIC, name, incremental_configs=entries)
    admin = admin_client(settings)
    futures = admin.incremental_alter_configs([resource])
    _wait(futures, f"alter config of topic '{name}'")


def delete_topics(settings: Settings, names: list[str], *, missing_ok: bool = False) -> None:
    from confluent_kafka import KafkaError as CKafkaError

    if not names:
        return
    admin = admin_client(settings)
    futures = admin.delete_topics(names, operation_timeout=30)
    for name, future in futures.items():
        try:
            future.result()
        except Exception as exc:
            err = exc.args[0] if exc.args else None
            if missing_ok and getattr(err, "code", lambda: None)() == CKafkaError.UNKNOWN_TOPIC_OR_PART:
                continue
            raise KafkaError(f"cannot delete topic '{name}': {reason(exc)}") from None


def _wait(futures: dict[Any, Any], what: str) -> None:
    for future in futures.values():
        try:
            future.result()
        except Exception as exc:
            raise KafkaError(f"cannot {what}: {reason(exc)}") from None
