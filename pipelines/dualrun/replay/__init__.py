"""`nova replay`: stream the legacy warehouse's rows into the pipeline's topic, exactly once.

    report = replay(settings=settings, source="legacy", since=d1, until=d2, resume=True)

`sources` reads the rows in one total order, (UTC event time, txn_ref), from PostgreSQL or from
CSV/Parquet exports; `run` maps them to the contract and produces them; `checkpoint` is the job's
committed progress.

Exactly once: ingest stores each Kafka offset once, so a message produced twice would be stored
twice — replay itself must produce each row once, across crashes. It uses Kafka transactions
(`pipelines.kafka.transactional`): a transactional producer whose transactional.id is derived from
the job (source, range, topic), so a restarted run fences a zombie, and that per batch produces the
messages AND a checkpoint (the last position, counts, the reject file's length) to a compacted
checkpoint topic, then commits. `--resume` reads the job's last committed checkpoint
(read_committed) and continues after its position. Downstream consumers must read with
isolation.level=read_committed (librdkafka's default), or they would see the messages of an
aborted batch.
"""

from __future__ import annotations

from pipelines.dualrun.replay.checkpoint import CHECKPOINT_TOPIC, Checkpoint, Position, job_id, read_checkpoint
from pipelines.dualrun.replay.run import DEFAULT_BATCH_ROWS, MAX_BATCH_SECONDS, ReplayReport, replay
from pipelines.dualrun.replay.sources import (
    SORT_CHUNK_ROWS,
    FileRows,
    Key,
    OnProgress,
    PostgresRows,
    ReplaySource,
    parse_source,
)

__all__ = [
    "CHECKPOINT_TOPIC",
    "DEFAULT_BATCH_ROWS",
    "MAX_BATCH_SECONDS",
    "SORT_CHUNK_ROWS",
    "Checkpoint",
    "FileRows",
    "Key",
    "OnProgress",
    "Position",
    "PostgresRows",
    "ReplayReport",
    "ReplaySource",
    "job_id",
    "parse_source",
    "read_checkpoint",
    "replay",
]
