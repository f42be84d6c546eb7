"""Kafka clients built from the config, with vendor errors translated to `KafkaError`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipelines.errors import KafkaError

if TYPE_CHECKING:
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient

    from pipelines.config import Settings


def _conf(settings: Settings, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    conf = settings.kafka.client_config()
    conf.update(extra or {})
    return conf


def admin_client(settings: Settings) -> AdminClient:
    from confluent_kafka.admin import AdminClient

    return AdminClient(_conf(settings))


def producer(settings: Settings, **extra: Any) -> Producer:
    """An idempotent producer (no duplicates from librdkafka's own retries)."""
    from confluent_kafka import Producer

    conf = {
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 20,
        "batch.num.messages": 10000,
        "compression.type": "lz4",
        "queue.buffering.max.messages": 500000,
        "queue.buffering.max.kbytes": 512 * 1024,
    }
    conf.update(extra)
    return Producer(_conf(settings, conf))


def consumer(settings: Settings, *, group_id: str, **extra: Any) -> Consumer:
    from confluent_kafka import Consumer

    conf = {
        "group.id": group_id,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
    }
    conf.update(extra)
    return Consumer(_conf(settings, conf))


def check_reachable(settings: Settings, *, timeout: float = 5.0) -> None:
    """Raise KafkaError naming the bootstrap servers if no broker answers within `timeout`."""
    try:
        admin_client(settings).list_topics(timeout=timeout)
    except Exception as exc:
        raise KafkaError(
            f"Kafka at {settings.kafka.bootstrap_servers} did not answer within {timeout:g}s ({reason(exc)})",
            hint="start the local stack with `nova stack up`, or set kafka.bootstrap_servers",
        ) from None


def reason(exc: BaseException) -> str:
    arg = exc.args[0] if exc.args else exc
    text = getattr(arg, "str", None)
    return text() if callable(text) else str(arg)


def broker_problem(bootstrap: str, *, timeout_s: float = 5.0) -> str | None:
    """Why the broker at `bootstrap` is not serving yet, or None when it lists topics and has brokers.

    For health checks of a broker that may still be starting: refused connections are not logged.
    """
    import logging

    from confluent_kafka.admin import AdminClient

    quiet = logging.getLogger("nova.kafka.librdkafka")
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    conf: dict[str, Any] = {"bootstrap.servers": bootstrap, "logger": quiet}
    admin = AdminClient(conf)
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except Exception as exc:
        return f"the admin client could not list topics on {bootstrap}: {reason(exc)}"
    if not metadata.brokers:
        return "the broker has not registered with the controller yet"
    return None
