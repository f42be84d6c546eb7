"""Producing the synthetic stream: valid events and the malformed mix, encoded, to Kafka.

``MessageStream`` is one run's messages without Kafka (the load test's producers pull batches
from it); ``open_message_stream`` builds it from the configuration and the subject's latest
schema; ``generate`` produces it to a topic with every message acknowledged. Values are encoded
column-wise (``contracts.columnar_writer``) when the schema allows, with the codec otherwise;
by count, the report's ``valid`` is exactly what a correct ingest stores.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines import kafka
from pipelines.contracts.codec import Encoder
from pipelines.contracts.columnar_writer import ColumnarEncoder
from pipelines.contracts.reference import load_reference
from pipelines.contracts.registry import RegisteredSchema, open_registry
from pipelines.errors import KafkaError, UsageError
from pipelines.synth.malformed import MALFORMED_KINDS, MalformedMaker, check_malformed, find_unknown_schema_id
from pipelines.synth.model import TransactionChunk, TransactionGenerator

if TYPE_CHECKING:
    from pipelines.config import Settings
    from pipelines.contracts.reference import ReferenceData


class _ChunkEncoder:
    """The fastest encoder for the schema: columnar when it can, the codec's batch encoder otherwise."""

    def __init__(self, schema_id: int, schema: RegisteredSchema | str | Mapping[str, Any]) -> None:
        if isinstance(schema, RegisteredSchema):
            schema = schema.raw
        schema_json: dict[str, Any] = json.loads(schema) if isinstance(schema, str) else dict(schema)
        self.codec = Encoder(schema_id, schema_json)
        self.columnar = ColumnarEncoder(schema_id, schema_json) if ColumnarEncoder.supports(schema_json) else None

    def encode_chunk(self, chunk: TransactionChunk) -> list[bytes]:
        """The chunk's events as wire-format values."""
        if self.columnar is not None:
            return self.columnar.encode_chunk(chunk)
        return self.codec.encode_batch(chunk.records())

    def encode_one(self, record: dict[str, Any]) -> bytes:
        """One record (a malformed one's base) with the codec, which checks it against the schema."""
        return self.codec.encode(record)


@dataclass
class GenerateReport:
    """What `generate()` produced. `valid` is exactly what a correct ingest stores."""

    topic: str
    schema_id: int
    seed: int
    produced: int = 0
    valid: int = 0
    malformed: dict[str, int] = field(default_factory=dict)
    first_event_ms: int | None = None
    last_event_ms: int | None = None
    elapsed_s: float = 0.0

    @property
    def events_per_s(self) -> float:
        return self.produced / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "schema_id": self.schema_id,
            "seed": self.seed,
            "produced": self.produced,
            "valid": self.valid,
            "malformed": dict(self.malformed),
            "first_event_ms": self.first_event_ms,
            "last_event_ms": self.last_event_ms,
            "elapsed_s": round(self.elapsed_s, 3),
            "events_per_s": round(self.events_per_s, 1),
        }


class _Deliveries:
    """The producer's delivery reports, counted; one bound callback for every message."""

    __slots__ = ("failed", "first_error")

    def __init__(self) -> None:
        self.failed = 0
        self.first_error: str | None = None

    def __call__(self, err: kafka.VendorError | None, _msg: kafka.Message) -> None:
        if err is not None:
            self.failed += 1
            if self.first_error is None:
                self.first_error = err.str()


