"""What `nova status` shows: consumer lag per partition, and how fresh each table is."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from pipelines import kafka
from pipelines.errors import KafkaError

if TYPE_CHECKING:
    from pipelines.config import Settings


# A lag this small may be only transaction markers (control records: offsets, never messages).
# Reading that tail tells; a larger lag is reported as the offset difference, unread.
TAIL_PROBE_MAX = 1000
TAIL_PROBE_S = 3.0


def consumer_lag(settings: Settings) -> list[dict[str, int]]:
    """Per partition: the group's committed offset, the end offset, and the messages left to consume.

    `end − committed` overstates the lag after a transactional producer: the marker that closes
    each transaction takes an offset but is never delivered, so a consumer that has everything
    sits one offset (or more) short of the end forever. Small lags are therefore measured by
    reading the tail with a read_committed consumer (outside the group, committing nothing).
    """
    p = settings.pipeline
    consumer = kafka.consumer(settings, group_id=p.group_id)
    try:
        meta = consumer.list_topics(p.topic, timeout=10)
        topic = meta.topics.get(p.topic)
        if topic is None or topic.error is not None:
            raise KafkaError(f"topic '{p.topic}' does not exist", hint="run `nova provision --yes`")
        tps = [kafka.TopicPartition(p.topic, i) for i in sorted(topic.partitions)]
        committed = consumer.committed(tps, timeout=10)
        rows = []
        for tp in committed:
            low, high = consumer.get_watermark_offsets(tp, timeout=10)
            pos = tp.offset if tp.offset >= 0 else low
            rows.append({"partition": tp.partition, "committed": tp.offset, "end": high, "lag": max(0, high - pos)})
    finally:
        consumer.close()
    tail = {r["partition"]: (max(r["committed"], 0), r["end"]) for r in rows if 0 < r["lag"] <= TAIL_PROBE_MAX}
    if tail:
        left = messages_left(settings, p.topic, tail)
        for r in rows:
            r["lag"] = left.get(r["partition"], r["lag"])
    return rows


def messages_left(settings: Settings, topic: str, ranges: dict[int, tuple[int, int]]) -> dict[int, int]:
    """partition → how many messages a read_committed consumer gets from [start, end); only the
    partitions read to their end within TAIL_PROBE_S (the others are left out)."""
    probe = kafka.consumer(
        settings, group_id=f"{settings.pipeline.group_id}.status-probe", **{"isolation.level": "read_committed"}
    )
    try:
        probe.assign([kafka.TopicPartition(topic, part, start) for part, (start, _end) in ranges.items()])
        left = dict.fromkeys(ranges, 0)
        open_ = set(ranges)
        deadline = time.monotonic() + TAIL_PROBE_S
        while open_ and time.monotonic() < deadline:
            for m in probe.consume(num_messages=TAIL_PROBE_MAX, timeout=0.2):
                part, offset = m.partition(), m.offset()
                if m.error() is None and part is not None and offset is not None and offset < ranges[part][1]:
                    left[part] += 1
            for tp in probe.position([kafka.TopicPartition(topic, part) for part in sorted(open_)]):
                if tp.offset >= ranges[tp.partition][1]:  # past the end: markers included
                    open_.discard(tp.partition)
        return {part: n for part, n in left.items() if part not in open_}
    finally:
        probe.close()


def pipeline_status(*, settings: Settings) -> dict[str, Any]:
    from pipelines.clickhouse import open_store

    partitions = consumer_lag(settings)
    db = settings.clickhouse.database
    tables = []
    with open_store(settings) as store:
        for name, time_col, insert_col in (
            (settings.pipeline.table, "event_time", "_ingested_at"),
            ("alerts", "event_time", "alerted_at"),
        ):
            rows = store.query_rows(f"SELECT count(), max({time_col}), max({insert_col}) FROM {db}.{name}")
            count, newest, newest_insert = rows[0]
            freshness = time.time() - newest_insert.timestamp() if count and newest_insert else None
            tables.append(
                {
                    "table": name,
                    "rows": int(count),
                    "newest_event": newest if count else None,
                    "newest_insert": newest_insert if count else None,
                    "freshness_s": freshness,
                }
            )
    return {
        "group": settings.pipeline.group_id,
        "topic": settings.pipeline.topic,
        "partitions": partitions,
        "total_lag": sum(r["lag"] for r in partitions),
        "tables": tables,
    }
