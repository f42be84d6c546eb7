"""Offsets seen from outside a consumer group: what it has committed, where partitions end, who owns what.

For tools that watch a pipeline without being part of it (the load test's produce→queryable
clock, lag, completeness of the dead-letter topic). The watcher's consumer carries the group's id
only to read its commits: it never subscribes, so it never joins the group or takes partitions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipelines.errors import KafkaError
from pipelines.kafka.clients import admin_client, consumer, reason

if TYPE_CHECKING:
    from pipelines.config import Settings

NO_OFFSET = -1  # a partition the group has not committed yet


@dataclass(frozen=True)
class GroupState:
    """A consumer group as the coordinator describes it."""

    state: str  # e.g. STABLE, PREPARING_REBALANCE, EMPTY, DEAD
    members: int
    assigned: frozenset[int]  # partitions of the watched topic some member owns


class OffsetWatcher:
    """Reads a group's committed offsets and a topic's end offsets; one instance per thread."""

    def __init__(self, settings: Settings, *, group_id: str, topic: str, timeout_s: float = 5.0) -> None:
        from confluent_kafka import TopicPartition

        self.group_id = group_id
        self.topic = topic
        self.timeout_s = timeout_s
        self._settings = settings
        self._consumer = consumer(settings, group_id=group_id, **{"client.id": f"nova-watch-{group_id}"})
        self._admin = admin_client(settings)
        try:
            meta = self._consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        except Exception as exc:
            raise KafkaError(f"cannot read the metadata of topic '{topic}': {reason(exc)}") from None
        if meta is None or meta.error is not None or not meta.partitions:
            raise KafkaError(f"topic '{topic}' does not exist", hint="run `nova provision --yes`")
        self.partitions = sorted(meta.partitions)
        self._tps = [TopicPartition(topic, p) for p in self.partitions]

    def committed(self) -> dict[int, int]:
        """Partition → the group's committed offset (the next offset it will read), NO_OFFSET if none."""
        try:
            found = self._consumer.committed(self._tps, timeout=self.timeout_s)
        except Exception as exc:
            raise KafkaError(f"cannot read the offsets group '{self.group_id}' committed: {reason(exc)}") from None
        return {tp.partition: tp.offset if tp.offset >= 0 else NO_OFFSET for tp in found}

    def end_offsets(self) -> dict[int, int]:
        """Partition → its high watermark (the offset the next message will get)."""
        from confluent_kafka import TopicPartition
        from confluent_kafka.admin import OffsetSpec

        latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]
        request = {TopicPartition(self.topic, p): latest for p in self.partitions}
        try:
            futures = self._admin.list_offsets(request, request_timeout=self.timeout_s)
            return {tp.partition: int(f.result().offset) for tp, f in futures.items()}
        except Exception as exc:
            raise KafkaError(f"cannot read the end offsets of topic '{self.topic}': {reason(exc)}") from None

    def group_state(self) -> GroupState:
        """The group's state and which of the topic's partitions its members own."""
        try:
            futures = self._admin.describe_consumer_groups([self.group_id], request_timeout=self.timeout_s)
            description = futures[self.group_id].result()
        except Exception as exc:
            raise KafkaError(f"cannot describe consumer group '{self.group_id}': {reason(exc)}") from None
        assigned = {
            tp.partition
            for member in description.members
            for tp in (member.assignment.topic_partitions if member.assignment else [])
            if tp.topic == self.topic
        }
        state = getattr(description.state, "name", str(description.state))
        return GroupState(state=state, members=len(description.members), assigned=frozenset(assigned))

    def close(self) -> None:
        self._consumer.close()


def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    """Partition → high watermark of `topic` (for a before/after count of what was written)."""
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import OffsetSpec

    admin = admin_client(settings)
    try:
        meta = admin.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            raise KafkaError(f"topic '{topic}' does not exist", hint="run `nova provision --yes`")
        latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]
        request = {TopicPartition(topic, p): latest for p in meta.partitions}
        futures = admin.list_offsets(request, request_timeout=10)
        return {tp.partition: int(f.result().offset) for tp, f in futures.items()}
    except KafkaError:
        raise
    except Exception as exc:
        raise KafkaError(f"cannot read the end offsets of topic '{topic}': {reason(exc)}") from None


def count_containing(
    settings: Settings,
    topic: str,
    *,
    start: dict[int, int],
    end: dict[int, int],
    needle: bytes,
    timeout_s: float = 30.0,
) -> int:
    """Messages in [start, end) per partition whose value contains `needle` (read without a group)."""
    import time

    from confluent_kafka import TopicPartition

    todo = {p: (start.get(p, 0), e) for p, e in end.items() if e > start.get(p, 0)}
    if not todo:
        return 0
    reader = consumer(settings, group_id="nova-count-unused", **{"enable.auto.commit": False})
    try:
        reader.assign([TopicPartition(topic, p, s) for p, (s, _) in todo.items()])
        found = 0
        deadline = time.monotonic() + timeout_s
        while todo:
            if time.monotonic() > deadline:
                raise KafkaError(f"reading topic '{topic}' did not reach its end offsets within {timeout_s:g}s")
            for msg in reader.consume(num_messages=10_000, timeout=0.5):
                if msg.error() is not None:
                    continue
                p, off = msg.partition(), msg.offset()
                if p is None or off is None or p not in todo:
                    continue
                if off < todo[p][1] and needle in (msg.value() or b""):
                    found += 1
                if off + 1 >= todo[p][1]:
                    del todo[p]
        return found
    finally:
        reader.close()
