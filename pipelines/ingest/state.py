"""Per topic-partition ingest state in ClickHouse: ownership claims and the exactly-once bookkeeping.

`ingest_state` is a ReplacingMergeTree keyed by (group_id, topic, partition). Each row belongs to a
**claim**: on assignment a worker writes a row with a new `epoch` for the partition, and every row it
writes for that partition afterwards carries the same epoch (`pipelines.ingest.fencing` explains
why). Ordering never uses the wall clock, which is no order between hosts:

- `epoch` = (generation << 20) | tag: generation is the highest seen for the partition + 1, tag is
  20 bits of a hash of the worker id, so two claims made at once from the same reading (a stalled
  owner and its successor) still differ and compare the same way on every host;
- `seq` orders the rows of one claim (one writer: its own counter);
- `version` = VERSION_FLOOR + epoch is what merges keep: the highest claim's rows, and among rows of
  equal version ReplacingMergeTree keeps the last inserted, i.e. the claim's newest;
- reads take argMax by (version, seq), so they agree with merges before merges happen.

Rows written before claims existed have epoch 0 and a wall-clock version below VERSION_FLOOR: they
order among themselves as they always did and lose to any claimed row.

On a cluster (`ClusterStore`) a partition's state lives on the shard that holds its rows, in the
shard-local replicated `ingest_state` table, written and read on the shard's writer replica: the
protocol above then runs per shard exactly as on one server (the Distributed `ingest_state` is for
people and `nova status`).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass
from operator import methodcaller
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from pipelines.clickhouse.cluster_store import ClusterStore
from pipelines.clickhouse.sql import literal, quote_identifier

if TYPE_CHECKING:
    from pipelines.clickhouse import Store

PENDING = "pending"
COMMITTED = "committed"
CLAIMED = "claimed"  # a claim with nothing to inherit: no batch of this partition was ever recorded
STATE_TABLE = "ingest_state"
STATE_COLUMNS = ("epoch", "seq")  # the columns claims need beyond the original ones (nova provision adds them)
TAG_BITS = 20
VERSION_FLOOR = 1 << 62  # above any wall-clock version in ns (year 2116), below UInt64's end for any epoch


@dataclass(frozen=True)
class PartitionState:
    """The newest record of a partition (of one claim, or over all claims)."""

    partition: int
    begin_offset: int
    end_offset: int
    state: str
    epoch: int = 0
    worker: str = ""


@dataclass
class Range:
    """The offsets of one partition in one batch (valid rows and rejects alike)."""

    begin: int
    end: int
    rows: int = 0
    dlq: int = 0


@dataclass(frozen=True)
class Claims:
    """What `StateStore.claim` established for each partition asked for."""

    epochs: dict[int, int]  # partition → the epoch claimed
    inherited: dict[int, PartitionState]  # partition → the predecessor's newest record; absent: nothing recorded
    lost: set[int]  # partitions where another claim already beats this one (a concurrent claim)


def claim_tag(worker: str) -> int:
    """The low bits of every epoch this worker claims: stable per worker id, on every host."""
    digest = hashlib.blake2b(worker.encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") & ((1 << TAG_BITS) - 1)


def next_epoch(highest: int, tag: int) -> int:
    """An epoch above `highest` (the highest seen for the partition), with this worker's tag."""
    return (((highest >> TAG_BITS) + 1) << TAG_BITS) | tag


