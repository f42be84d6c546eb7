"""The server backend: clickhouse-server over the native protocol (clickhouse-driver).

Works with any server from 18.16 on: what the server supports is decided by `Capabilities`, and
settings the server (or the driver, for servers older than 19.x) cannot take are refused here,
because clickhouse-driver would otherwise drop them with only a log line.
"""

from __future__ import annotations

import base64
import logging
import re
import socket
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from pipelines.clickhouse.base import Store
from pipelines.clickhouse.capabilities import Capabilities
from pipelines.clickhouse.sql import quote_identifier
from pipelines.errors import StoreError

if TYPE_CHECKING:
    import pyarrow as pa

# The driver logs failed connects with tracebacks; without a handler Python would print them to
# stderr. nova reports the StoreError instead (applications that configure logging still get them).
logging.getLogger("clickhouse_driver").addHandler(logging.NullHandler())

# Server error codes worth a pause and a retry rather than a fix to the SQL or the data.
RETRYABLE_CODES = {
    3,  # UNEXPECTED_END_OF_FILE
    159,  # TIMEOUT_EXCEEDED (server busy)
    202,  # TOO_MANY_SIMULTANEOUS_QUERIES
    209,  # SOCKET_TIMEOUT
    210,  # NETWORK_ERROR
    241,  # MEMORY_LIMIT_EXCEEDED
    242,  # TABLE_IS_READ_ONLY
    252,  # TOO_MANY_PARTS
    279,  # ALL_CONNECTION_TRIES_FAILED
    319,  # UNKNOWN_STATUS_OF_INSERT
    999,  # KEEPER_EXCEPTION
}
AUTH_CODES = {192, 193, 194, 516}  # UNKNOWN_USER, WRONG_PASSWORD, REQUIRED_PASSWORD, AUTHENTICATION_FAILED
_SETTINGS_AS_STRINGS_REVISION = 54429  # servers before this (≤ 19.x early) get typed settings
_START_SERVER = "start it with `nova stack up --with clickhouse-server`, or point clickhouse.url at a running server"


def _server_message(message: str) -> str:
    text = (message or "").split("Stack trace:", 1)[0].strip()
    if text.startswith("DB::Exception: "):
        text = text[len("DB::Exception: ") :]
    return text.rstrip(".").rstrip(",") or "unknown server error"


