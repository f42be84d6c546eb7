"""What `nova status` shows: consumer lag per partition, and how fresh each table is."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from pipelines import kafka
from pipelines.errors import KafkaError

if TYPE_CHECKING:
    from pipelines.config import Settings


def consumer_lag(settings: Settings) -> list[dict[str, int]]:

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
        return rows
    finally:
        consumer.close()


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
