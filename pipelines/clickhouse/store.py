"""`open_store`: a `Store` for `clickhouse.url`, embedded (`chdb://PATH`) or server (`clickhouse://…`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

from pipelines.clickhouse.base import Store
from pipelines.errors import StoreError
from pipelines.urls import redact_url

if TYPE_CHECKING:
    from pipelines.config import Settings

_BOOL_OPTIONS = {"secure", "verify"}
_FLOAT_OPTIONS = {"connect_timeout", "send_receive_timeout", "sync_request_timeout"}
_STR_OPTIONS = {"ca_certs", "compression", "client_name"}


def open_store(settings: Settings | None = None, *, url: str | None = None, database: str | None = None) -> Store:
    """Open the ClickHouse store of `settings` (or `url`), with unqualified names in `database`.

    - `chdb://PATH`: the embedded engine; a relative PATH is relative to the project root, and
      `chdb://:memory:` keeps nothing. One process per PATH.
    - `clickhouse://user:password@host:port[/db][?secure=1&verify=0&compression=lz4]`: a server.

    The database is `database`, else `settings.clickhouse.database`, else the URL's path. It need
    not exist yet: `Store.ensure_database()` creates it.
    """
    if settings is None:
        from pipelines.config import Settings, load_settings

        settings = load_settings() if url is None else Settings.model_validate({})
    url = url or settings.clickhouse.url
    if url.startswith("chdb://"):
        return _open_chdb(url, settings, database)
    if url.startswith("clickhouse://"):
        return _open_native(url, settings, database)
    raise StoreError(
        f"unsupported ClickHouse URL {url!r}",
        hint="use chdb://PATH (embedded) or clickhouse://user:password@host:port/db (server)",
    )


def _open_chdb(url: str, settings: Settings, database: str | None) -> Store:
    from pipelines.clickhouse.chdb_backend import ChdbStore

    raw, _, query = url[len("chdb://") :].partition("?")
    if query:
        raise StoreError(f"chdb URLs take no options: {url!r}", hint="use chdb://PATH")
    if not raw:
        raise StoreError(f"the chdb URL {url!r} names no path", hint="e.g. chdb://.nova/chdb")
    path: Path | None = None if raw == ":memory:" else settings.resolve(raw)
    scratch = settings.state_dir / "chdb-scratch"
    return ChdbStore(url=url, path=path, database=database or settings.clickhouse.database, scratch=scratch)


def _open_native(url: str, settings: Settings, database: str | None) -> Store:
    from pipelines.clickhouse.native_backend import NativeStore

    parts = urlsplit(url)
    if not parts.hostname:
        raise StoreError(
            f"the ClickHouse URL {redact_url(url)!r} names no host", hint="clickhouse://user:pass@host:9000/db"
        )
    try:
        port = parts.port or 9000
    except ValueError:
        raise StoreError(f"the ClickHouse URL {redact_url(url)!r} has a bad port") from None
    options: dict[str, Any] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in _BOOL_OPTIONS:
            options[key] = value.lower() in ("1", "true", "yes", "on", "")
        elif key in _FLOAT_OPTIONS:
            try:
                options[key] = float(value)
            except ValueError:
                raise StoreError(f"the ClickHouse URL option {key}={value!r} is not a number") from None
        elif key in _STR_OPTIONS:
            options[key] = value
        else:
            known = ", ".join(sorted(_BOOL_OPTIONS | _FLOAT_OPTIONS | _STR_OPTIONS))
            raise StoreError(f"unknown ClickHouse URL option {key!r}", hint=f"known options: {known}")
    url_db = unquote(parts.path.lstrip("/"))
    connect_timeout = options.pop("connect_timeout", settings.clickhouse.connect_timeout_s)
    return NativeStore(
        url=url,
        host=parts.hostname,
        port=port,
        user=unquote(parts.username or "default"),
        password=unquote(parts.password or ""),
        database=database or settings.clickhouse.database or url_db,
        connect_timeout=connect_timeout,
        options=options,
    )


def server_problem(host: str, port: int, *, timeout_s: float = 3.0) -> str | None:
    """Why the clickhouse-server at host:port does not answer `SELECT version()`, or None when it does."""
    from clickhouse_driver import Client
    from clickhouse_driver.errors import Error as ClickHouseError

    client = Client(host, port=port, connect_timeout=timeout_s, send_receive_timeout=timeout_s)
    try:
        client.execute("SELECT version()")
    except (ClickHouseError, OSError, EOFError) as exc:
        return f"SELECT version() failed on {host}:{port}: {exc}"
    finally:
        client.disconnect()
    return None
