"""One clickhouse-server host as a `NativeStore`, with the options of a `clickhouse://` URL's query string.

Shared by `open_store` (one server) and `ClusterStore` (each host of a cluster).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote

from pipelines.errors import StoreError

if TYPE_CHECKING:
    from pipelines.clickhouse.cluster import Endpoint
    from pipelines.clickhouse.native_backend import NativeStore
    from pipelines.config import Settings

_BOOL_OPTIONS = {"secure", "verify"}
_FLOAT_OPTIONS = {"connect_timeout", "send_receive_timeout", "sync_request_timeout"}
_STR_OPTIONS = {"ca_certs", "compression", "client_name"}
# http_port: the server's HTTP interface, for Arrow inserts as Native (pipelines.clickhouse.native_format).
_INT_OPTIONS = {"http_port"}


def open_native_endpoint(
    settings: Settings, *, host: Endpoint, query: str, database: str, url: str | None = None
) -> NativeStore:
    """A server store for one host, with the options of a clickhouse:// URL's query string."""
    from pipelines.clickhouse.native_backend import NativeStore

    options: dict[str, Any] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key in _BOOL_OPTIONS:
            options[key] = value.lower() in ("1", "true", "yes", "on", "")
        elif key in _FLOAT_OPTIONS:
            try:
                options[key] = float(value)
            except ValueError:
                raise StoreError(f"the ClickHouse URL option {key}={value!r} is not a number") from None
        elif key in _INT_OPTIONS:
            try:
                options[key] = int(value)
            except ValueError:
                raise StoreError(f"the ClickHouse URL option {key}={value!r} is not a port number") from None
        elif key in _STR_OPTIONS:
            options[key] = value
        else:
            known = ", ".join(sorted(_BOOL_OPTIONS | _FLOAT_OPTIONS | _STR_OPTIONS | _INT_OPTIONS))
            raise StoreError(f"unknown ClickHouse URL option {key!r}", hint=f"known options: {known}")
    connect_timeout = options.pop("connect_timeout", settings.clickhouse.connect_timeout_s)
    auth = f"{quote(host.user)}:{quote(host.password)}@" if host.password else f"{quote(host.user)}@"
    return NativeStore(
        url=url or f"clickhouse://{auth}{host.host}:{host.port}/{database}",
        host=host.host,
        port=host.port,
        user=host.user,
        password=host.password,
        database=database,
        connect_timeout=connect_timeout,
        options=options,
    )
