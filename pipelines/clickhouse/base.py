"""`Store`: what nova does with ClickHouse, whatever runs it (chdb in-process, or a server)."""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pipelines.clickhouse.capabilities import Capabilities
from pipelines.clickhouse.sql import qualify, quote_identifier, split_table, substitute
from pipelines.errors import StoreError
from pipelines.urls import redact_url

if TYPE_CHECKING:
    import pyarrow as pa

_DDL = re.compile(r"^\s*(CREATE|ALTER|DROP|RENAME|TRUNCATE|DETACH|ATTACH|EXCHANGE)\b", re.IGNORECASE)
_DROP_DATABASE = re.compile(r"^\s*DROP\s+DATABASE\s+(IF\s+EXISTS\s+)?`?([^`\s;]+)`?", re.IGNORECASE)


class Store:
    """One connection to ClickHouse. Thread-safe (calls are serialized); close it, or use `with`.

    Parameters are `%(name)s` placeholders substituted client-side (see `pipelines.clickhouse.sql`).
    Unqualified table names resolve in `database` once it exists (`ensure_database()` creates it).
    Every failure is a `StoreError` carrying the server's message and `code`; `retryable` is True
    for connection-level failures.
    """

    backend: str = "?"

    def __init__(self, *, url: str, database: str, caps: Capabilities) -> None:
        self.url = url
        self.database = database
        self.caps = caps
        self._lock = threading.RLock()
        self._closed = False
        self._database_active = False
        self._column_cache: dict[tuple[str, str], dict[str, str]] = {}

    def _run(self, sql: str, settings: dict[str, Any] | None) -> None:
        raise NotImplementedError

    def _fetch(self, sql: str) -> tuple[list[str], list[str], list[tuple[Any, ...]]]:
        """Column names, ClickHouse types and rows of a query (types may be '' if unknown)."""
        raise NotImplementedError

    def _fetch_arrow(self, sql: str) -> pa.Table:
        raise NotImplementedError

    def _insert_arrow(self, target: str, db: str, name: str, data: pa.Table, settings: dict[str, Any] | None) -> int:
        raise NotImplementedError

    def _insert_columns(
        self, target: str, db: str, name: str, columns: dict[str, Sequence[Any]], settings: dict[str, Any] | None
    ) -> int:
        raise NotImplementedError

    def _use_database(self, database: str) -> None:
        """Make `database` the one unqualified names resolve in."""
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    def execute(
        self, sql: str, params: dict[str, Any] | None = None, *, settings: dict[str, Any] | None = None
    ) -> None:
        """Run a statement that returns nothing (DDL, INSERT … SELECT, ALTER, OPTIMIZE, …)."""
        text = self._sql(sql, params)
        with self._lock:
            self._check_open()
            self._activate_database()
            self._check_settings(settings)
            self._run(text, settings)
            if _DDL.match(text):
                self._column_cache.clear()
                dropped = _DROP_DATABASE.match(text)
                if dropped and dropped.group(2) == self.database:
                    self._database_active = False
                    self._use_database("default")

    def query_columns(self, sql: str, params: dict[str, Any] | None = None) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Column names and rows (tuples of Python values) of a query."""
        names, _types, rows = self._query(sql, params)
        return names, rows

    def query_rows(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """Rows of a query as tuples of Python values."""
        return self._query(sql, params)[2]

    def query_dicts(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Rows of a query as dicts keyed by column name."""
        names, _types, rows = self._query(sql, params)
        return [dict(zip(names, row, strict=True)) for row in rows]

    def query_scalar(self, sql: str, params: dict[str, Any] | None = None) -> Any:
        """The first column of the first row (None when there is no row)."""
        rows = self.query_rows(sql, params)
        return rows[0][0] if rows and rows[0] else None

    def query_arrow(self, sql: str, params: dict[str, Any] | None = None) -> pa.Table:
        """A query's result as a pyarrow Table with the canonical types of `pipelines.clickhouse.chtypes`."""
        text = self._sql(sql, params)
        with self._lock:
            self._check_open()
            self._activate_database()
            return self._fetch_arrow(text)

    def insert_arrow(self, table: str, data: pa.Table, *, settings: dict[str, Any] | None = None) -> int:
        """Insert an Arrow table (columns matched by name) in one INSERT; returns the rows sent."""
        db, name = split_table(table, self.database)
        if data.num_rows == 0:
            return 0
        with self._lock:
            self._check_open()
            self._check_settings(settings)
            return self._insert_arrow(qualify(table, self.database), db, name, data, settings)

    def insert_columns(
        self, table: str, columns: dict[str, Sequence[Any]], *, settings: dict[str, Any] | None = None
    ) -> int:
        """Insert columns (name → values, all the same length) in one INSERT; returns the rows sent.

        Columns left out get their defaults. Datetimes may be aware (converted to UTC) or naive
        (taken as UTC); raw integers in a DateTime/DateTime64 column are epoch ticks of its precision.
        """
        if not columns:
            raise StoreError(f"nothing to insert into {table}: no columns given")
        lengths = {len(v) for v in columns.values()}
        if len(lengths) > 1:
            sizes = ", ".join(f"{n}={len(v)}" for n, v in columns.items())
            raise StoreError(f"columns for {table} have different lengths ({sizes})")
        if lengths == {0}:
            return 0
        db, name = split_table(table, self.database)
        with self._lock:
            self._check_open()
            self._check_settings(settings)
            return self._insert_columns(qualify(table, self.database), db, name, columns, settings)

    def table_columns(self, table: str) -> list[tuple[str, str]]:
        """(name, type) of a table's columns in definition order; [] when the table does not exist."""
        db, name = split_table(table, self.database)
        return [
            (str(n), str(t))
            for n, t in self.query_rows(
                "SELECT name, type FROM system.columns WHERE database = %(db)s AND table = %(table)s",
                {"db": db, "table": name},
            )
        ]

    def table_exists(self, table: str) -> bool:
        db, name = split_table(table, self.database)
        return bool(
            self.query_scalar(
                "SELECT count() FROM system.tables WHERE database = %(db)s AND name = %(table)s",
                {"db": db, "table": name},
            )
        )

    def database_exists(self, database: str | None = None) -> bool:
        name = database or self.database
        with self._lock:
            self._check_open()
            _n, _t, rows = self._fetch(
                substitute("SELECT count() FROM system.databases WHERE name = %(db)s", {"db": name})
            )
        return bool(rows and rows[0][0])

    def ensure_database(self) -> bool:
        """Create `database` if it is missing (True when it was created) and resolve names in it."""
        with self._lock:
            self._check_open()
            existed = self.database_exists()
            if not existed:
                self._run(f"CREATE DATABASE IF NOT EXISTS {quote_identifier(self.database)}", None)
            self._use_database(self.database)
            self._database_active = True
            return not existed

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.backend} {self.caps.version_text} database={self.database}>"

    def _sql(self, sql: str, params: dict[str, Any] | None) -> str:
        return substitute(sql, params, datetime64=self.caps.datetime64)

    def _query(self, sql: str, params: dict[str, Any] | None) -> tuple[list[str], list[str], list[tuple[Any, ...]]]:
        text = self._sql(sql, params)
        with self._lock:
            self._check_open()
            self._activate_database()
            return self._fetch(text)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"the ClickHouse store {redact_url(self.url)} is closed")

    def _check_settings(self, settings: dict[str, Any] | None) -> None:
        if settings:
            self.caps.require_settings(settings)

    def _activate_database(self) -> None:
        # Until the database exists, unqualified names resolve in `default`; check again on each
        # call so a database created meanwhile (by provision, another process) is picked up.
        if self._database_active:
            return
        if self.database_exists():
            self._use_database(self.database)
            self._database_active = True

    def _column_types(self, db: str, name: str) -> dict[str, str]:
        key = (db, name)
        cached = self._column_cache.get(key)
        if cached is None:
            _n, _t, rows = self._fetch(
                substitute(
                    "SELECT name, type FROM system.columns WHERE database = %(db)s AND table = %(table)s",
                    {"db": db, "table": name},
                )
            )
            if not rows:
                raise StoreError(
                    f"table {db}.{name} does not exist",
                    code=60,
                    hint="create it first (nova provision), or check the table name",
                )
            cached = {str(r[0]): str(r[1]) for r in rows}
            self._column_cache[key] = cached
        return cached
