"""The embedded backend: chdb, the ClickHouse engine in this process, storing under one path.

Only one process may open a path (the engine locks PATH/status), and one process can host only one
path at a time; several stores on that path inside one process are fine. Everything the engine
writes (data, tmp, user_files, format schemas) stays under PATH, never /var/lib/clickhouse.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipelines.clickhouse import chtypes
from pipelines.clickhouse.base import Store
from pipelines.clickhouse.capabilities import Capabilities
from pipelines.clickhouse.sql import literal, quote_identifier
from pipelines.errors import StoreError

# A ClickHouse server config (XML) inside PATH that the engine loads when the file exists: where
# the disks and storage policies of tiered tables are declared (`nova tier-migrate` writes it).
ENGINE_CONFIG = "engine-config.xml"
# Inserts of fewer rows go as ArrowStream bytes through send_insert(): every chdb insert pays a
# fixed CPU cost, measured (2026-12-04, 4 columns, medians of 40) 4.4-5.0 ms through the Python()
# table function and 2.4-2.9 ms as ArrowStream from 1 to 1,000 rows, and no worse at 10,000 and
# 50,000 (7.9 against 8.7 ms, 19.9 against 21.5). The worker's per-batch writes (claims, state,
# alerts) are of this kind; the transactions' own big inserts keep the path measured for them.
STREAM_INSERT_ROWS = 10_000
# path → number of open stores in this process (the engine is shared between them).
_open_paths: dict[str, int] = {}
_open_lock = threading.Lock()
_CODE = re.compile(r"Code:\s*(\d+)")
_FIX = (
    "stop that process, or run clickhouse-server for several processes: `nova stack up --with clickhouse-server` "
    "and clickhouse.url: clickhouse://default:@127.0.0.1:19000/nova"
)


def _holder_of(path: Path) -> int | None:
    """PID of another process holding the engine lock on `path`, or None if it is free.

    Probing the lock first avoids the engine's own failure, which prints to stderr and reports
    only "Error initializing EmbeddedServer".
    """
    status = path / "status"
    try:
        fd = os.open(status, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            m = re.search(r"PID:\s*(\d+)", Path(status).read_text(errors="replace"))
            pid = int(m.group(1)) if m else -1
            return None if pid == os.getpid() else pid
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _locked_error(path: Path, pid: int) -> StoreError:
    who = f"process {pid}" if pid > 0 else "another process"
    return StoreError(
        f"the embedded ClickHouse store at {path} is held by {who} (another nova process, e.g. a running "
        "`nova ingest`); chdb lets only one process open it",
        hint=_FIX,
    )


def _translate(exc: BaseException, what: str = "") -> StoreError:
    text = str(exc).strip()
    m = _CODE.search(text)
    code = int(m.group(1)) if m else None
    message = re.sub(r"^Code:\s*\d+\.\s*", "", text)
    message = re.sub(r"^DB::Exception:\s*", "", message)
    return StoreError(f"{what}{message}" if what else message, code=code)


class ChdbStore(Store):
    """chdb-backed store; see the module docstring for its one-process rule."""

    backend = "chdb"

    def __init__(self, *, url: str, path: Path | None, database: str, scratch: Path) -> None:
        from chdb.state import sqlitelike

        self._sqlitelike = sqlitelike
        self.path = path
        key = str(path) if path is not None else ":memory:"
        base = path if path is not None else scratch
        if "?" in str(base) or "&" in str(base):
            raise StoreError(f"the chdb path {base} contains '?' or '&'", hint="choose a path without them")
        options = {
            "user_files_path": base / "user_files",
            "tmp_path": base / "tmp",
            "format_schema_path": base / "format_schemas",
            "user_scripts_path": base / "user_scripts",
        }
        # Disks and storage policies live in a server config; once a table uses one, every
        # process opening PATH must load the same file, so its presence alone decides.
        if (base / ENGINE_CONFIG).exists():
            options["config-file"] = base / ENGINE_CONFIG
        self._conn_str = key + "?" + "&".join(f"{k}={v}" for k, v in options.items())
        with _open_lock:
            if path is not None:
                path.mkdir(parents=True, exist_ok=True)
                if not _open_paths.get(key):
                    pid = _holder_of(path)
                    if pid is not None:
                        raise _locked_error(path, pid)
            else:
                base.mkdir(parents=True, exist_ok=True)
            self._conn = self._connect(path)
            _open_paths[key] = _open_paths.get(key, 0) + 1
        self._key = key
        try:
            version = self._scalar("SELECT version()")
            settings = {str(r[0]) for r in self._rows("SELECT name FROM system.settings")}
            timezone = str(self._scalar("SELECT timezone()"))
        except StoreError:
            self._release()
            raise
        super().__init__(
            url=url,
            database=database,
            caps=Capabilities.from_version(str(version), settings=settings, timezone=timezone),
        )

    def _connect(self, path: Path | None) -> Any:
        try:
            return self._sqlitelike.connect(self._conn_str)
        except Exception as exc:  # chdb raises RuntimeError with the engine's message
            text = str(exc)
            if path is not None and ("Cannot lock file" in text or "EmbeddedServer" in text):
                pid = _holder_of(path)
                if pid is not None:
                    raise _locked_error(path, pid) from None
                m = re.search(r"initialized with path '([^']*)'", text)
                if m:
                    raise StoreError(
                        f"this process already has the embedded ClickHouse store at {m.group(1)} open; "
                        f"chdb serves one path per process, so {path} cannot be opened as well",
                        hint="close the other store first (Store.close()), or use one chdb path",
                    ) from None
            raise _translate(exc, "cannot open the embedded ClickHouse store: ") from None

    def _release(self) -> None:
        with _open_lock:
            try:
                self._conn.close()
            finally:
                _open_paths[self._key] = max(0, _open_paths.get(self._key, 1) - 1)

    def _close(self) -> None:
        self._release()

    @contextlib.contextmanager
    def _session(self, settings: dict[str, Any] | None) -> Iterator[Any]:
        """The connection to run one statement on; with settings, a fresh one so they stay scoped."""
        if not settings:
            yield self._conn
            return
        conn = self._sqlitelike.connect(self._conn_str)
        try:
            if self._database_active:
                conn.query(f"USE {quote_identifier(self.database)}")
            for name, value in settings.items():
                conn.query(f"SET {quote_identifier(name)} = {literal(value)}")
            yield conn
        finally:
            conn.close()

    def _query_raw(self, sql: str, fmt: str, settings: dict[str, Any] | None = None) -> Any:
        try:
            with self._session(settings) as conn:
                return conn.query(sql, fmt)
        except StoreError:
            raise
        except Exception as exc:
            raise _translate(exc) from None

    def _rows(self, sql: str) -> list[tuple[Any, ...]]:
        table = self._query_raw(sql, "ArrowTable")
        return [tuple(r.values()) for r in table.to_pylist(maps_as_pydicts="lossy")] if table.num_columns else []

    def _scalar(self, sql: str) -> Any:
        rows = self._rows(sql)
        return rows[0][0] if rows else None

    def _use_database(self, database: str) -> None:
        self._query_raw(f"USE {quote_identifier(database)}", "TabSeparated")

    def _run(self, sql: str, settings: dict[str, Any] | None) -> None:
        self._query_raw(sql, "TabSeparated", settings)

    def _fetch_arrow(self, sql: str) -> pa.Table:
        table = self._query_raw(sql, "ArrowTable")
        if not self._needs_conforming(table):
            return table
        types = self._result_types(sql)
        if types is None or len(types) != table.num_columns:
            return table
        if table.num_rows == 0 and table.num_columns == 0:
            return chtypes.empty_table([n for n, _ in types], [t for _, t in types])
        return chtypes.conform_table(table, [t for _, t in types])

    def _fetch(self, sql: str) -> tuple[list[str], list[str], list[tuple[Any, ...]]]:
        table = self._fetch_arrow(sql)
        columns = []
        for column in table.columns:
            values = column.to_pylist(maps_as_pydicts="lossy")
            if pa.types.is_struct(column.type):
                # Tuples come back as structs; clickhouse-driver (and SQL) give tuples.
                values = [None if v is None else tuple(v.values()) for v in values]
            columns.append(values)
        return list(table.column_names), [], list(zip(*columns, strict=True))

    def _insert_arrow(self, target: str, db: str, name: str, data: pa.Table, settings: dict[str, Any] | None) -> int:
        cols = ", ".join(quote_identifier(c) for c in data.column_names)
        if data.num_rows < STREAM_INSERT_ROWS:
            return self._insert_stream(target, db, name, data, cols, settings)
        # The Python() table function finds the object by its variable name in the calling frames;
        # this local is the one it reads. It is chdb's fastest insert path: ~1.2-1.4 M rows/s for
        # 15 columns on 2 cores, against ~0.9 M rows/s for send_insert() with ArrowStream bytes.
        nova_arrow_batch = data  # noqa: F841
        sql = f"INSERT INTO {target} ({cols}) SELECT {cols} FROM Python(nova_arrow_batch)"
        try:
            with self._session(settings) as conn:
                conn.query(sql, "TabSeparated")
        except Exception as exc:
            raise _translate(exc, f"insert into {db}.{name} failed: ") from None
        return int(data.num_rows)

    def _insert_stream(
        self, target: str, db: str, name: str, data: pa.Table, cols: str, settings: dict[str, Any] | None
    ) -> int:
        """A small insert as ArrowStream bytes: its fixed cost is half the Python() path's (see STREAM_INSERT_ROWS)."""
        import pyarrow.ipc as ipc

        sink = pa.BufferOutputStream()
        with ipc.new_stream(sink, data.schema) as writer:
            writer.write_table(data)
        try:
            sql = f"INSERT INTO {target} ({cols})"
            with self._session(settings) as conn, conn.send_insert(sql, "ArrowStream") as ins:
                ins.append(sink.getvalue().to_pybytes())
                ins.finish()  # leaving the block without finish() would cancel the insert
        except Exception as exc:
            raise _translate(exc, f"insert into {db}.{name} failed: ") from None
        return int(data.num_rows)

    def _insert_columns(
        self, target: str, db: str, name: str, columns: dict[str, Sequence[Any]], settings: dict[str, Any] | None
    ) -> int:
        types = self._column_types(db, name)
        data = chtypes.arrow_table_for_insert(columns, types, f"{db}.{name}")
        return self._insert_arrow(target, db, name, data, settings)

    def _needs_conforming(self, table: pa.Table) -> bool:
        # The engine's Arrow output differs from the canonical types only for DateTime (uint32),
        # Enum (int8/int16) and time zones it fills in (the server's) — or when it is empty.
        if table.num_columns == 0:
            return True
        for f in table.schema:
            t = f.type
            if pa.types.is_uint32(t) or pa.types.is_int8(t) or pa.types.is_int16(t):
                return True
            if pa.types.is_timestamp(t) and t.tz == self.caps.timezone:
                return True
        return False

    def _result_types(self, sql: str) -> list[tuple[str, str]] | None:
        try:
            table = self._query_raw(f"DESCRIBE TABLE ({sql.strip().rstrip(';')})", "ArrowTable")
        except StoreError:
            return None  # not a SELECT (SHOW, EXISTS, …): keep the engine's types
        return [(str(r["name"]), str(r["type"])) for r in table.select(["name", "type"]).to_pylist()]