class NativeStore(Store):
    """clickhouse-server over the native TCP protocol."""

    backend = "native"

    def __init__(
        self,
        *,
        url: str,
        host: str,
        port: int,
        user: str,
        password: str,
        database: str,
        connect_timeout: float,
        options: dict[str, Any],
    ) -> None:
        from clickhouse_driver import Client

        self.host, self.port = host, port
        # Arrow inserts as Native over the server's HTTP interface (pipelines.clickhouse.native_format).
        self._http_port: int | None = options.pop("http_port", None)
        self._http_auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self._http_tls = (bool(options.get("secure")), bool(options.get("verify", True)), options.get("ca_certs"))
        self._http_timeout = float(options.get("send_receive_timeout", 300))
        self._client = Client(
            host=host,
            port=port,
            user=user,
            password=password,
            database="default",  # `database` may not exist yet; switched to once it does
            connect_timeout=connect_timeout,
            send_receive_timeout=options.pop("send_receive_timeout", 300),
            sync_request_timeout=options.pop("sync_request_timeout", 5),
            client_name="nova",
            **options,
        )
        try:
            version, timezone = self._call(self._client.execute, "SELECT version(), timezone()")[0]
            settings = {str(r[0]) for r in self._call(self._client.execute, "SELECT name FROM system.settings")}
        except StoreError:
            self._client.disconnect()
            raise
        info = self._client.connection.server_info
        self._settings_as_strings = info is not None and info.used_revision >= _SETTINGS_AS_STRINGS_REVISION
        super().__init__(
            url=url,
            database=database,
            caps=Capabilities.from_version(str(version), settings=settings, timezone=timezone),
        )

    def _call(self, fn: Any, *args: Any, what: str = "", **kwargs: Any) -> Any:
        """Call into the driver, turning every failure into a StoreError."""
        try:
            return fn(*args, **kwargs)
        except StoreError:
            raise
        except Exception as exc:
            raise self._translate(exc, what) from None

    def _translate(self, exc: BaseException, what: str = "") -> StoreError:
        from clickhouse_driver import errors

        where = f"{self.host}:{self.port}"
        prefix = f"{what}: " if what else ""
        if isinstance(exc, errors.ServerException):
            code = exc.code
            message = _server_message(exc.message)
            if code in AUTH_CODES:
                return StoreError(
                    f"ClickHouse at {where} refused the login: {message}",
                    code=code,
                    hint="check the user and password in clickhouse.url",
                )
            return StoreError(prefix + message, code=code, retryable=code in RETRYABLE_CODES)
        if isinstance(
            exc,
            errors.NetworkError
            | errors.SocketTimeoutError
            | errors.UnexpectedPacketFromServerError
            | EOFError
            | OSError
            | socket.timeout,
        ):
            text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            code = getattr(exc, "code", None) or 210
            if "refused" in text.lower():
                return StoreError(
                    f"cannot connect to ClickHouse at {where}: connection refused",
                    code=code,
                    retryable=True,
                    hint=_START_SERVER,
                )
            return StoreError(f"{prefix}connection to ClickHouse at {where} failed: {text}", code=code, retryable=True)
        if isinstance(exc, errors.Error):
            return StoreError(prefix + _server_message(exc.message or str(exc)), code=exc.code)
        if isinstance(exc, TypeError | ValueError | OverflowError | AttributeError | struct.error):
            return StoreError(f"{prefix}cannot encode the values: {exc}")
        return StoreError(f"{prefix}{type(exc).__name__}: {exc}")

    def _check_settings(self, settings: dict[str, Any] | None) -> None:
        super()._check_settings(settings)
        if settings and not self._settings_as_strings:
            from clickhouse_driver.settings.available import settings as driver_settings

            for name in settings:
                if name not in driver_settings:
                    raise StoreError(
                        f"clickhouse-driver cannot send the setting {name!r} to ClickHouse {self.caps.version_text}",
                        hint="this server takes only settings the driver knows the type of; use a newer server",
                    )

    def _use_database(self, database: str) -> None:
        # USE switches this session now; reconnects (after a network error) name the database in
        # their hello. Set it after USE: the driver records USE's argument verbatim, backticks included.
        if self._client.connection.connected:
            self._call(self._client.execute, f"USE {quote_identifier(database)}")
        self._client.connection.database = database

    def _run(self, sql: str, settings: dict[str, Any] | None) -> None:
        self._call(self._client.execute, sql, settings=settings or None)

    def _fetch(self, sql: str) -> tuple[list[str], list[str], list[tuple[Any, ...]]]:
        rows, columns = self._call(self._client.execute, sql, with_column_types=True)
        return [c[0] for c in columns], [c[1] for c in columns], [tuple(r) for r in rows]

    def _fetch_arrow(self, sql: str) -> pa.Table:
        from clickhouse_driver import errors

        from pipelines.clickhouse import chtypes

        try:
            table = self._client.query_arrow(sql)
        except (errors.ServerException, errors.NetworkError, errors.SocketTimeoutError, EOFError, OSError) as exc:
            raise self._translate(exc) from None
        except Exception:
            # A column type the driver's Arrow reader does not handle: read Python values instead.
            data, columns = self._call(self._client.execute, sql, with_column_types=True, columnar=True)
            names, types = [c[0] for c in columns], [c[1] for c in columns]
            if not data:
                return chtypes.empty_table(names, types)
            return chtypes.table_from_columns(names, types, data)
        types = [(f.metadata or {}).get(b"clickhouse_type", b"").decode() for f in table.schema]
        return chtypes.conform_table(table, types)

    def _send(self, target: str, db: str, name: str, names: list[str], data: list[list[Any]], settings: Any) -> int:
        cols = ", ".join(quote_identifier(n) for n in names)
        try:
            return int(
                self._call(
                    self._client.execute,
                    f"INSERT INTO {target} ({cols}) VALUES",
                    data,
                    columnar=True,
                    settings=settings or None,
                    what=f"insert into {db}.{name} failed",
                )
                or 0
            )
        except StoreError:
            self._column_cache.pop((db, name), None)
            raise

    def _insert_arrow(self, target: str, db: str, name: str, data: pa.Table, settings: dict[str, Any] | None) -> int:
        from pipelines.clickhouse import chtypes, native_format

        types = self._column_types(db, name)
        names = list(data.column_names)
        for n in names:
            if n not in types:
                raise StoreError(f"table {db}.{name} has no column {n!r}", hint=f"its columns: {', '.join(types)}")
        if self._http_port is not None:
            body = native_format.encode_block(data, [types[n] for n in names])
            if body is not None:
                try:
                    self._post_native(target, db, name, names, body, settings)
                except StoreError:
                    self._column_cache.pop((db, name), None)
                    raise
                return int(data.num_rows)
        columns = [chtypes.driver_column(data.column(n), types[n]) for n in names]
        self._send(target, db, name, names, columns, settings)
        return int(data.num_rows)

    def _post_native(
        self, target: str, db: str, name: str, names: list[str], body: bytes, settings: dict[str, Any] | None
    ) -> None:
        """One `INSERT … FORMAT Native` over HTTP, on a connection of its own.

        A fresh connection per insert: a kept-alive one the server has closed meanwhile fails only
        once the request is sent, and an insert is never re-sent blindly (it may have landed).
        """
        import http.client
        import ssl

        cols = ", ".join(quote_identifier(n) for n in names)
        params = {"query": f"INSERT INTO {target} ({cols}) FORMAT Native"}
        params.update({k: str(int(v) if isinstance(v, bool) else v) for k, v in (settings or {}).items()})
        secure, verify, ca_certs = self._http_tls
        where = f"{self.host}:{self._http_port} (HTTP)"
        what = f"insert into {db}.{name} failed"
        conn: http.client.HTTPConnection
        if secure:
            context = ssl.create_default_context(cafile=ca_certs)
            if not verify:
                context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            conn = http.client.HTTPSConnection(self.host, self._http_port, timeout=self._http_timeout, context=context)
        else:
            conn = http.client.HTTPConnection(self.host, self._http_port, timeout=self._http_timeout)
        try:
            conn.request(
                "POST",
                "/?" + urlencode(params),
                body=body,
                headers={"Authorization": self._http_auth, "Content-Type": "application/octet-stream"},
            )
            response = conn.getresponse()
            text = response.read().decode(errors="replace")
        except (OSError, http.client.HTTPException) as exc:
            detail = str(exc) or type(exc).__name__
            if isinstance(exc, ConnectionRefusedError):
                raise StoreError(
                    f"cannot connect to ClickHouse at {where}: connection refused",
                    code=210,
                    retryable=True,
                    hint="check the http_port option of clickhouse.url (the server's <http_port>)",
                ) from None
            failed = f"{what}: connection to ClickHouse at {where} failed: {detail}"
            raise StoreError(failed, code=210, retryable=True) from None
        finally:
            conn.close()
        if response.status == 200:
            return
        found = re.search(r"Code: (\d+)", text)
        code = int(response.getheader("X-ClickHouse-Exception-Code") or (found.group(1) if found else 0)) or None
        message = _server_message(re.sub(r"^Code: \d+[.,]\s*(e\.displayText\(\) = )?", "", text.strip()))
        message = message.split(", e.what() = ", 1)[0]
        if code in AUTH_CODES or response.status in (401, 403):
            raise StoreError(
                f"ClickHouse at {where} refused the login: {message}",
                code=code,
                hint="check the user and password in clickhouse.url",
            )
        raise StoreError(f"{what}: {message}", code=code, retryable=code in RETRYABLE_CODES or response.status >= 502)

    def _insert_columns(
        self, target: str, db: str, name: str, columns: dict[str, Sequence[Any]], settings: dict[str, Any] | None
    ) -> int:
        names = list(columns)
        types = self._column_types(db, name)
        data: list[list[Any]] = []
        for n, values in columns.items():
            if n not in types:
                raise StoreError(f"table {db}.{name} has no column {n!r}", hint=f"its columns: {', '.join(types)}")
            if hasattr(values, "dtype") or type(values).__module__.startswith("pyarrow"):
                # numpy / Arrow columns go through Arrow, which turns timestamps into ticks.
                from pipelines.clickhouse import chtypes

                data.append(chtypes.driver_column(chtypes.arrow_column(values, types[n]), types[n]))
            else:
                data.append(list(values))  # the driver rewrites the lists it is given: copy
        self._send(target, db, name, names, data, settings)
        return len(data[0])

    def _close(self) -> None:
        self._client.disconnect()
