"""Per topic-partition ingest state in ClickHouse: the exactly-once bookkeeping.

The state table is a ReplacingMergeTree keyed by (group_id, topic, partition); the newest
`version` of a key is its state. Reads use argMax, so they are right before merges too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa

if TYPE_CHECKING:
    from pipelines.clickhouse import Store

PENDING = "pending"
COMMITTED = "committed"
STATE_TABLE = "ingest_state"


@dataclass(frozen=True)
class PartitionState:
    partition: int
    begin_offset: int
    end_offset: int
    state: str


@dataclass
class Range:
    """The offsets of one partition in one batch (valid rows and rejects alike)."""

    begin: int
    end: int
    rows: int = 0
    dlq: int = 0


_last_version = 0


def _version() -> int:
    # Monotonic within a process and ahead of earlier processes (wall clock in ns).
    global _last_version
    _last_version = max(_last_version + 1, time.time_ns())
    return _last_version


class StateStore:
    def __init__(self, store: Store, *, database: str, group_id: str, topic: str, table: str, worker: str) -> None:
        self.store = store
        self.database = database
        self.group_id = group_id
        self.topic = topic
        self.table = table
        self.worker = worker

    def read(self, partitions: list[int] | None = None) -> dict[int, PartitionState]:
        rows = self.store.query_rows(
            f"SELECT partition, argMax(begin_offset, version), argMax(end_offset, version), argMax(state, version) "
            f"FROM `{self.database}`.{STATE_TABLE} WHERE group_id = %(g)s AND topic = %(t)s GROUP BY partition",
            {"g": self.group_id, "t": self.topic},
        )
        states = {int(p): PartitionState(int(p), int(b), int(e), str(s)) for p, b, e, s in rows}
        if partitions is not None:
            states = {p: s for p, s in states.items() if p in partitions}
        return states

    def write(self, ranges: dict[int, Range], state: str) -> None:
        if not ranges:
            return
        now = time.time()
        parts = sorted(ranges)
        n = len(parts)
        data = pa.table(
            {
                "group_id": [self.group_id] * n,
                "topic": [self.topic] * n,
                "partition": pa.array(parts, pa.uint32()),
                "begin_offset": pa.array([ranges[p].begin for p in parts], pa.int64()),
                "end_offset": pa.array([ranges[p].end for p in parts], pa.int64()),
                "state": [state] * n,
                "rows": pa.array([ranges[p].rows for p in parts], pa.uint64()),
                "dlq": pa.array([ranges[p].dlq for p in parts], pa.uint64()),
                "worker": [self.worker] * n,
                "updated_at": pa.array([int(now * 1000)] * n, pa.timestamp("ms", tz="UTC")),
                "version": pa.array([_version() for _ in parts], pa.uint64()),
            }
        )
        self.store.insert_arrow(f"{self.database}.{STATE_TABLE}", data)

    def present_offsets(self, partition: int, begin: int, end: int) -> set[int]:
        """Offsets of [begin, end] the transactions table already holds for this partition."""
        rows = self.store.query_rows(
            f"SELECT _offset FROM `{self.database}`.`{self.table}` "
            f"WHERE _topic = %(t)s AND _partition = %(p)s AND _offset >= %(b)s AND _offset <= %(e)s",
            {"t": self.topic, "p": partition, "b": begin, "e": end},
        )
        return {int(r[0]) for r in rows}
