"""The dead-letter topic: what is in it, exporting it for repair, and re-publishing fixed events.

A rejected message keeps its original bytes and key; headers say why (`nova.reason`,
`nova.rule`, `nova.detail`) and where it came from (`nova.source.topic|partition|offset`).
Dead-lettering is at-least-once (a worker killed between producing it and recording its
batch re-sends it), so everything here counts a message once per source coordinate.
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from pipelines import kafka
from pipelines.errors import KafkaError, UsageError

if TYPE_CHECKING:
    from pipelines.config import Settings


@dataclass
class DeadLetter:
    source: tuple[str, int, int]
    reason: str
    rule: str
    detail: str
    key: bytes | None
    value: bytes
    failed_at: int

    def as_dict(self) -> dict[str, Any]:
        t, p, o = self.source
        return {
            "source_topic": t,
            "source_partition": p,
            "source_offset": o,
            "reason": self.reason,
            "rule": self.rule,
            "detail": self.detail,
            "failed_at": self.failed_at,
        }


@dataclass
class DlqSummary:
    topic: str
    messages: int  # as stored, re-sends included
    unique: int
    by_reason: dict[str, int]
    by_rule: dict[str, int]
    samples: list[dict[str, Any]] = field(default_factory=list)


def read_dead_letters(settings: Settings, *, topic: str | None = None) -> Iterator[DeadLetter]:
    """Every message in the dead-letter topic, oldest first, re-sends skipped."""

    topic = topic or settings.pipeline.dlq_topic
    consumer = kafka.consumer(settings, group_id="nova-dlq-reader", **{"enable.auto.commit": False})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            raise KafkaError(f"dead-letter topic '{topic}' does not exist", hint="run `nova provision --yes`")
        ends: dict[int, int] = {}
        tps = []
        for p in meta.partitions:
            low, high = consumer.get_watermark_offsets(kafka.TopicPartition(topic, p), timeout=10)
            if high > low:
                ends[p] = high
                tps.append(kafka.TopicPartition(topic, p, low))
        consumer.assign(tps)
        seen: set[tuple[str, int, int]] = set()
        while ends:
            for msg in consumer.consume(num_messages=5000, timeout=1.0):
                if msg.error():
                    continue
                p = cast(int, msg.partition())
                if cast(int, msg.offset()) >= ends.get(p, -1) - 1:
                    ends.pop(p, None)
                raw_headers = cast(list[tuple[str, bytes]], msg.headers() or [])
                h = {k: v.decode("utf-8", "replace") for k, v in raw_headers}
                source = (
                    h.get("nova.source.topic", "?"),
                    int(h.get("nova.source.partition", -1)),
                    int(h.get("nova.source.offset", -1)),
                )
                if source in seen:
                    continue
                seen.add(source)
                yield DeadLetter(
                    source,
                    h.get("nova.reason", "unknown"),
                    h.get("nova.rule", ""),
                    h.get("nova.detail", ""),
                    msg.key(),
                    msg.value() or b"",
                    int(h.get("nova.failed_at", 0)),
                )
    finally:
        consumer.close()


def summarize(*, settings: Settings, samples: int = 5, reason: str | None = None) -> DlqSummary:
    by_reason: Counter[str] = Counter()
    by_rule: Counter[str] = Counter()
    picked: list[dict[str, Any]] = []
    per_reason: Counter[str] = Counter()
    for dl in read_dead_letters(settings):
        if reason and dl.reason != reason:
            continue
        by_reason[dl.reason] += 1
        if dl.rule:
            by_rule[dl.rule] += 1
        if per_reason[dl.reason] < samples:
            per_reason[dl.reason] += 1
            picked.append(dl.as_dict())
    unique = sum(by_reason.values())
    return DlqSummary(settings.pipeline.dlq_topic, unique, unique, dict(by_reason), dict(by_rule), picked)


def export(*, settings: Settings, out: Path, reason: str | None = None) -> int:
    """Write dead letters as JSON lines; decodable ones carry `record` to edit and re-publish."""
    from pipelines.contracts.codec import DecodeError, Decoder
    from pipelines.contracts.registry import open_registry

    decoder = Decoder(open_registry(settings))
    n = 0
    with out.open("w") as fh:
        for dl in read_dead_letters(settings):
            if reason and dl.reason != reason:
                continue
            row = dl.as_dict()
            try:
                row["record"] = decoder.decode(dl.value)
            except DecodeError:
                row["value_base64"] = base64.b64encode(dl.value).decode()
            if dl.key is not None:
                row["key"] = dl.key.decode("utf-8", "replace")
            fh.write(json.dumps(row, default=str) + "\n")
            n += 1
    return n


def republish(
    *, settings: Settings, file: Path | None = None, reason: str | None = None, original: bool = False
) -> int:
    """Produce fixed events (from an edited export) or the original bytes back to the source topic."""
    from pipelines.contracts.codec import encode
    from pipelines.contracts.registry import open_registry

    if (file is None) == (not original):
        raise UsageError("pass either --file FIXED.jsonl (edited records) or --original (re-send as they were)")
    producer = kafka.producer(settings)
    failures: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(err.str())

    n = 0
    if original:
        for dl in read_dead_letters(settings):
            if reason and dl.reason != reason:
                continue
            producer.produce(
                settings.pipeline.topic,
                value=dl.value,
                key=dl.key,
                on_delivery=delivered,
                headers=[("nova.republished_from", f"{dl.source[0]}/{dl.source[1]}/{dl.source[2]}")],
            )
            producer.poll(0)
            n += 1
    else:
        assert file is not None
        registry = open_registry(settings)
        latest = registry.latest(settings.pipeline.subject)
        schema_id, schema = latest.id, latest.schema.parsed
        from fastavro.validation import validate

        for lineno, line in enumerate(file.read_text().splitlines(), 1):
            if not line.strip():
                continue
            row = json.loads(line)
            record = row.get("record")
            if record is None:
                raise UsageError(
                    f"{file}:{lineno}: no 'record' to publish (undecodable message)",
                    hint="fix it by hand into a 'record' object, or drop the line",
                )
            try:
                validate(record, schema, raise_errors=True)
            except Exception as exc:
                raise UsageError(f"{file}:{lineno}: record does not match the schema: {exc}") from None
            producer.produce(
                settings.pipeline.topic,
                value=encode(record, schema_id, schema),
                key=str(record.get("card_id", "")).encode(),
                on_delivery=delivered,
                headers=[
                    (
                        "nova.republished_from",
                        f"{row.get('source_topic')}/{row.get('source_partition')}/{row.get('source_offset')}",
                    )
                ],
            )
            producer.poll(0)
            n += 1
    producer.flush(30)
    if failures:
        raise KafkaError(f"{len(failures)} of {n} re-published message(s) failed: {failures[0]}")
    return n
