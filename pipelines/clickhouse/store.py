"""`open_store`: a `Store` for `clickhouse.url`, embedded (`chdb://PATH`) or server (`clickhouse://…`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from pipelines.clickhouse.base import Store
from pipelines.errors import StoreError
from pipelines.urls import redact_url

if TYPE_CHECKING:
    from pipelines.config import Settings


def open_store(settings: Settings | None = None, *, url: str | None = None, database: str | None = None) -> Store:
    """Open the ClickHouse store of `settings` (or `url`), with unqualified names in `database`.

    - `chdb://PATH`: the embedded engine; a relative PATH is relative to the project root, and
      `chdb://:memory:` keeps nothing. One process per PATH.
    - `clickhouse://user:password@host:port[/db][?secure=1&verify=0&compression=lz4&http_port=8123]`: a
      server; with `http_port`, Arrow inserts go as Native over its HTTP interface (`native_format`).
    - with `clickhouse.cluster` set, `clickhouse://user:password@h1:p1,h2:p2/db`: a cluster, whose
      hosts are learnt from `system.clusters` on the first listed host that answers (`ClusterStore`).

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
    if settings.clickhouse.cluster is not None:
        from pipelines.clickhouse.cluster_store import open_cluster

        return open_cluster(settings, url, database)
    parts = urlsplit(url)
    if not parts.hostname:
        raise StoreError(
            f"the ClickHouse URL {redact_url(url)!r} names no host", hint="clickhouse://user:pass@host:9000/db"
        )
    if "," in parts.netloc:
        raise StoreError(
            f"the ClickHouse URL {redact_url(url)!r} lists several hosts, but clickhouse.cluster is not set",
            hint="set clickhouse.cluster.name (see the README's cluster section), or name one host",
        )
    try:
        port = parts.port or 9000
    except ValueError:
        raise StoreError(f"the ClickHouse URL {redact_url(url)!r} has a bad port") from None
    from pipelines.clickhouse.cluster import Endpoint
    from pipelines.clickhouse.endpoint import open_native_endpoint

    endpoint = Endpoint(parts.hostname, port, unquote(parts.username or "default"), unquote(parts.password or ""))
    url_db = unquote(parts.path.lstrip("/"))
    return open_native_endpoint(
        settings, host=endpoint, query=parts.query, database=database or settings.clickhouse.database or url_db, url=url
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
