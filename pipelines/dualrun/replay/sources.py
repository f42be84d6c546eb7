"""Where `nova replay` reads legacy rows from, in one total order: (UTC event time, txn_ref).

- `legacy`, or `postgresql://…#schema.table`: a server-side cursor ordered by UTC event time;
- files (a path, a directory or a glob) of CSV (with header; `.csv`, `.csv.gz`) or Parquet exports
  of the same table. Files may come in any order and need not be sorted: they are read in bounded
  chunks, each chunk sorted and spilled to a temporary run, and the runs merged (an external sort),
  so the replay order — and what `--resume` continues after — is the same total order as from the
  database. Memory is bounded by the chunk size, disk by the export's size.

Both yield `(key, row)` pairs, rows filtered to [since, until) on UTC event time and to keys after
the checkpoint's position.
"""

from __future__ import annotations

import contextlib
import glob
import heapq
import os
import queue
import tempfile
import threading
import uuid
from collections.abc import Callable, Generator, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pipelines.dualrun.mapping import UNPLACEABLE_US, LegacyMapping, Row, ZoneCache
from pipelines.dualrun.warehouse import connect, warehouse_errors
from pipelines.errors import UsageError
from pipelines.urls import redact_url

if TYPE_CHECKING:
    from psycopg import sql

    from pipelines.config import Settings
    from pipelines.dualrun.warehouse import Connection

SORT_CHUNK_ROWS = 200_000  # rows held in memory per sorted run when replaying files

Key = tuple[int, str]  # (UTC µs, txn_ref): the total replay order
OnProgress = Callable[[str, int, int | None], None]  # (stage, done, total) — stage "sort" or "replay"

_EPOCH_UTC = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_UTC_OFFSET = timedelta(hours=15)  # real zones: -12 h … +14 h
_US = timedelta(microseconds=1)


def utc_of(us: int) -> datetime:
    """µs since the epoch (the first part of a Key) → an aware UTC datetime."""
    return _EPOCH_UTC + timedelta(microseconds=us)


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


class PostgresRows:
    """Rows of a PostgreSQL table in replay order, through a server-side cursor (bounded memory)."""

    ITERSIZE = 10_000

    def __init__(self, source: ReplaySource, mapping: LegacyMapping, settings: Settings) -> None:
        self.source, self.mapping, self.settings = source, mapping, settings

    def _query(
        self, select: Literal["count", "rows"], since: datetime, until: datetime, after: Key | None
    ) -> tuple[sql.Composed, dict[str, object]]:
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
        params: dict[str, object] = {
            "lo": since.replace(tzinfo=None) - _MAX_UTC_OFFSET,
            "hi": until.replace(tzinfo=None) + _MAX_UTC_OFFSET,
            "since": since,
            "until": until,
        }
        if after is not None:
            where.append(sql.SQL('({utc}, {ident} COLLATE "C") > (%(after_ts)s, %(after_ref)s)').format(
                utc=utc, ident=ident))  # fmt: skip
            params["after_ts"] = utc_of(after[0])
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

    def _connect(self) -> Connection:
        return connect(settings=self.settings, dsn=self.source.dsn, inet_as_text=True)

    def _failed(self) -> contextlib.AbstractContextManager[None]:
        return warehouse_errors(
            f"reading {self.source.describe()} failed",
            missing_hint="check the #schema.table of --source (or legacy.schema in configs/nova.yaml)",
        )

    def count(self, since: datetime, until: datetime, after: Key | None) -> int:
        """The rows of the range after `after`: what the progress bar counts towards."""
        query, params = self._query("count", since, until, after)
        with self._connect() as conn, self._failed():
            row = conn.execute(query, params).fetchone()
        return int(row[0]) if row else 0

    def rows(self, since: datetime, until: datetime, after: Key | None) -> Iterator[tuple[Key, Row]]:
        """(key, row) in replay order; the database sorts, a thread fetches ahead."""
        names = self.mapping.columns
        width = len(names)
        ident = names.index(self.mapping.key_column)
        for batch in _prefetched(self._fetch(since, until, after)):
            for values in batch:
                yield (values[width], values[ident]), dict(zip(names, values[:width], strict=True))

    def _fetch(
        self, since: datetime, until: datetime, after: Key | None
    ) -> Generator[list[tuple[Any, ...]], None, None]:
        query, params = self._query("rows", since, until, after)
        conn = self._connect()
        try:
            with self._failed(), conn.cursor(name=f"nova_replay_{uuid.uuid4().hex[:8]}") as cur:
                conn.execute("SET LOCAL work_mem = '256MB'")  # the ORDER BY sorts the whole range first
                cur.itersize = self.ITERSIZE
                cur.execute(query, params)
                while True:
                    batch = cur.fetchmany(self.ITERSIZE)
                    if not batch:
                        break
                    yield batch
        finally:
            conn.close()


_T = TypeVar("_T")


def _prefetched(batches: Generator[_T, None, None], depth: int = 3) -> Iterator[_T]:
    """Run `batches` in a thread, `depth` ahead: the server's sort and the network overlap our mapping."""
    q: queue.Queue[tuple[Literal["batch", "end", "error"], Any]] = queue.Queue(maxsize=depth)
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
                batches.close()

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


class FileRows:
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

        # at least one batch: callers sort only runs that kept some keys
        table = pa.Table.from_batches(batches, schema=batches[0].schema)
        order = sorted(range(len(keys)), key=keys.__getitem__)
        self.selected += len(keys)
        return table.take(order), [keys[i] for i in order]

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

    def rows(self) -> Iterator[tuple[Key, Row]]:
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
