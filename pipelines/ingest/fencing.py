"""Fencing: a worker that lost a partition never leaves rows of it that its successor also writes.

The failure this answers: a worker is stalled (SIGSTOP, a long GC, a frozen VM) past its group
session; Kafka gives its partitions to another worker, which resumes from the ingest state; then
the stalled one wakes up and, before librdkafka tells it that it was evicted, finishes what it was
doing — records `pending`, inserts its batch, records `committed`. Measured before this module:
whole batch ranges stored by both owners in 2 runs of 5. Kafka's own fencing (a stale member's
offset commit is refused) does not reach ClickHouse, and Debian's clickhouse-server 18.16 offers
no transactions, no compare-and-set and no insert deduplication tokens; so ownership is recorded
in ClickHouse itself and checked by the server at the moment rows are written.

1. **Claims.** On assignment a worker claims each partition in `ingest_state` with an epoch above
   every earlier one (`pipelines.ingest.state`: highest seen + 1, ties broken by a hash of the
   worker id, never the wall clock). The highest epoch of a partition is its owner.
2. **Checks.** Before each state write the worker checks that its claims are still the highest
   (`Fence.owned`, one small indexed SELECT per batch). A partition claimed by someone else is
   *fenced*: its rows are dropped from the batch, its offsets are not committed, the status
   counts it; if Kafka still assigns it to this worker (a tie lost to a stalled claimer), the
   worker leaves and rejoins the group, so that Kafka, not a race, decides its next owner.
3. **The server checks the insert.** On a server the batch goes first into this worker's staging
   table (ENGINE = Memory, `_ingest_stage_<pid>_<tag>_<host>`), then
   `INSERT INTO transactions … SELECT … FROM stage WHERE (_partition, _epoch) IN (owners)`: the
   ownership test runs inside the server, when the insert starts, so a client stalled at any point
   — accumulating, after `pending`, while sending, before committing — cannot write a partition
   claimed while it was stalled. Every row carries `_epoch`, its writer's claim.
4. **The successor waits out inserts already running.** An insert that passed its test just before
   a claim may still be writing. A successor recovering a `pending` range first waits until every
   fenced insert into the table that was running when it claimed (`system.processes`) has finished,
   then reads which offsets are stored: a row lands either before that read (and is skipped) or not
   at all.
5. **Detect and repair.** Should a range still hold an offset under two epochs (a case the steps
   above do not cover: a server whose `system.processes` does not show the insert, such as one
   behind a Distributed table), the copies not of the highest epoch are deleted (`ALTER TABLE …
   DELETE`, asynchronous on every version: `system.mutations` is polled until done), never the
   last copy. Checked by the successor over the range it recovers, and by a fenced writer over the
   batch it may have written. The rollup and alert tables that materialized views fill from the
   table are not repaired by this: the steps above exist so that it is never needed.

The embedded store (chdb) lets one process open a path, so no successor can even start while the
stalled worker holds it; there the insert is a plain insert right after the ownership check.
`insert_deduplication_token` (ClickHouse ≥ 22.2, with `non_replicated_deduplication_window` on a
plain MergeTree) would make a retried insert of the *same* block a no-op, but not a successor's: it
re-reads the range in different batches and inserts only the missing offsets, so its blocks differ;
and 18.16 lacks it. nova relies on the offset check (`_without_stored`) for retries instead.

**On a cluster** (`ClusterStore`) each Kafka partition lives on one shard (`_partition % shards`, the
Distributed tables' sharding key), and every step above runs on that shard's writer replica against
its shard-local tables: the staging table is created there, the `INSERT … SELECT` and its ownership
subquery read and write that shard's replicated `ingest_state` and transactions tables, step 4 looks
at that host's `system.processes` (every fenced insert of the shard runs there, since every worker
picks the same writer), and step 5 deletes on the shard (the mutation replicates). So the protocol is
the single server's, once per shard; writing through the Distributed table instead would lose step 3
(the insert would be forwarded after the check, from a queue on the initiating host) and step 4.
A batch spanning shards is one insert per shard: should one fail, the retry filters what the other
stored (`_without_stored` reads each partition's copies on its shard). The replicated transactions
table also drops a block identical to one of its last 100 (same rows, same order): a second net under
a retried identical insert, but it does not cover a successor's, whose blocks differ (see above).
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import time
from collections.abc import Callable, Iterable
from functools import partial
from operator import methodcaller
from typing import TYPE_CHECKING, TypeVar

from pipelines.clickhouse.cluster_store import ClusterStore
from pipelines.clickhouse.sql import literal, quote_identifier
from pipelines.errors import StoreError
from pipelines.ingest.state import claim_tag

if TYPE_CHECKING:
    import pyarrow as pa

    from pipelines.clickhouse import Store
    from pipelines.ingest.state import StateStore

T = TypeVar("T")
STAGE_PREFIX = "_ingest_stage_"
INFLIGHT_WAIT_S = 60.0  # a fenced insert still running after this long: go on, and rely on step 5
MUTATION_WAIT_S = 120.0
_POLL_S = 0.05
UNKNOWN_TABLE = 60


def _slug(text: str) -> str:
    return re.sub(r"[^0-9A-Za-z]", "_", text)[:40]


class Fence:
    """Ownership checks, server-checked inserts, waiting out in-flight inserts, duplicate repair."""

    def __init__(self, store: Store, state: StateStore, *, database: str, table: str, worker: str) -> None:
        self.store = store
        self.state = state
        self.database = database
        # On a cluster every step runs per shard, on its writer, against the shard-local table.
        self.cluster = store if isinstance(store, ClusterStore) else None
        self.table = self.cluster.local(table) if self.cluster else table
        self.target = f"{quote_identifier(database)}.{quote_identifier(self.table)}"
        # chdb: one process per path, so nobody else can write while this worker lives.
        self.server_checked = store.backend != "chdb"
        self._host = _slug(socket.gethostname())
        self.stage_name = f"{STAGE_PREFIX}{os.getpid()}_{claim_tag(worker)}_{self._host}"
        self.stage = f"{quote_identifier(database)}.{quote_identifier(self.stage_name)}"
        self._staged_rows: dict[int, int] = {}

    def _shards(self) -> list[int]:
        return list(range(self.cluster.shard_count)) if self.cluster else [0]

    def _on(self, shard: int, call: Callable[[Store], T]) -> T:
        """`call` with the store that holds shard `shard` (the only store off a cluster)."""
        return self.cluster.on_shard(shard, call) if self.cluster else call(self.store)

    def _shard_of(self, partition: int) -> int:
        return self.cluster.shard_of(partition) if self.cluster else 0

    def prepare(self) -> None:
        """Create this worker's staging table afresh (the table's columns may have grown), and drop
        those of dead processes on this host (a worker of another host drops its host's)."""
        if not self.server_checked:
            return
        for shard in self._shards():
            try:
                self._on(shard, self._prepare_on)
            except StoreError as exc:
                # A shard without a writer right now (a replica down, the other one behind): its stage
                # is created by the first insert there, which waits for the shard like any other write.
                if self.cluster is None or not exc.retryable:
                    raise

    def _prepare_on(self, store: Store) -> None:
        for (name,) in store.query_rows(
            "SELECT name FROM system.tables WHERE database = %(db)s AND position(name, %(prefix)s) = 1",
            {"db": self.database, "prefix": STAGE_PREFIX},
        ):
            pid, _, rest = str(name)[len(STAGE_PREFIX) :].partition("_")
            host = rest.partition("_")[2]
            if host == self._host and pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                store.execute(f"DROP TABLE IF EXISTS {quote_identifier(self.database)}.{quote_identifier(name)}")
        self._create_stage(store)

    def _create_stage(self, store: Store) -> None:
        store.execute(f"DROP TABLE IF EXISTS {self.stage}")
        store.execute(f"CREATE TABLE {self.stage} AS {self.target} ENGINE = Memory")

    def close(self) -> None:
        if self.server_checked and not self.store.closed:
            for shard in self._shards():
                with contextlib.suppress(StoreError):  # the server may be the reason we are closing
                    self._on(shard, methodcaller("execute", f"DROP TABLE IF EXISTS {self.stage}"))

    def owned(self, epochs: dict[int, int]) -> set[int]:
        """The partitions of `epochs` whose highest claim is still this worker's."""
        if not self.server_checked:
            # chdb: no other process can open the store, so no claim can follow ours while we run;
            # skipping the two SELECTs a batch saves ~25 ms of each flush (issue 11, measured).
            return set(epochs)
        owners = self.state.owners(epochs)
        return {p for p, e in epochs.items() if owners.get(p) == e}

    def insert(self, table: pa.Table, epochs: dict[int, int]) -> bool:
        """Insert the batch; on a server, rows of partitions another worker has claimed are dropped.

        Returns False when the outcome is unknown (the server restarted between staging and
        inserting, emptying the Memory table): the caller retries with the offsets already stored
        filtered out, as after any failed insert.
        """
        if not self.server_checked:
            # chdb: the check before `pending` was this batch's; no other process can claim since.
            self.store.insert_arrow(f"{self.database}.{self.table}", table)
            return True
        if self.cluster is None:
            return self._insert_on(self.store, 0, table, epochs)
        import pyarrow as pa

        shard_of = table["_partition"].to_numpy() % self.cluster.shard_count
        complete = True
        for shard in sorted(set(shard_of.tolist())):
            rows = table.filter(pa.array(shard_of == shard))
            mine = {p: e for p, e in epochs.items() if self._shard_of(p) == shard}
            complete &= self._on(shard, partial(self._insert_on, shard=shard, table=rows, epochs=mine))
        return complete

    def _insert_on(self, store: Store, shard: int, table: pa.Table, epochs: dict[int, int]) -> bool:
        try:
            self._stage(store, shard, table)
        except StoreError as exc:
            if exc.code != UNKNOWN_TABLE:
                raise
            # dropped under us (by hand, a cleanup that took us for dead), or a new writer replica
            self._create_stage(store)
            self._stage(store, shard, table)
        cols = ", ".join(quote_identifier(c) for c in table.column_names)
        store.execute(
            f"INSERT INTO {self.target} ({cols}) SELECT {cols} FROM {self.stage} "
            f"WHERE (_partition, _epoch) IN ({self.state.owners_sql(epochs)})"
        )
        # clickhouse-driver reconnects silently after a server restart; a restart also empties the
        # stage. Still holding every staged row means the INSERT … SELECT above saw them all.
        return int(store.query_scalar(f"SELECT count() FROM {self.stage}") or 0) == self._staged_rows.get(shard)

    def _stage(self, store: Store, shard: int, table: pa.Table) -> None:
        store.execute(f"TRUNCATE TABLE {self.stage}")
        self._staged_rows[shard] = store.insert_arrow(self.stage, table)

    def wait_for_inflight(self, timeout_s: float = INFLIGHT_WAIT_S) -> bool:
        """Wait until every server-checked insert into the table running now has finished (step 4).

        Inserts that start later test ownership after this worker's claim, so they cannot write its
        partitions. False if some were still running after `timeout_s`.
        """
        if not self.server_checked:
            return True
        deadline = time.monotonic() + timeout_s
        return all(self._on(shard, partial(self._drain, deadline=deadline)) for shard in self._shards())

    def _drain(self, store: Store, deadline: float) -> bool:
        prefix = f"INSERT INTO {self.target} "
        running = {
            str(r[0])
            for r in store.query_rows(
                "SELECT query_id FROM system.processes WHERE position(query, %(prefix)s) = 1", {"prefix": prefix}
            )
        }
        while running:
            if time.monotonic() > deadline:
                return False
            time.sleep(_POLL_S)
            running &= {
                str(r[0])
                for r in store.query_rows(
                    "SELECT query_id FROM system.processes WHERE query_id IN %(ids)s", {"ids": tuple(sorted(running))}
                )
            }
        return True

    def copies(self, topic: str, partition: int, begin: int, end: int) -> dict[int, list[int]]:
        """offset → the epochs of its stored copies, for offsets [begin, end] of one partition."""
        rows = self._on(
            self._shard_of(partition),
            methodcaller(
                "query_rows",
                f"SELECT _offset, _epoch FROM {self.target} "
                "WHERE _topic = %(t)s AND _partition = %(p)s AND _offset >= %(b)s AND _offset <= %(e)s",
                {"t": topic, "p": partition, "b": begin, "e": end},
            ),
        )
        out: dict[int, list[int]] = {}
        for offset, epoch in rows:
            out.setdefault(int(offset), []).append(int(epoch))
        return out

    def repair(self, topic: str, partition: int, copies: dict[int, list[int]]) -> int:
        """Delete the copies of each offset that are not of its highest epoch; returns how many.

        Never the last copy: the highest epoch's stays. Copies under one epoch (one writer twice)
        cannot be told apart by epoch and are left for a person (counted in the return value as 0).
        """
        keep = {o: max(es) for o, es in copies.items() if len(es) > 1 and es.count(max(es)) == 1}
        if not keep:
            return 0
        doomed = sum(len(copies[o]) - 1 for o in keep)
        runs = _runs(sorted(copies), keep)
        where = " OR ".join(f"(_offset BETWEEN {a} AND {b} AND _epoch != {e})" for a, b, e in runs)
        sql = (
            f"ALTER TABLE {self.target} DELETE WHERE _topic = {literal(topic)} AND _partition = {int(partition)} "
            f"AND ({where})"
        )
        shard = self._shard_of(partition)
        self._on(shard, methodcaller("execute", sql))
        self._on(shard, self._wait_for_mutations)
        return doomed

    def _wait_for_mutations(self, store: Store) -> None:
        deadline = time.monotonic() + MUTATION_WAIT_S
        while store.query_scalar(
            "SELECT count() FROM system.mutations WHERE database = %(db)s AND table = %(t)s AND is_done = 0",
            {"db": self.database, "t": self.table},
        ):
            if time.monotonic() > deadline:
                raise StoreError(
                    f"the delete of duplicate rows in {self.database}.{self.table} did not finish "
                    f"within {MUTATION_WAIT_S:.0f}s",
                    hint="see system.mutations on the server; the rows are deleted once it completes",
                    retryable=True,
                )
            time.sleep(0.2)


def _runs(offsets: Iterable[int], keep: dict[int, int]) -> list[tuple[int, int, int]]:
    """Maximal [first, last] spans of stored offsets that all keep the same epoch, as (first, last, epoch).

    A span may cover offsets with no stored copy (dead-lettered): nothing there to delete. It never
    covers a stored offset that is not duplicated, whose single copy must stay whatever its epoch.
    """
    runs: list[tuple[int, int, int]] = []
    for o in offsets:
        e = keep.get(o)
        if e is None:
            if runs and runs[-1][2] != -1:
                runs.append((o, o, -1))  # a barrier: the next span starts fresh
            continue
        if runs and runs[-1][2] == e:
            runs[-1] = (runs[-1][0], o, e)
        else:
            runs.append((o, o, e))
    return [r for r in runs if r[2] != -1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
