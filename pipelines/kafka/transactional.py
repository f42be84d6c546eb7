"""Producing exactly once across crashes: a transactional producer and a compacted progress topic.

A job that must never produce a message twice (replay) produces each batch AND a record of its
progress in one Kafka transaction, keyed by the job in a compacted topic; after a crash it reads
the last committed progress and continues after it. This module holds the Kafka side of that:

    ensure_compacted_topic(settings, name)
    producer = open_transactional(settings, transactional_id=..., owner="replay job 1f2e…",
                                  retry_hint="re-run with --resume")
    with producer.transaction():          # commits on exit, aborts on an exception
        producer.send(topic, [(key, value), ...])
        producer.send(progress_topic, [(job_key, progress)])
    last_committed(settings, topic=progress_topic, key=job_key)   # bytes, or None

Vendor errors become `KafkaError` here, with a hint that says whether a retry can succeed (the
`retry_hint` of the owner) or another run of the same job fenced this one.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from confluent_kafka import OFFSET_BEGINNING, KafkaException, TopicPartition
from confluent_kafka import KafkaError as VendorError

from pipelines.errors import KafkaError
from pipelines.kafka.admin import create_topic, describe_topics
from pipelines.kafka.clients import admin_client, consumer, producer, reason

if TYPE_CHECKING:
    from confluent_kafka import Message, Producer

    from pipelines.config import Settings

_DELIVERY_ERRORS_KEPT = 5  # the first few delivery errors explain a failed commit


class TransactionalProducer:
    """A producer whose every message belongs to a transaction; see `open_transactional`."""

    def __init__(self, vendor: Producer, *, owner: str, retry_hint: str) -> None:
        self._producer = vendor
        self._owner = owner
        self._retry_hint = retry_hint
        self._delivery_errors: list[str] = []

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Begin a transaction; commit it when the block ends, abort it if the block or the commit fails.

        Aborting at once (rather than leaving the transaction to time out) keeps read_committed
        consumers of the topics from stalling behind it.
        """
        self._delivery_errors.clear()
        try:
            self._producer.begin_transaction()
        except KafkaException as exc:
            raise self._error(exc, "begin a transaction") from None
        try:
            yield
            self._commit()
        except BaseException:
            self.abort()
            raise

    def send(self, topic: str, messages: Iterable[tuple[bytes, bytes]]) -> int:
        """Produce (key, value) pairs into the open transaction; returns how many. Waits when the queue is full."""
        produce, poll, delivered = self._producer.produce, self._producer.poll, self._delivered
        n = 0
        try:
            for key, value in messages:
                while True:
                    try:
                        produce(topic, value, key, on_delivery=delivered)
                        break
                    except BufferError:  # local queue full: let librdkafka send some
                        poll(0.05)
                n += 1
        except KafkaException as exc:
            raise KafkaError(f"{self._owner}: cannot produce to topic '{topic}': {reason(exc)}",
                             hint=self._retry_hint) from None  # fmt: skip
        return n

    def abort(self, timeout_s: float = 30) -> None:
        """Roll the open transaction back, if any; best effort (the broker aborts it on timeout anyway)."""
        # RuntimeError: librdkafka's IllegalStateException when no transaction is open any more
        with contextlib.suppress(KafkaException, RuntimeError):
            self._producer.abort_transaction(timeout_s)

    def _commit(self) -> None:
        try:
            self._producer.commit_transaction(60)
        except KafkaException as exc:
            err = _vendor_error(exc)
            if err is not None and err.txn_requires_abort():
                detail = f" ({self._delivery_errors[0]})" if self._delivery_errors else ""
                raise KafkaError(
                    f"{self._owner}: a batch could not be committed and was rolled back: {err.str()}{detail}",
                    hint=f"fix the cause and {self._retry_hint}: nothing of the failed batch is visible",
                ) from None
            raise self._error(exc, "commit a batch") from None

    def _delivered(self, err: VendorError | None, _msg: Message) -> None:
        if err is not None and len(self._delivery_errors) < _DELIVERY_ERRORS_KEPT:
            self._delivery_errors.append(err.str())

    def _error(self, exc: KafkaException, what: str) -> KafkaError:
        err = _vendor_error(exc)
        if err is not None and (err.fatal() or "fenced" in err.str().lower()):
            return KafkaError(
                f"{self._owner}: cannot {what}: {reason(exc)}",
                hint=f"another run of {self._owner} took over (its producer fenced this one)",
            )
        return KafkaError(f"{self._owner}: cannot {what}: {reason(exc)}", hint=self._retry_hint)