class StateStore:
    def __init__(self, store: Store, *, database: str, group_id: str, topic: str, table: str, worker: str) -> None:
        self.store = store
        self.database = database
        self.group_id = group_id
        self.topic = topic
        self.table = table
        self.worker = worker
        self.tag = claim_tag(worker)
        self.cluster = store if isinstance(store, ClusterStore) else None
        self.state_table = self.cluster.local(STATE_TABLE) if self.cluster else STATE_TABLE
        self.qualified = f"{quote_identifier(database)}.{quote_identifier(self.state_table)}"
        self._seq = 0

    def _query(self, partitions: list[int] | None, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """Rows of `sql` (with `%(parts)s` the partitions) from the store, or from each shard holding some of them."""
        if self.cluster is None:
            return self.store.query_rows(sql, {**params, "parts": tuple(partitions or ())})
        cluster = self.cluster
        shards = cluster.by_shard(partitions) if partitions is not None else dict.fromkeys(range(cluster.shard_count))
        rows: list[tuple[Any, ...]] = []
        for shard, parts in shards.items():
            args = {**params, "parts": tuple(parts or ())}
            rows += cluster.on_shard(shard, methodcaller("query_rows", sql, args))
        return rows

    def _records(self, partitions: Iterable[int] | None) -> dict[int, dict[int, PartitionState]]:
        """partition → epoch → the newest record of that claim (few claims survive merges)."""
        if partitions is not None:
            partitions = list(partitions)
            if not partitions:
                return {}
        where = "" if partitions is None else " AND partition IN %(parts)s"
        rows = self._query(
            None if partitions is None else sorted(partitions),
            "SELECT partition, epoch, argMax(begin_offset, (version, seq)), argMax(end_offset, (version, seq)), "
            f"argMax(state, (version, seq)), argMax(worker, (version, seq)) FROM {self.qualified} "
            f"WHERE group_id = %(g)s AND topic = %(t)s{where} GROUP BY partition, epoch",
            {"g": self.group_id, "t": self.topic},
        )
        out: dict[int, dict[int, PartitionState]] = {}
        for p, epoch, begin, end, state, worker in rows:
            out.setdefault(int(p), {})[int(epoch)] = PartitionState(
                int(p), int(begin), int(end), str(state), int(epoch), str(worker)
            )
        return out

    def read(self, partitions: list[int] | None = None) -> dict[int, PartitionState]:
        """The newest record of each partition: that of its highest claim (a CLAIMED row included)."""
        return {p: claims[max(claims)] for p, claims in self._records(partitions).items()}

    def owners(self, partitions: Iterable[int]) -> dict[int, int]:
        """partition → its highest epoch: the claim that may write it. One small indexed query."""
        parts = tuple(sorted(partitions))
        if not parts:
            return {}
        rows = self._query(
            list(parts),
            f"SELECT partition, max(epoch) FROM {self.qualified} "
            "WHERE group_id = %(g)s AND topic = %(t)s AND partition IN %(parts)s GROUP BY partition",
            {"g": self.group_id, "t": self.topic},
        )
        return {int(p): int(e) for p, e in rows}

    def owners_sql(self, partitions: Iterable[int]) -> str:
        """`owners` as a subquery of (partition, epoch) pairs, for an insert the server itself fences.

        On a cluster it reads the shard-local state: run it on the shard that holds `partitions`.
        """
        parts = ", ".join(str(int(p)) for p in sorted(partitions))
        return (
            f"SELECT partition, max(epoch) FROM {self.qualified} WHERE group_id = {literal(self.group_id)} "
            f"AND topic = {literal(self.topic)} AND partition IN ({parts}) GROUP BY partition"
        )

    def claim(self, partitions: list[int]) -> Claims:
        """Claim each partition with an epoch above every earlier one, and return what it inherits.

        The claim row carries the predecessor's newest record, so it stays readable after merges
        keep only the claim. Reading again after writing catches what a stalled predecessor wrote
        in between (carried into a second row) and a concurrent claim that won (`lost`).
        """
        if not partitions:  # cooperative rebalances call on_assign with nothing new
            return Claims(epochs={}, inherited={}, lost=set())
        before = self._records(partitions)
        epochs = {p: next_epoch(max(before.get(p, {0: None})), self.tag) for p in partitions}
        inherited_before = {p: claims[max(claims)] for p, claims in before.items()}
        self._write_rows({p: self._carried(inherited_before.get(p)) for p in partitions}, epochs)
        after = self._records(partitions)
        inherited: dict[int, PartitionState] = {}
        lost: set[int] = set()
        carry: dict[int, tuple[str, Range]] = {}
        for p in partitions:
            claims = after.get(p, {})
            if claims and max(claims) != epochs[p]:
                lost.add(p)
                continue
            older = [e for e in claims if e < epochs[p]]
            # Nothing older left: a merge folded it into this claim's row, which carries `before`.
            newest = claims[max(older)] if older else inherited_before.get(p)
            if newest is not None and newest != inherited_before.get(p):
                carry[p] = self._carried(newest)
            if newest is not None and newest.state != CLAIMED:
                inherited[p] = newest
        if carry:
            self._write_rows(carry, epochs)
        return Claims(epochs=epochs, inherited=inherited, lost=lost)

    @staticmethod
    def _carried(record: PartitionState | None) -> tuple[str, Range]:
        if record is None or record.state == CLAIMED:
            return CLAIMED, Range(-1, -1)
        return record.state, Range(record.begin_offset, record.end_offset)

    def write(self, ranges: dict[int, Range], state: str, epochs: dict[int, int]) -> None:
        """Record `state` for each range, under the epoch this worker claimed for its partition."""
        self._write_rows({p: (state, r) for p, r in ranges.items()}, epochs)

    def _write_rows(self, records: dict[int, tuple[str, Range]], epochs: dict[int, int]) -> None:
        if not records:
            return
        now_ms = int(time.time() * 1000)
        parts = sorted(records)
        n = len(parts)
        seqs = [self._next_seq() for _ in parts]
        data = pa.table(
            {
                "group_id": [self.group_id] * n,
                "topic": [self.topic] * n,
                "partition": pa.array(parts, pa.uint32()),
                "begin_offset": pa.array([records[p][1].begin for p in parts], pa.int64()),
                "end_offset": pa.array([records[p][1].end for p in parts], pa.int64()),
                "state": [records[p][0] for p in parts],
                "rows": pa.array([records[p][1].rows for p in parts], pa.uint64()),
                "dlq": pa.array([records[p][1].dlq for p in parts], pa.uint64()),
                "worker": [self.worker] * n,
                "updated_at": pa.array([now_ms] * n, pa.timestamp("ms", tz="UTC")),  # for people; orders nothing
                "epoch": pa.array([epochs[p] for p in parts], pa.uint64()),
                "seq": pa.array(seqs, pa.uint64()),
                "version": pa.array([VERSION_FLOOR + epochs[p] for p in parts], pa.uint64()),
            }
        )
        target = f"{self.database}.{self.state_table}"
        if self.cluster is None:
            self.store.insert_arrow(target, data)
            return
        shard_of = np.array([self.cluster.shard_of(p) for p in parts])
        for shard in sorted(set(shard_of.tolist())):
            part = data.filter(pa.array(shard_of == shard))
            self.cluster.on_shard(shard, methodcaller("insert_arrow", target, part))

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq
