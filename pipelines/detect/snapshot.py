"""Detector state in ClickHouse (`detect_state`): one snapshot per partition, with the offset it reflects.

A snapshot is `Detector.snapshot()` after the detector has processed every valid row of the
partition up to and including `offset` (dead-lettered offsets have no row, and count as seen).
Any snapshot of a partition at a given offset is the same state whoever wrote it, because the
detector is deterministic in the rows it was fed; so readers simply take the newest offset, and a
stalled worker that writes one late does no harm. `config_hash` names the state's format (the
card state does not depend on the rules or the model): a snapshot of another format is ignored,
and the state rebuilt by replay.

The blob is zstd-compressed (level 1) and base64-encoded, prefixed `zstd:<raw size>:`: String
columns come back as text through clickhouse-driver, which would not survive arbitrary bytes.
zstd rather than zlib: on a 79k-card state (27.7 MB) zlib level 1 took 308 ms for 9.3 MB, zstd
level 1 79 ms for 8.6 MB, and snapshots were the largest part of what the detector added to a
catch-up worker. A blob without the prefix is the earlier zlib format, still read.
"""

from __future__ import annotations

import base64
import time
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa

from pipelines.clickhouse.sql import quote_identifier
from pipelines.errors import StoreError

if TYPE_CHECKING:
    from pipelines.clickhouse import Store

SNAPSHOT_TABLE = "detect_state"
_ZSTD = "zstd:"


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
        blob = encode_blob(data)
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
        return Snapshot(partition, int(offset), decode_blob(str(blob)), int(saved))


def encode_blob(data: bytes) -> str:
    """A snapshot's bytes as the text `detect_state` stores (see the module docstring)."""
    packed = pa.Codec("zstd", compression_level=1).compress(data, asbytes=True)
    return f"{_ZSTD}{len(data)}:" + base64.b64encode(packed).decode("ascii")


def decode_blob(blob: str) -> bytes:
    """The bytes of `encode_blob`'s text, or of the earlier format (zlib, no prefix); StoreError if corrupt."""
    try:
        if not blob.startswith(_ZSTD):
            return zlib.decompress(base64.b64decode(blob))
        size, _, text = blob[len(_ZSTD) :].partition(":")
        out: bytes = pa.Codec("zstd").decompress(base64.b64decode(text), decompressed_size=int(size), asbytes=True)
    except (ValueError, OSError, zlib.error, pa.ArrowException) as exc:  # binascii.Error: ValueError; zstd: OSError
        raise StoreError(f"detector snapshot is unreadable ({exc})", hint="rebuild the state by replay") from None
    return out