class MessageStream:
    """The messages of one run, without Kafka: valid events and the malformed mix, interleaved.

    `next_batch()` hands out (keys, values) of up to `batch_size` valid events plus the malformed
    messages due among them; the counters say what was handed out. By count, malformed messages
    sit at seeded-random positions of the whole stream; by duration (`count=None`), at
    seeded-random moments in the first 90% of it, the rest going out with `finish()`.
    """

    def __init__(
        self,
        *,
        settings: Settings,
        reference: ReferenceData,
        schema_id: int,
        schema: RegisteredSchema | str | Mapping[str, Any],
        seed: int = 0,
        count: int | None = None,
        duration_s: float | None = None,
        malformed: Mapping[str, int] | None = None,
        start_ms: int | None = None,
        spread_s: float | None = None,
        unknown_schema_id: int = 999_999,
        batch_size: int = 10_000,
        chunks: Iterator[TransactionChunk] | None = None,
    ) -> None:
        if seed < 0:
            raise UsageError(f"the seed must be a non-negative integer, got {seed}")
        rules = settings.pipeline.rules
        wanted = check_malformed(malformed)
        options: dict[str, Any] = {
            "merchants": reference.merchants, "fx_rates": reference.fx_rates,
            "currencies": [c for c in rules.currencies if c in reference.fx_rates],
            "start_ms": start_ms, "spread_s": spread_s,
            "min_amount_minor": rules.min_amount_minor, "max_amount_minor": rules.max_amount_minor,
        }  # fmt: skip
        self.schema_id = schema_id
        self.count = count
        self._encoder = _ChunkEncoder(schema_id, schema)
        # `chunks`: events made elsewhere (a labelled corpus, in event-time order) instead of the model's
        self._chunks = chunks if chunks is not None else TransactionGenerator(seed=seed, **options).chunks(batch_size)
        self.valid = 0
        self.malformed = {k: 0 for k in MALFORMED_KINDS}
        self.first_event_ms: int | None = None
        self.last_event_ms: int | None = None

        total = sum(wanted.values())
        rng = np.random.default_rng([seed, 0x6D61])
        self._kinds = rng.permutation(np.array([k for k in MALFORMED_KINDS for _ in range(wanted[k])], dtype=object))
        if count is not None:
            # stream position of each malformed message → "goes right before valid event #i"
            positions = np.sort(rng.choice(count + total, size=total, replace=False))
            self._due: np.ndarray = positions - np.arange(total)
        else:
            self._due = np.sort(rng.uniform(0, (duration_s or 0) * 0.9, size=total))
        self._next = 0
        self._maker = (
            MalformedMaker(
                generator=TransactionGenerator(seed=seed, stream=1, **options),
                encode=self._encoder.encode_one,
                unknown_schema_id=unknown_schema_id,
                settings=settings,
            )
            if total
            else None
        )

    @property
    def produced(self) -> int:
        return self.valid + sum(self.malformed.values())

    @property
    def done(self) -> bool:
        return self.count is not None and self.valid >= self.count and self._next == len(self._kinds)

    def next_batch(self, elapsed_s: float = 0.0) -> tuple[list[str], list[bytes]]:
        """The next valid events with the malformed ones due among them (by duration: due by `elapsed_s`)."""
        if self.count is not None and self.valid >= self.count:
            return self.finish()
        chunk = next(self._chunks)
        if self.count is not None:
            chunk = chunk[: self.count - self.valid]
        values = self._encoder.encode_chunk(chunk)
        keys = chunk.keys
        n = len(values)
        if n:
            times = chunk.column("event_time")
            lo, hi = int(times.min()), int(times.max())
            self.first_event_ms = lo if self.first_event_ms is None else min(self.first_event_ms, lo)
            self.last_event_ms = hi if self.last_event_ms is None else max(self.last_event_ms, hi)
        if self.count is None:
            self.valid += n
            upto = int(np.searchsorted(self._due, elapsed_s, side="right"))
            extra_keys, extra_values = self._malformed(upto)
            return keys + extra_keys, values + extra_values
        out_keys: list[str] = []
        out_values: list[bytes] = []
        start = self.valid
        done = 0
        end = int(np.searchsorted(self._due, start + n, side="left"))  # due before this chunk's last event
        while self._next < end:
            at = int(self._due[self._next]) - start
            out_keys += keys[done:at]
            out_values += values[done:at]
            done = at
            k, v = self._malformed(self._next + 1)
            out_keys += k
            out_values += v
        out_keys += keys[done:]
        out_values += values[done:]
        self.valid += n
        if self.valid >= self.count:  # those placed after the last valid event
            k, v = self._malformed(len(self._kinds))
            out_keys += k
            out_values += v
        return out_keys, out_values

    def finish(self) -> tuple[list[str], list[bytes]]:
        """Whatever malformed messages are still due."""
        return self._malformed(len(self._kinds))

    def _malformed(self, upto: int) -> tuple[list[str], list[bytes]]:
        keys: list[str] = []
        values: list[bytes] = []
        while self._next < upto:
            assert self._maker is not None
            kind = str(self._kinds[self._next])
            key, value = self._maker.make(kind)
            keys.append(key)
            values.append(value)
            self.malformed[kind] += 1
            self._next += 1
        return keys, values


