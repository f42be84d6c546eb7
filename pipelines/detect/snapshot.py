"""Detector state in ClickHouse (`detect_state`): one snapshot per partition, with the offset it reflects.

A snapshot is `Detector.snapshot()` after the detector has processed every valid row of the
partition up to and including `offset` (dead-lettered offsets have no row, and count as seen).
Any snapshot of a partition at a given offset is the same state whoever wrote it, because the
detector is deterministic in the rows it was fed; so readers simply take the newest offset, and a
stalled worker that writes one late does no harm. `config_hash` names the state's format (the
card state does not depend on the rules or the model): a snapshot of another format is ignored,
and the state rebuilt by replay.

The blob is zlib-compressed and base64-encoded: String columns come back as text through
clickhouse-driver, which would not survive arbitrary bytes.
"""

from __future__ import annotations

import base64
import time
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa

from pipelines.clickhouse.sql import quote_identifier

if TYPE_CHECKING:
    from pipelines.clickhouse import Store

SNAPSHOT_TABLE = "detect_state"


@dataclass(frozen=True)
class Snapshot:
    partition: int
    offset: int  # the last offset whose row (if valid) the state reflects
    data: bytes
    saved_at_ms: int


class SnapshotStore:
    """Save and load the detector snapshots of one consumer group's partitions of one topic."""

    def __init__(self, store: Store, *, database: str, group_id: str, topic: str, config_hash: str) -> None:
        self.store = store
        self.table = f"{quote_identifier(database)}.{quote_identifier(SNAPSHOT_TABLE)}"
        self.target = f"{database}.{SNAPSHOT_TABLE}"
        self.group_id = group_id
        self.topic = topic
        self.config_hash = config_hash

    def save(self, partition: int, offset: int, data: bytes, worker: str) -> int:
        """Store one snapshot; returns its encoded size in bytes."""
        blob = base64.b64encode(zlib.compress(data, 1)).decode("ascii")
        now = int(time.time() * 1000)
        self.store.insert_arrow(
            self.target,
            pa.table(
                {
                    "group_id": pa.array([self.group_id], pa.string()),
                    "topic": pa.array([self.topic], pa.string()),
                    "partition": pa.array([partition], pa.uint32()),
                    "offset": pa.array([offset], pa.int64()),
                    "config_hash": pa.array([self.config_hash], pa.string()),
                    "snapshot": pa.array([blob], pa.string()),
                    "worker": pa.array([worker], pa.string()),
                    "saved_at": pa.array([now], pa.timestamp("ms", tz="UTC")),
                    # ReplacingMergeTree keeps the highest; offsets only grow (-1: before the first row).
                    "version": pa.array([offset + 1], pa.uint64()),
                }
            ),
        )
        return len(blob)

    def load(self, partition: int) -> Snapshot | None:
        """The newest snapshot of a partition made with this config, or None."""
        rows = self.store.query_rows(
            f"SELECT offset, snapshot, toUInt64(toUnixTimestamp(saved_at)) * 1000 FROM {self.table} "
            "WHERE group_id = %(g)s AND topic = %(t)s AND partition = %(p)s AND config_hash = %(h)s "
            "ORDER BY offset DESC LIMIT 1",
            {"g": self.group_id, "t": self.topic, "p": partition, "h": self.config_hash},
        )
        if not rows:
            return None
        offset, blob, saved = rows[0]
        return Snapshot(partition, int(offset), zlib.decompress(base64.b64decode(str(blob))), int(saved))
