"""DDL of nova's tables on a cluster: Replicated engines with the servers' macros, Distributed in front.

For each table of configs/clickhouse/tables.yaml:

- `<name><local_suffix>` on every host (`ON CLUSTER`), engine `Replicated<engine>` with the ZooKeeper
  path of `clickhouse.cluster.replica_path` ({database}/{table} filled in by nova, `{shard}` left to
  each server's macro) and replica name `{replica}`: the replicas of a shard hold the same rows;
- `<name>`, `ENGINE = Distributed(cluster, database, <name><local_suffix>, key)` on every host: reads
  see every shard. The key is the table's Kafka partition column, so a row written through it lands on
  the shard nova's own shard-local writes put it (`ClusterStore.shard_of`); a table without one (alerts,
  scores) is sharded by a hash of its sort key, so rows a Replacing engine should fold together meet
  on one shard. Writes through Distributed are synchronous (`insert_distributed_sync` in the cluster's
  user profile): an insert that returned is on its shard, not in a queue on the host that took it.

The materialized views are shard-local too: each reads its shard's `<table><local_suffix>` and writes
the shard's rollup, which replication copies to the other replicas.

Replicated tables drop an inserted block identical to one of the last
`replicated_deduplication_window` (100) blocks. The transactions table keeps that (its rows carry
their Kafka offset and insert time, so two different batches never form identical blocks, while a
block re-sent as it was is dropped); the rollups switch it off, because two batches can legitimately
aggregate to identical rows (one transaction of the same amount, merchant and minute), and
deduplicating those would lose counts.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from pipelines.clickhouse import ddl
from pipelines.clickhouse.sql import quote_identifier, quote_string

if TYPE_CHECKING:
    from pipelines.config import ClusterSettings
    from pipelines.contracts.specs import TableSpec

_ENGINE = re.compile(r"^\s*(\w*MergeTree)\s*(?:\((.*)\))?\s*$", re.DOTALL)
PARTITION_COLUMNS = ("_partition", "partition")  # the Kafka partition, in the data and in ingest_state
# Engines whose rows are aggregates of many events: identical blocks from different batches are legitimate.
NO_DEDUP_ENGINES = ("SummingMergeTree", "AggregatingMergeTree")


def replica_path(cluster: ClusterSettings, database: str, table: str) -> str:
    """The ZooKeeper path of a local table: `{shard}` left for the server's macro."""
    return cluster.replica_path.replace("{database}", database).replace("{table}", table)


def replicated_engine(spec: TableSpec, cluster: ClusterSettings, database: str, local: str) -> str:
    """`MergeTree` → `ReplicatedMergeTree('<path>', '{replica}')`, engine arguments kept after those two."""
    match = _ENGINE.match(spec.engine)
    if not match:
        raise ValueError(f"table {spec.name}: engine {spec.engine!r} is not a *MergeTree engine")
    base, args = match.group(1), (match.group(2) or "").strip()
    if base.startswith("Replicated"):
        raise ValueError(f"table {spec.name}: engine {spec.engine!r} is already replicated; write the plain engine")
    path = quote_string(replica_path(cluster, database, local))
    extra = f", {args}" if args else ""
    return f"Replicated{base}({path}, {quote_string(cluster.replica_name)}{extra})"


def base_engine(spec: TableSpec) -> str:
    match = _ENGINE.match(spec.engine)
    return match.group(1) if match else spec.engine.split("(")[0]


def table_settings(spec: TableSpec) -> dict[str, int]:
    """MergeTree settings of the local table: deduplication off where identical blocks are legitimate."""
    return {"replicated_deduplication_window": 0} if base_engine(spec) in NO_DEDUP_ENGINES else {}


def shard_key(spec: TableSpec) -> str:
    """What routes a row to its shard: the table's Kafka partition, else a hash of its sort key."""
    names = {name for name, _type in spec.columns}
    column = next((c for c in PARTITION_COLUMNS if c in names), None)
    if column is not None:
        return quote_identifier(column)
    return f"cityHash64({', '.join(ddl.order_expr(e) for e in spec.order_by)})"


def render_create_distributed(spec: TableSpec, cluster: ClusterSettings, database: str, local: str) -> str:
    db = quote_identifier(database)
    args = [quote_identifier(cluster.name), db, quote_identifier(local), shard_key(spec)]
    return (
        f"CREATE TABLE IF NOT EXISTS {db}.{quote_identifier(spec.name)} ON CLUSTER {quote_identifier(cluster.name)} "
        f"AS {db}.{quote_identifier(local)} ENGINE = Distributed({', '.join(args)})"
    )


def localise_select(select: str, database: str, tables: dict[str, str]) -> str:
    """A view's SELECT reading the shard-local tables (`tables`: name → local name) instead of the Distributed ones."""
    db = quote_identifier(database)
    for name, local in sorted(tables.items(), key=lambda kv: -len(kv[0])):
        select = select.replace(f"{db}.{quote_identifier(name)}", f"{db}.{quote_identifier(local)}")
    return select