def _event_window(
    *, settings: Settings, start_ms: int | None, spread_days: float | None
) -> tuple[int | None, float | None]:
    """(start_ms, spread_s) checked against the rules, so no spread event is invalid."""
    if spread_days is None:
        if start_ms is not None:
            raise UsageError("a start needs spread days (events are spread over [start, start + spread days))")
        return None, None
    if not spread_days > 0:
        raise UsageError(f"spread days must be positive, got {spread_days}")
    rules = settings.pipeline.rules
    now_ms = int(time.time() * 1000)
    spread_s = spread_days * 86_400
    if start_ms is None:
        start_ms = now_ms - int(spread_s * 1000)
    if start_ms + spread_s * 1000 > now_ms:
        raise UsageError(
            "start + spread days reaches into the future; ingest would reject those events",
            hint="pick an earlier start or fewer spread days",
        )
    if start_ms < now_ms - rules.max_past_days * 86_400_000 + 3_600_000:
        raise UsageError(
            f"the start is about pipeline.rules.max_past_days ({rules.max_past_days}) days ago or more; "
            "ingest would reject those events",
            hint="pick a later start",
        )
    return start_ms, spread_s


def open_message_stream(
    *,
    settings: Settings,
    seed: int = 0,
    count: int | None = None,
    duration_s: float | None = None,
    malformed: Mapping[str, int] | None = None,
    start_ms: int | None = None,
    spread_days: float | None = None,
    batch_size: int = 10_000,
    chunks: Iterator[TransactionChunk] | None = None,
) -> MessageStream:
    """The configured run's messages, encoded with the subject's latest schema: `generate()` without Kafka.

    With neither `count` nor `duration_s` the stream is endless (the load test's producers use
    that: `keys, values = stream.next_batch()`).
    """
    wanted = check_malformed(malformed)
    start_ms, spread_s = _event_window(settings=settings, start_ms=start_ms, spread_days=spread_days)
    reference = load_reference(settings)
    registry = open_registry(settings)
    schema_id, _version, schema = registry.latest(settings.pipeline.subject)
    return MessageStream(
        settings=settings, reference=reference, schema_id=schema_id, schema=schema, seed=seed, count=count,
        duration_s=duration_s, malformed=wanted, start_ms=start_ms, spread_s=spread_s,
        unknown_schema_id=find_unknown_schema_id(registry) if wanted["unknown_schema_id"] else 999_999,
        batch_size=batch_size, chunks=chunks,
    )  # fmt: skip


def generate(
    *,
    settings: Settings,
    count: int | None = None,
    duration_s: float | None = None,
    rate: float | None = None,
    seed: int = 0,
    topic: str | None = None,
    malformed: Mapping[str, int] | None = None,
    start_ms: int | None = None,
    spread_days: float | None = None,
    on_progress: Callable[[int, float], None] | None = None,
    chunks: Callable[[int], Iterator[TransactionChunk]] | None = None,
) -> GenerateReport:
    """Produce synthetic transactions (plus an exact malformed mix) to Kafka; every message acknowledged.

    Values are Confluent-framed Avro with the latest schema of `settings.pipeline.subject`, keys
    the card id. Stops after `count` valid events or `duration_s` seconds (exactly one of them),
    at most `rate` messages/s. Malformed messages are interleaved at seeded-random positions.
    `start_ms` / `spread_days` spread event times over a past window (`spread_days` alone: the
    last `spread_days` days); otherwise event times are now. `on_progress(produced, elapsed_s)`
    is called a few times a second. `chunks(batch_size)`: the events to produce instead of the
    model's (a labelled corpus). Raises `KafkaError` if any message is not delivered.
    """

    if (count is None) == (duration_s is None):
        raise UsageError("give exactly one of count or duration_s")
    if count is not None and count < 0:
        raise UsageError(f"count must be non-negative, got {count}")
    if duration_s is not None and not duration_s > 0:
        raise UsageError(f"duration must be positive, got {duration_s}")
    if rate is not None and not rate > 0:
        raise UsageError(f"rate must be positive, got {rate}")
    topic = topic or settings.pipeline.topic
    # Pace in slices of ~20 ms of traffic; unpaced, batches of 10k keep "now" event times fresh.
    batch_size = 10_000 if rate is None else int(max(1, min(10_000, rate / 50)))
    stream = open_message_stream(
        settings=settings, seed=seed, count=count, duration_s=duration_s, malformed=malformed,
        start_ms=start_ms, spread_days=spread_days, batch_size=batch_size,
        chunks=chunks(batch_size) if chunks is not None else None,
    )  # fmt: skip

    kafka.check_reachable(settings)
    if topic not in kafka.describe_topics(settings, [topic]):
        raise KafkaError(
            f"topic '{topic}' does not exist on {settings.kafka.bootstrap_servers}",
            hint="create it with `nova provision --yes`, or pass an existing topic",
        )
    deliveries = _Deliveries()
    # Delivery reports of failures only, to one callback set at creation: a Python call per
    # delivered message, or a callback passed per produce(), would cost 15–30% of the rate.
    producer = kafka.producer(settings, **{"delivery.report.only.error": True, "on_delivery": deliveries})
    produce, poll = producer.produce, producer.poll
    sent = 0

    def send(keys: list[str], values: list[bytes]) -> None:
        nonlocal sent
        for key, value in zip(keys, values, strict=True):
            try:
                produce(topic, value, key)
            except BufferError:  # the local queue is full: let librdkafka drain it, then retry
                while True:
                    poll(0.05)
                    try:
                        produce(topic, value, key)
                        break
                    except BufferError:
                        continue
            sent += 1

    started = time.perf_counter()
    last_progress = started
    try:
        while not stream.done:
            elapsed = time.perf_counter() - started
            if duration_s is not None and elapsed >= duration_s:
                break
            if rate is not None:  # token bucket: message k may leave at started + k / rate
                wait = sent / rate - elapsed
                if wait > 0:
                    time.sleep(wait)
                    elapsed = time.perf_counter() - started
            send(*stream.next_batch(elapsed))
            poll(0)
            if deliveries.failed:
                break
            if on_progress is not None and time.perf_counter() - last_progress >= 0.1:
                last_progress = time.perf_counter()
                on_progress(sent, last_progress - started)
        if not deliveries.failed:
            send(*stream.finish())
        while producer.flush(1.0) > 0:
            pass
    except KeyboardInterrupt:
        producer.flush(10.0)
        raise
    except kafka.KafkaException as exc:  # e.g. a fatal idempotence error: nothing more can be sent
        reason = exc.args[0].str() if exc.args and hasattr(exc.args[0], "str") else str(exc)
        raise KafkaError(f"producing to topic '{topic}' failed: {reason}") from None
    elapsed = time.perf_counter() - started
    if deliveries.failed:
        raise KafkaError(
            f"{deliveries.failed} of {sent} message(s) to topic '{topic}' were not delivered: {deliveries.first_error}",
            hint="check the broker (`nova stack status`) and re-run; delivered messages stay on the topic",
        )
    if on_progress is not None:
        on_progress(sent, elapsed)
    return GenerateReport(
        topic=topic, schema_id=stream.schema_id, seed=seed, produced=sent, valid=stream.valid,
        malformed=dict(stream.malformed), first_event_ms=stream.first_event_ms,
        last_event_ms=stream.last_event_ms, elapsed_s=elapsed,
    )  # fmt: skip