def open_transactional(
    settings: Settings, *, transactional_id: str, owner: str, retry_hint: str, **conf: Any
) -> TransactionalProducer:
    """A transactional producer, initialised: any earlier producer with the same id is fenced and its
    open transaction aborted, so what `last_committed` reads next is final.

    `owner` names the job in messages ("replay job 1f2e…"); `retry_hint` tells the user how to retry
    it ("re-run with --resume"). `conf` adds or overrides librdkafka settings.
    """
    vendor = producer(settings, **{"transactional.id": transactional_id, **conf})
    try:
        vendor.init_transactions(30)
    except KafkaException as exc:
        raise KafkaError(f"cannot start the transactional producer of {owner}: {reason(exc)}",
                         hint="is Kafka up? `nova stack status`") from None  # fmt: skip
    return TransactionalProducer(vendor, owner=owner, retry_hint=retry_hint)


def _vendor_error(exc: KafkaException) -> VendorError | None:
    arg = exc.args[0] if exc.args else None
    return arg if isinstance(arg, VendorError) else None


def ensure_compacted_topic(settings: Settings, name: str) -> None:
    """Create `name` as a compacted single-partition topic unless it exists (racing creators are fine)."""
    if name in describe_topics(settings, [name]):
        return
    try:
        create_topic(settings, name, partitions=1, replication_factor=_replication(settings), config={
            "cleanup.policy": "compact", "segment.ms": "3600000", "min.cleanable.dirty.ratio": "0.1",
        })  # fmt: skip
    except KafkaError as exc:
        if "already exists" not in str(exc).lower():
            raise


def _replication(settings: Settings) -> int:
    """As many replicas as there are brokers, up to 3: progress must survive a broker."""
    try:
        brokers = len(admin_client(settings).list_topics(timeout=10).brokers)
    except Exception:  # any failure here only means "assume a single broker"; creating the topic reports it
        brokers = 1
    return max(1, min(3, brokers))


def last_committed(settings: Settings, *, topic: str, key: bytes, timeout_s: float = 120.0) -> bytes | None:
    """The value last committed under `key` in `topic` (read_committed), or None: no such key, a
    tombstone, or no such topic.

    Reads every partition up to its high watermark (taken read_uncommitted, so an open transaction of
    another job delays the read instead of hiding our latest value behind the stable offset).
    """
    group = f"nova-progress-reader-{uuid.uuid4().hex[:8]}"
    probe = consumer(settings, group_id=group, **{"isolation.level": "read_uncommitted"})
    reader = consumer(settings, group_id=group, **{
        "isolation.level": "read_committed", "enable.partition.eof": True, "fetch.wait.max.ms": 10,
    })  # fmt: skip
    latest: bytes | None = None
    try:
        meta = probe.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            return None
        ends: dict[int, int] = {}
        for p in meta.partitions:
            low, high = probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)
            if high > low:
                ends[p] = high
        if not ends:
            return None
        reader.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        pending = set(ends)
        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > deadline:
                raise KafkaError(
                    f"could not read topic '{topic}' to its end within {timeout_s:g}s",
                    hint="another job may hold a transaction open on it; retry in a minute",
                )
            msg = reader.poll(0.2)
            if msg is None:
                for tp in reader.position([TopicPartition(topic, p) for p in pending]):
                    if tp.offset >= ends[tp.partition]:
                        pending.discard(tp.partition)
                continue
            error, partition, offset = msg.error(), msg.partition() or 0, msg.offset() or 0
            if error is not None:
                if error.code() == VendorError._PARTITION_EOF:
                    if offset >= ends.get(partition, 0):
                        pending.discard(partition)
                    continue
                raise KafkaError(f"cannot read topic '{topic}': {error.str()}")
            if msg.key() == key:
                latest = msg.value()
            if offset + 1 >= ends.get(partition, 0):
                pending.discard(partition)
    except KafkaException as exc:
        raise KafkaError(f"cannot read topic '{topic}': {reason(exc)}") from None
    finally:
        probe.close()
        reader.close()
    return latest
