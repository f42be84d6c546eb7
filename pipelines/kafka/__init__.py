"""Kafka: the only package that imports `confluent_kafka`.

Clients built from the config (`clients`), topic administration (`admin`); the vendor's
value types that callers pass around (`TopicPartition`, offsets, `Message`) are re-exported
here so stage code never imports the vendor package itself.
"""

from __future__ import annotations

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    OFFSET_STORED,
    Consumer,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka import KafkaError as VendorError

from pipelines.kafka.admin import (
    TopicState,
    add_partitions,
    alter_topic_config,
    create_topic,
    delete_topics,
    describe_topics,
)
from pipelines.kafka.clients import admin_client, broker_problem, check_reachable, consumer, producer, reason

__all__ = [
    "OFFSET_BEGINNING",
    "OFFSET_END",
    "OFFSET_STORED",
    "Consumer",
    "KafkaException",
    "Message",
    "Producer",
    "TopicPartition",
    "TopicState",
    "VendorError",
    "add_partitions",
    "admin_client",
    "alter_topic_config",
    "broker_problem",
    "check_reachable",
    "consumer",
    "create_topic",
    "delete_topics",
    "describe_topics",
    "producer",
    "reason",
]
