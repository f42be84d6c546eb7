"""`nova replay`: stream the legacy warehouse's rows into the pipeline's topic, exactly once.

Sources (`parse_source`):
- `legacy`, or `postgresql://…#schema.table`: a server-side cursor ordered by UTC event time;
- files (a path, a directory or a glob) of CSV (with header; `.csv`, `.csv.gz`) or Parquet exports
  of the same table. Files may come in any order and need not be sorted: they are read in bounded
  chunks, each chunk sorted and spilled to a temporary run, and the runs merged (an external sort),
  so the replay order — and what `--resume` continues after — is the same total order as from the
  database. Memory is bounded by the chunk size, disk by the export's size.

The order is total: (UTC event time, txn_ref). Rows are filtered to [since, until) on UTC event time,
mapped to the contract by configs/legacy/mapping.yaml, Confluent-framed with the registered schema
id and produced keyed by card_id, with their original event times. A row that cannot be mapped is
counted by reason and written to the reject file (JSON lines: reason, detail, the original row).

Exactly once: ingest stores each Kafka offset once, so a message produced twice would be stored
twice — replay itself must produce each row once, across crashes. It uses Kafka transactions: a
transactional producer whose transactional.id is derived from the job (source, range, topic), so a
restarted run fences a zombie, and that per batch produces the messages AND a checkpoint (the last
position, counts, the reject file's length) to a compacted checkpoint topic, then commits. `--resume`
reads the job's last committed checkpoint (read_committed) and continues after its position.
Downstream consumers must read with isolation.level=read_committed (librdkafka's default), or they
would see the messages of an aborted batch.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import heapq
import json
import os
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pipelines import kafka
from pipelines.dualrun.legacy import (
    UNPLACEABLE_US,
    LegacyMapping,
    MappedRow,
    Reject,
    ZoneCache,
    json_safe,
    load_mapping,
)
from pipelines.errors import KafkaError, UsageError, WarehouseError
from pipelines.urls import redact_url

if TYPE_CHECKING:
    from pipelines.config import Settings

CHECKPOINT_TOPIC = "nova.replay.checkpoints"
DEFAULT_BATCH_ROWS = 20_000
MAX_BATCH_SECONDS = 1.0  # commit at least this often, so a crash loses little work
SORT_CHUNK_ROWS = 200_000  # rows held in memory per sorted run when replaying files
SAMPLES_PER_REASON = 3

Key = tuple[int, str]  # (UTC µs, txn_ref): the total replay order
OnProgress = Callable[[str, int, int | None], None]  # (stage, done, total) — stage "sort" or "replay"


# ── sources ────────────────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class ReplaySource:
    """Where rows come from: a PostgreSQL table or export files."""

    kind: Literal["postgres", "files"]
    identity: str  # canonical, password-free: part of the job id
    dsn: str = ""
    schema: str = ""
    table: str = ""
    files: tuple[Path, ...] = ()

    def describe(self) -> str:
        if self.kind == "postgres":
            return f"{redact_url(self.dsn)}#{self.schema}.{self.table}"
        return self.identity


def parse_source(text: str, *, settings: Settings, mapping: LegacyMapping) -> ReplaySource:
    """`legacy`, `postgresql://…[#schema.table]`, or a file, directory or glob of CSV/Parquet exports."""
    if text == "legacy":
        dsn, fragment = settings.legacy.dsn, ""
    elif text.startswith(("postgresql://", "postgres://")):
        dsn, _, fragment = text.partition("#")
    else:
        return _file_source(text)
    schema, table = settings.legacy.schema_name, mapping.table
    if fragment:
        parts = fragment.split(".")
        if len(parts) == 1 and parts[0]:
            table = parts[0]
        elif len(parts) == 2 and all(parts):
            schema, table = parts
        else:
            raise UsageError(f"source fragment '#{fragment}' is not '#schema.table' or '#table'")
    identity = f"{redact_url(dsn).split('?')[0]}#{schema}.{table}"
    return ReplaySource("postgres", identity, dsn=dsn, schema=schema, table=table)


_FILE_SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq")


def _file_format(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    raise UsageError(f"{path}: not a CSV (.csv, .csv.gz) or Parquet (.parquet) file")


def _file_source(text: str) -> ReplaySource:
    pattern = os.path.abspath(os.path.expanduser(text))
    if os.path.isdir(pattern):
        found = [p for p in sorted(Path(pattern).iterdir()) if p.name.lower().endswith(_FILE_SUFFIXES)]
    else:
        found = [Path(p) for p in sorted(glob.glob(pattern, recursive=True)) if os.path.isfile(p)]
    if not found:
        raise UsageError(
            f"--source {text}: no such file, and no CSV/Parquet file matches",
            hint="pass `legacy`, postgresql://…#schema.table, or a path/glob of exports",
        )
    for p in found:
        _file_format(p)
    return ReplaySource("files", pattern, files=tuple(found))


class _PostgresRows:
    """Rows of a PostgreSQL table in replay order, through a server-side cursor (bounded memory)."""

    ITERSIZE = 10_000

    def __init__(self, source: ReplaySource, mapping: LegacyMapping, settings: Settings) -> None:
        self.source, self.mapping, self.settings = source, mapping, settings

    def _query(self, select: str, since: datetime, until: datetime, after: Key | None) -> tuple[Any, dict[str, Any]]:
        from psycopg import sql

        m = self.mapping
        local, zone, ident = (sql.Identifier(c) for c in (m.event_time.local_column, m.event_time.zone_column,
                                                           m.key_column))  # fmt: skip
        # The zone test keeps an unknown zone from failing the whole query: such a row is placed at
        # its local time read as UTC (as for files) and rejected by the mapping.
        utc = sql.SQL(
            "(CASE WHEN {zone} IN (SELECT name FROM pg_catalog.pg_timezone_names) "
            "THEN {local} AT TIME ZONE {zone} ELSE {local} AT TIME ZONE 'UTC' END)"
        ).format(zone=zone, local=local)
        # UTC offsets lie within [-12 h, +14 h] (a row with an unknown zone is placed at its local time):
        # the range widened on the raw column lets its index narrow the scan.
        where = [
            sql.SQL("{local} >= %(lo)s AND {local} < %(hi)s").format(local=local),
            sql.SQL("{utc} >= %(since)s AND {utc} < %(until)s").format(utc=utc),
        ]
        params: dict[str, Any] = {
            "lo": since.replace(tzinfo=None) - _MAX_UTC_OFFSET,
            "hi": until.replace(tzinfo=None) + _MAX_UTC_OFFSET,
            "since": since,
            "until": until,
        }
        if after is not None:
            where.append(sql.SQL('({utc}, {ident} COLLATE "C") > (%(after_ts)s, %(after_ref)s)').format(
                utc=utc, ident=ident))  # fmt: skip
            params["after_ts"] = _from_us(after[0])
            params["after_ref"] = after[1]
        columns = sql.SQL(", ").join(sql.Identifier(c) for c in m.columns)
        table = sql.Identifier(self.source.schema, self.source.table)
        if select == "count":
            query = sql.SQL("SELECT count(*) FROM {table} WHERE {where}")
        else:
            # extract(epoch …) is numeric (exact µs) since PostgreSQL 14
            query = sql.SQL('SELECT {columns}, (extract(epoch FROM {utc}) * 1000000)::bigint AS "_utc_us" '
                            'FROM {table} WHERE {where} ORDER BY {utc}, {ident} COLLATE "C"')  # fmt: skip
        return query.format(columns=columns, utc=utc, table=table, ident=ident,
                            where=sql.SQL(" AND ").join(where)), params  # fmt: skip

    def _connect(self) -> Any:
        from psycopg.types.string import TextLoader

        from pipelines.dualrun.legacy import connect

        conn = connect(settings=self.settings, dsn=self.source.dsn)
        # inet as its text (10.1.2.3/24): the mapping wants text, and ipaddress objects are slow to build
        conn.adapters.register_loader("inet", TextLoader)
        return conn

    def count(self, since: datetime, until: datetime, after: Key | None) -> int:
        import psycopg

        query, params = self._query("count", since, until, after)
        with self._connect() as conn:
            try:
                row = conn.execute(query, params).fetchone()
            except psycopg.Error as exc:
                raise _warehouse_error(self.source, exc) from None
        return int(row[0]) if row else 0

    def rows(self, since: datetime, until: datetime, after: Key | None) -> Iterator[tuple[Key, dict[str, Any]]]:
        names = self.mapping.columns
        width = len(names)
        ident = names.index(self.mapping.key_column)
        for batch in _prefetched(self._fetch(since, until, after)):
            for values in batch:
                yield (values[width], values[ident]), dict(zip(names, values[:width], strict=True))

    def _fetch(self, since: datetime, until: datetime, after: Key | None) -> Iterator[list[tuple[Any, ...]]]:
        import psycopg

        query, params = self._query("rows", since, until, after)
        conn = self._connect()
        try:
            with conn.cursor(name=f"nova_replay_{uuid.uuid4().hex[:8]}") as cur:
                conn.execute("SET LOCAL work_mem = '256MB'")  # the ORDER BY sorts the whole range first
                cur.itersize = self.ITERSIZE
                cur.execute(query, params)
                while True:
                    batch = cur.fetchmany(self.ITERSIZE)
                    if not batch:
                        break
                    yield batch
        except psycopg.Error as exc:
            raise _warehouse_error(self.source, exc) from None
        finally:
            conn.close()


def _prefetched(batches: Iterator[Any], depth: int = 3) -> Iterator[Any]:
    """Run `batches` in a thread, `depth` ahead: the server's sort and the network overlap our mapping."""
    import queue
    import threading

    q: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def pump() -> None:
        try:
            for batch in batches:
                while not stop.is_set():
                    try:
                        q.put(("batch", batch), timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(("end", None))
        except BaseException as exc:  # handed to the consuming thread
            q.put(("error", exc))
        finally:
            with contextlib.suppress(Exception):
                batches.close()  # type: ignore[attr-defined]

    thread = threading.Thread(target=pump, name="nova-replay-fetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, item = q.get()
            if kind == "end":
                return
            if kind == "error":
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


_EPOCH_UTC = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_UTC_OFFSET = timedelta(hours=15)  # real zones: -12 h … +14 h
_US = timedelta(microseconds=1)


def _from_us(us: int) -> datetime:
    return _EPOCH_UTC + timedelta(microseconds=us)


def _warehouse_error(source: ReplaySource, exc: BaseException) -> WarehouseError:
    from pipelines.dualrun.legacy import pg_error_text

    reason = pg_error_text(exc)
    hint = None
    if "does not exist" in reason:
        hint = "check the #schema.table of --source (or legacy.schema in configs/nova.yaml)"
    return WarehouseError(f"reading {source.describe()} failed: {reason}", hint=hint)


class _FileRows:
    """Rows of CSV/Parquet exports in replay order: sorted runs of bounded size, merged.

    Every column is read as text (Parquet columns are cast), so CSV and Parquet exports of the same
    table map identically. A vectorised pre-filter on the local time's text drops rows far outside
    the range before any per-row work; rows whose time does not even look like a timestamp are kept
    (to be rejected).
    """

    def __init__(self, source: ReplaySource, mapping: LegacyMapping, *, chunk_rows: int = SORT_CHUNK_ROWS,
                 tmp_dir: Path | None = None) -> None:  # fmt: skip
        self.source, self.mapping, self.chunk_rows, self.tmp_dir = source, mapping, chunk_rows, tmp_dir
        self.columns = mapping.columns
        self._runs: list[Path] = []
        self._memory: tuple[Any, list[Key]] | None = None  # (sorted table, its keys) when one run suffices
        self.selected = 0

    def total_rows(self) -> int | None:
        """Rows in the files (all, not only the range), when cheap: Parquet metadata; None with CSV."""
        parquet = [p for p in self.source.files if _file_format(p) == "parquet"]
        if len(parquet) != len(self.source.files):
            return None
        import pyarrow.dataset as ds

        return int(ds.dataset([str(p) for p in parquet], format="parquet").count_rows())

    def _batches(self) -> Iterator[Any]:
        """RecordBatches of the mapped columns, all as strings, file by file."""
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.csv as pacsv
        import pyarrow.dataset as ds

        wanted = self.columns
        for path in self.source.files:
            if _file_format(path) == "parquet":
                try:
                    dataset = ds.dataset(str(path), format="parquet")
                except (pa.ArrowInvalid, OSError) as exc:
                    raise UsageError(f"{path}: cannot read as Parquet: {exc}") from None
                missing = [c for c in wanted if c not in dataset.schema.names]
                if missing:
                    raise UsageError(f"{path}: no column(s) {', '.join(missing)}",
                                     hint="export the whole card_txn table")  # fmt: skip
                for batch in dataset.to_batches(columns=wanted, batch_size=50_000):
                    try:
                        arrays = [c if pa.types.is_string(c.type) else pc.cast(c, pa.string()) for c in batch.columns]
                    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                        raise UsageError(f"{path}: a column cannot be read as text: {exc}") from None
                    yield pa.RecordBatch.from_arrays(arrays, names=wanted)
                continue
            try:
                reader = pacsv.open_csv(
                    str(path),
                    read_options=pacsv.ReadOptions(block_size=8 << 20),
                    convert_options=pacsv.ConvertOptions(
                        column_types={c: pa.string() for c in wanted},
                        include_columns=wanted,
                        strings_can_be_null=True,
                        quoted_strings_can_be_null=False,  # COPY … CSV: unquoted empty is NULL, "" is ''
                        null_values=[""],
                    ),
                )
            except (pa.ArrowInvalid, OSError, KeyError) as exc:
                raise UsageError(
                    f"{path}: cannot read as CSV with a header holding {', '.join(wanted)}: {exc}",
                    hint="export with COPY (SELECT …) TO … WITH (FORMAT csv, HEADER)",
                ) from None
            try:
                yield from reader
            except pa.ArrowInvalid as exc:
                raise UsageError(f"{path}: malformed CSV: {exc}") from None

    def _near(self, batch: Any, since: datetime, until: datetime) -> Any:
        """The rows whose local time is within a day-ish of the range, or is not a plain timestamp."""
        import pyarrow.compute as pc

        local = batch.column(self.columns.index(self.mapping.event_time.local_column))
        head = pc.replace_substring(pc.utf8_slice_codeunits(local, 0, 19), "T", " ")
        plain = pc.match_substring_regex(local, r"^\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(\.\d{1,6})?$")
        lo = (since - _MAX_UTC_OFFSET).strftime("%Y-%m-%d %H:%M:%S")
        hi = (until + _MAX_UTC_OFFSET).strftime("%Y-%m-%d %H:%M:%S")
        near = pc.and_(pc.greater_equal(head, lo), pc.less_equal(head, hi))
        keep = pc.or_kleene(pc.invert(pc.fill_null(plain, False)), pc.fill_null(near, False))
        return batch.filter(keep)

    def prepare(self, since: datetime, until: datetime, after: Key | None, *, stack: ExitStack,
                on_progress: OnProgress | None = None) -> int:  # fmt: skip
        """Pass 1: read everything once, keep the rows in range after `after`, write them as sorted runs
        (Arrow IPC files of at most `chunk_rows` rows). Returns the rows kept."""
        import pyarrow as pa

        zones = ZoneCache()
        lo, hi = (since - _EPOCH_UTC) // _US, (until - _EPOCH_UTC) // _US
        order_key = self.mapping.order_key
        columns = self.columns
        i_ref = columns.index(self.mapping.key_column)
        i_local = columns.index(self.mapping.event_time.local_column)
        i_zone = columns.index(self.mapping.event_time.zone_column)
        pending: list[Any] = []  # filtered batches of the current run
        keys: list[Key] = []
        scanned = 0
        total = self.total_rows()
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nova-replay-", dir=self.tmp_dir)))
        for batch in self._batches():
            scanned += batch.num_rows
            near = self._near(batch, since, until)
            refs, locals_, zones_ = (near.column(i).to_pylist() for i in (i_ref, i_local, i_zone))
            keep = []
            for ref, local, zone in zip(refs, locals_, zones_, strict=True):
                key = order_key(ref, local, zone, zones)
                ok = (key[0] == UNPLACEABLE_US or lo <= key[0] < hi) and (after is None or key > after)
                keep.append(ok)
                if ok:
                    keys.append(key)
            pending.append(near.filter(pa.array(keep, pa.bool_())))
            if len(keys) >= self.chunk_rows:
                self._runs.append(self._write_run(pending, keys, tmp))
                pending, keys = [], []
            if on_progress:
                on_progress("sort", scanned, total)
        if self._runs and keys:
            self._runs.append(self._write_run(pending, keys, tmp))
        elif keys:
            self._memory = self._sorted(pending, keys)
        return self.selected

    def _sorted(self, batches: list[Any], keys: list[Key]) -> tuple[Any, list[Key]]:
        import pyarrow as pa

        table = pa.Table.from_batches(batches, schema=batches[0].schema) if batches else None
        order = sorted(range(len(keys)), key=keys.__getitem__)
        self.selected += len(keys)
        return table.take(order), [keys[i] for i in order]  # type: ignore[union-attr]

    def _write_run(self, batches: list[Any], keys: list[Key], tmp: Path) -> Path:
        import pyarrow as pa
        import pyarrow.ipc as ipc

        table, ordered = self._sorted(batches, keys)
        table = table.append_column("__utc_us", pa.array([k[0] for k in ordered], pa.int64()))
        table = table.append_column("__ref", pa.array([k[1] for k in ordered], pa.string()))
        path = tmp / f"run-{len(self._runs):05d}.arrow"
        with ipc.new_file(str(path), table.schema) as writer:
            writer.write_table(table, max_chunksize=10_000)
        return path

    def rows(self) -> Iterator[tuple[Key, dict[str, Any]]]:
        """Pass 2: the kept rows in order (a k-way merge of the runs)."""
        names = self.columns
        if self._memory is not None:
            table, keys = self._memory
            values = zip(*(c.to_pylist() for c in table.columns), strict=True)
            for key, row in zip(keys, values, strict=True):
                yield key, dict(zip(names, row, strict=True))
            return
        for key, row in heapq.merge(*(_read_run(p, len(names)) for p in self._runs), key=_first):
            yield key, dict(zip(names, row, strict=True))


def _first(item: tuple[Key, Any]) -> Key:
    return item[0]


def _read_run(path: Path, width: int) -> Iterator[tuple[Key, tuple[Any, ...]]]:
    import pyarrow.ipc as ipc

    with ipc.open_file(str(path)) as reader:
        for i in range(reader.num_record_batches):
            batch = reader.get_batch(i)
            cols = [c.to_pylist() for c in batch.columns]
            for row in zip(*cols, strict=True):
                yield (row[width], row[width + 1]), row[:width]


# ── checkpoints ────────────────────────────────────────────────────────────────────────────────


@dataclass
class Checkpoint:
    """The job's committed progress, stored in the compacted checkpoint topic under the job id."""

    job: str
    source: str
    since: str
    until: str
    topic: str
    position: Key | None = None
    read: int = 0
    produced: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    reject_file: str = ""
    reject_offset: int = 0
    complete: bool = False
    runs: int = 0
    updated_at: str = ""

    def to_json(self) -> bytes:
        data: dict[str, Any] = {
            "job": self.job, "source": self.source, "since": self.since, "until": self.until, "topic": self.topic,
            "position": None if self.position is None else {
                "utc_us": self.position[0], "utc": _from_us(self.position[0]).isoformat()
                if self.position[0] != UNPLACEABLE_US else None, "txn_ref": self.position[1]},
            "read": self.read, "produced": self.produced, "rejected": self.rejected,
            "reject_file": self.reject_file, "reject_offset": self.reject_offset,
            "complete": self.complete, "runs": self.runs, "updated_at": datetime.now(UTC).isoformat(),
        }  # fmt: skip
        return json.dumps(data, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Checkpoint:
        data = json.loads(raw)
        pos = data.get("position")
        return cls(
            job=data["job"], source=data.get("source", ""), since=data.get("since", ""),
            until=data.get("until", ""), topic=data.get("topic", ""),
            position=None if pos is None else (int(pos["utc_us"]), str(pos["txn_ref"])),
            read=int(data.get("read", 0)), produced=int(data.get("produced", 0)),
            rejected={k: int(v) for k, v in (data.get("rejected") or {}).items()},
            reject_file=data.get("reject_file", ""), reject_offset=int(data.get("reject_offset", 0)),
            complete=bool(data.get("complete")), runs=int(data.get("runs", 0)),
            updated_at=data.get("updated_at", ""),
        )  # fmt: skip


def job_id(*, source: ReplaySource, since: datetime, until: datetime, topic: str) -> str:
    """Stable id of a replay job: the same source, range and topic are the same job."""
    text = f"{source.identity}|{since.isoformat()}|{until.isoformat()}|{topic}"
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def ensure_checkpoint_topic(*, settings: Settings, name: str) -> None:

    if name in kafka.describe_topics(settings, [name]):
        return
    try:
        kafka.create_topic(settings, name, partitions=1, replication_factor=_replication(settings), config={
            "cleanup.policy": "compact", "segment.ms": "3600000", "min.cleanable.dirty.ratio": "0.1",
        })  # fmt: skip
    except KafkaError as exc:
        if "already exists" not in str(exc).lower():
            raise


def _replication(settings: Settings) -> int:

    try:
        brokers = len(kafka.admin_client(settings).list_topics(timeout=10).brokers)
    except Exception:
        brokers = 1
    return max(1, min(3, brokers))


def read_checkpoint(*, settings: Settings, topic: str, job: str, timeout_s: float = 120.0) -> Checkpoint | None:
    """The job's last committed checkpoint (read_committed), or None.

    Reads every partition up to its high watermark (taken read_uncommitted, so an open transaction of
    another job delays the read instead of hiding our latest checkpoint behind the stable offset).
    """

    group = f"nova-replay-reader-{uuid.uuid4().hex[:8]}"
    probe = kafka.consumer(settings, group_id=group, **{"isolation.level": "read_uncommitted"})
    reader = kafka.consumer(settings, group_id=group, **{
        "isolation.level": "read_committed", "enable.partition.eof": True, "fetch.wait.max.ms": 10,
    })  # fmt: skip
    latest: Checkpoint | None = None
    try:
        meta = probe.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            return None
        ends: dict[int, int] = {}
        for p in meta.partitions:
            low, high = probe.get_watermark_offsets(kafka.TopicPartition(topic, p), timeout=10, cached=False)
            if high > low:
                ends[p] = high
        if not ends:
            return None
        reader.assign([kafka.TopicPartition(topic, p, kafka.OFFSET_BEGINNING) for p in ends])
        pending = set(ends)
        deadline = time.monotonic() + timeout_s
        key = job.encode()
        while pending:
            if time.monotonic() > deadline:
                raise KafkaError(
                    f"could not read the checkpoint topic '{topic}' to its end within {timeout_s:g}s",
                    hint="another replay may hold a transaction open; retry in a minute",
                )
            msg = reader.poll(0.2)
            if msg is None:
                positions = reader.position([kafka.TopicPartition(topic, p) for p in pending])
                for tp in positions:
                    if tp.offset >= ends[tp.partition]:
                        pending.discard(tp.partition)
                continue
            error, partition, offset = msg.error(), msg.partition() or 0, msg.offset() or 0
            if error is not None:
                if error.code() == kafka.VendorError._PARTITION_EOF:
                    if offset >= ends.get(partition, 0):
                        pending.discard(partition)
                    continue
                raise KafkaError(f"cannot read checkpoint topic '{topic}': {error.str()}")
            if msg.key() == key:
                value = msg.value()
                latest = None if value is None else Checkpoint.from_json(value)
            if offset + 1 >= ends.get(partition, 0):
                pending.discard(partition)
    except kafka.KafkaException as exc:
        raise KafkaError(f"cannot read checkpoint topic '{topic}': {exc.args[0]}") from None
    finally:
        probe.close()
        reader.close()
    return latest


# ── the replay ─────────────────────────────────────────────────────────────────────────────────


@dataclass
class ReplayReport:
    job: str
    source: str
    topic: str
    since: datetime
    until: datetime
    schema_id: int
    resumed_from: Key | None
    read: int = 0  # rows of the range read by this run
    produced: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    samples: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    elapsed_s: float = 0.0
    complete: bool = False
    reject_file: str = ""
    planned: int | None = None
    job_read: int = 0  # the job's totals over all its runs
    job_produced: int = 0
    job_rejected: dict[str, int] = field(default_factory=dict)

    @property
    def rows_per_s(self) -> float:
        return self.read / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "job": self.job, "source": self.source, "topic": self.topic,
            "since": self.since.isoformat(), "until": self.until.isoformat(), "schema_id": self.schema_id,
            "resumed_from": None if self.resumed_from is None else {
                "utc": _from_us(self.resumed_from[0]).isoformat() if self.resumed_from[0] != UNPLACEABLE_US else None,
                "txn_ref": self.resumed_from[1]},
            "read": self.read, "produced": self.produced, "rejected": dict(self.rejected),
            "rejected_total": sum(self.rejected.values()), "samples": self.samples,
            "elapsed_s": round(self.elapsed_s, 3), "rows_per_s": round(self.rows_per_s, 1),
            "complete": self.complete, "reject_file": self.reject_file,
            "job_totals": {"read": self.job_read, "produced": self.job_produced, "rejected": self.job_rejected},
        }  # fmt: skip


class _Rejects:
    """The reject file: JSON lines, flushed per batch; its length is part of the checkpoint.

    A fresh run replaces the file; a resumed run continues it, cut back to `keep_bytes` first: lines
    written after the last committed checkpoint belong to a batch that was rolled back. The file is
    created only when there is something to write.
    """

    def __init__(self, path: Path, *, keep_bytes: int | None, append: bool = False) -> None:
        self.path = path
        self.fh: Any = None
        if keep_bytes is None and not append:
            path.unlink(missing_ok=True)
        elif keep_bytes is not None and path.exists() and path.stat().st_size > keep_bytes:
            os.truncate(path, keep_bytes)
        self.size = path.stat().st_size if path.exists() else 0

    def write(self, *, reason: str, detail: str, row: dict[str, Any], key: Key) -> None:
        if self.fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fh = self.path.open("ab")
        line = {"reason": reason, "detail": detail, "row": json_safe(row)}
        self.fh.write(json.dumps(line, default=str).encode() + b"\n")

    def commit_point(self) -> int:
        if self.fh is not None:
            self.fh.flush()
            self.size = self.fh.tell()
        return self.size

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()


def replay(
    *,
    settings: Settings,
    source: str,
    since: datetime,
    until: datetime,
    topic: str | None = None,
    rate: float | None = None,
    resume: bool = False,
    restart: bool = False,
    reject_file: Path | None = None,
    checkpoint_topic: str = CHECKPOINT_TOPIC,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    sort_chunk_rows: int = SORT_CHUNK_ROWS,
    on_progress: OnProgress | None = None,
    on_notice: Callable[[str], None] | None = None,
) -> ReplayReport:
    """Replay legacy rows of [since, until) into `topic` (default: the pipeline's), exactly once per job."""

    from pipelines.contracts.codec import Encoder
    from pipelines.contracts.registry import open_registry

    if until <= since:
        raise UsageError(f"--until ({until.isoformat()}) must be after --since ({since.isoformat()})")
    if rate is not None and not rate > 0:
        raise UsageError(f"--rate must be positive, got {rate:g}")
    if resume and restart:
        raise UsageError("pass --resume or --restart, not both")
    if batch_rows < 1:
        raise UsageError(f"batch size must be at least 1, got {batch_rows}")
    notice = on_notice or (lambda _m: None)
    topic = topic or settings.pipeline.topic
    mapping = load_mapping(settings=settings)
    src = parse_source(source, settings=settings, mapping=mapping)
    registry = open_registry(settings)
    schema_id, _version, schema = registry.latest(settings.pipeline.subject)
    mapping.check_contract(json.loads(schema.raw))
    encoder = Encoder(schema_id, schema.raw)  # logical types raw: event_time as epoch ms, uuid as text
    map_row = mapping.compile()

    kafka.check_reachable(settings)
    if topic not in kafka.describe_topics(settings, [topic]):
        raise KafkaError(
            f"topic '{topic}' does not exist on {settings.kafka.bootstrap_servers}",
            hint="create it with `nova provision --yes`, or pass --topic",
        )
    ensure_checkpoint_topic(settings=settings, name=checkpoint_topic)
    job = job_id(source=src, since=since, until=until, topic=topic)
    rejects_path = reject_file or settings.state_dir / "replay" / f"{job}.rejects.jsonl"

    # The transactional.id is the job's: initialising it fences a zombie of an earlier run of the same
    # job and aborts its open transaction, so the checkpoint read next is final.
    producer = kafka.producer(settings, **{
        "transactional.id": f"nova-replay-{job}", "transaction.timeout.ms": 60_000, "linger.ms": 20,
    })  # fmt: skip
    try:
        producer.init_transactions(30)
    except kafka.KafkaException as exc:
        raise KafkaError(f"cannot start the transactional producer of replay job {job}: {exc.args[0]}",
                         hint="is Kafka up? `nova stack status`") from None  # fmt: skip
    previous = read_checkpoint(settings=settings, topic=checkpoint_topic, job=job)
    if previous is not None and not resume and not restart:
        state = "completed" if previous.complete else "was interrupted"
        raise UsageError(
            f"replay job {job} ({src.describe()} [{since.isoformat()}, {until.isoformat()}) → {topic}) {state} "
            f"after {previous.produced} produced row(s)",
            hint="pass --resume to continue after its checkpoint, or --restart to replay the whole range again "
            "(the pipeline would store the already-produced rows twice)",
        )
    if resume and previous is None:
        notice(f"no checkpoint for job {job}: starting from the beginning")
    cp = Checkpoint(job=job, source=src.describe(), since=since.isoformat(), until=until.isoformat(), topic=topic,
                    reject_file=str(rejects_path))  # fmt: skip
    continuing = resume and previous is not None
    same_reject_file = continuing and previous is not None and previous.reject_file == str(rejects_path)
    if continuing and previous is not None:
        cp = previous
        cp.reject_file = str(rejects_path)
    cp.runs += 1
    after = cp.position
    report = ReplayReport(job=job, source=src.describe(), topic=topic, since=since, until=until,
                          schema_id=schema_id, resumed_from=after, reject_file=str(rejects_path))  # fmt: skip
    if after is not None:
        notice(f"resuming job {job} after {cp.produced} produced row(s)")

    started = time.perf_counter()
    rejects = _Rejects(rejects_path, keep_bytes=cp.reject_offset if same_reject_file else None, append=continuing)
    with ExitStack() as stack:
        stack.callback(rejects.close)
        if cp.complete:
            rows: Iterable[tuple[Key, dict[str, Any]]] = ()
            report.planned = 0
        elif src.kind == "postgres":
            pg = _PostgresRows(src, mapping, settings)
            report.planned = pg.count(since, until, after)
            rows = pg.rows(since, until, after)
        else:
            files = _FileRows(src, mapping, chunk_rows=sort_chunk_rows)
            report.planned = files.prepare(since, until, after, stack=stack, on_progress=on_progress)
            rows = files.rows()
        if on_progress:
            on_progress("replay", 0, report.planned)
        try:
            _produce_all(producer=producer, rows=rows, map_row=map_row, encoder=encoder, topic=topic,
                         checkpoint_topic=checkpoint_topic, cp=cp, rejects=rejects, report=report, rate=rate,
                         batch_rows=batch_rows, on_progress=on_progress)  # fmt: skip
        except BaseException:
            # Roll the open batch back now rather than leave it to hold back read_committed consumers
            # until the transaction times out.
            with contextlib.suppress(Exception):
                producer.abort_transaction(10)
            raise
    report.elapsed_s = time.perf_counter() - started
    report.complete = True
    report.job_read, report.job_produced, report.job_rejected = cp.read, cp.produced, dict(cp.rejected)
    return report


def _produce_all(
    *, producer: Any, rows: Iterable[tuple[Key, dict[str, Any]]], map_row: Callable[[dict[str, Any]], Any],
    encoder: Any, topic: str, checkpoint_topic: str, cp: Checkpoint, rejects: _Rejects, report: ReplayReport,
    rate: float | None, batch_rows: int, on_progress: OnProgress | None,
) -> None:  # fmt: skip
    """Read and map a batch (≤ batch_rows rows, ≤ MAX_BATCH_SECONDS), then produce it and its checkpoint
    in one transaction. The transaction is open only while producing, not while reading the source."""
    if rate is not None:
        batch_rows = max(1, min(batch_rows, int(rate * MAX_BATCH_SECONDS / 2) or 1))
    errors: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None and len(errors) < 5:
            errors.append(err.str())

    def reject(key: Key, row: dict[str, Any], result: Reject) -> None:
        batch_rejects[result.reason] += 1
        rejects.write(reason=result.reason, detail=result.detail, row=row, key=key)
        samples = report.samples.setdefault(result.reason, [])
        if len(samples) < SAMPLES_PER_REASON:
            samples.append({"txn_ref": key[1], "detail": result.detail})

    started = time.perf_counter()
    read_this_run = 0
    it = iter(rows)
    job_key = cp.job.encode()
    exhausted = False
    previous_key = cp.position
    while not exhausted:
        batch_started = time.monotonic()
        n = 0
        last: Key | None = None
        batch_rejects: Counter[str] = Counter()
        records: list[dict[str, Any]] = []
        sources: list[tuple[Key, dict[str, Any]]] = []
        for key, row in it:
            result = map_row(row) if key != previous_key else _DUPLICATE
            previous_key = key
            if type(result) is MappedRow:
                records.append(result.record)
                sources.append((key, row))
            else:
                reject(key, row, result)
            n += 1
            last = key
            if rate is not None:
                read_this_run += 1
                wait = read_this_run / rate - (time.perf_counter() - started)
                if wait > 0:
                    time.sleep(wait)
            if n >= batch_rows or (n % 256 == 0 and time.monotonic() - batch_started >= MAX_BATCH_SECONDS):
                break
        else:
            exhausted = True
        values = _encode_batch(encoder, records, sources, reject)
        _begin(producer)
        for record, value in values:
            while True:
                try:
                    producer.produce(topic, value, record["card_id"].encode(), on_delivery=delivered)
                    break
                except BufferError:  # local queue full: let librdkafka send some
                    producer.poll(0.05)
        cp.read += n
        cp.produced += len(values)
        for reason, k in batch_rejects.items():
            cp.rejected[reason] = cp.rejected.get(reason, 0) + k
        if last is not None:
            cp.position = last
        cp.complete = exhausted
        cp.reject_offset = rejects.commit_point()
        producer.produce(checkpoint_topic, cp.to_json(), job_key, on_delivery=delivered)
        _commit(producer, errors, cp.job)
        report.read += n
        report.produced += len(values)
        report.rejected.update(batch_rejects)
        if on_progress:
            on_progress("replay", report.read, report.planned)


def _encode_batch(
    encoder: Any, records: list[dict[str, Any]], sources: list[tuple[Key, dict[str, Any]]],
    reject: Callable[[Key, dict[str, Any], Reject], None],
) -> list[tuple[dict[str, Any], bytes]]:  # fmt: skip
    """(record, value) pairs; a record the schema refuses is rejected (encode_error), the rest kept."""
    from pipelines.contracts.codec import EncodeError

    try:
        return list(zip(records, encoder.encode_batch(records), strict=True))
    except EncodeError:
        pass
    out = []
    for record, (key, row) in zip(records, sources, strict=True):
        try:
            out.append((record, encoder.encode(record)))
        except EncodeError as exc:
            reject(key, row, Reject("encode_error", str(exc)))
    return out


_DUPLICATE = Reject("duplicate", "the same txn_ref at the same time again (overlapping exports?)")


def _begin(producer: Any) -> None:

    try:
        producer.begin_transaction()
    except kafka.KafkaException as exc:
        raise _txn_error(exc, "begin a transaction") from None


def _commit(producer: Any, errors: list[str], job: str) -> None:
    """Commit the batch; a failure aborts it (nothing of it becomes visible) and stops the replay."""

    try:
        producer.commit_transaction(60)
    except kafka.KafkaException as exc:
        err = exc.args[0]
        if err.txn_requires_abort():
            with contextlib.suppress(kafka.KafkaException):
                producer.abort_transaction(30)
            detail = f" ({errors[0]})" if errors else ""
            raise KafkaError(
                f"replay job {job}: a batch could not be committed and was rolled back: {err.str()}{detail}",
                hint="fix the cause and re-run with --resume: nothing of the failed batch is visible",
            ) from None
        raise _txn_error(exc, "commit a batch") from None


def _txn_error(exc: Any, what: str) -> KafkaError:
    err = exc.args[0]
    if getattr(err, "fatal", lambda: False)() or "fenced" in err.str().lower():
        return KafkaError(
            f"cannot {what}: {err.str()}",
            hint="another run of the same replay job took over (its producer fenced this one)",
        )
    return KafkaError(f"cannot {what}: {err.str()}", hint="re-run with --resume")
