"""Render the table specs of configs/clickhouse/ as DDL for the server at hand.

Every database, table, view and column name goes through `sql.quote_identifier`, the one
ClickHouse identifier quoter, whatever the name holds.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from pipelines.clickhouse.sql import quote_identifier, quote_string

if TYPE_CHECKING:
    from pipelines.clickhouse import Capabilities
    from pipelines.contracts.specs import TableSpec, ViewSpec

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _qualified(database: str, name: str) -> str:
    """`` `database`.`name` ``, both parts quoted."""
    return f"{quote_identifier(database)}.{quote_identifier(name)}"


def order_expr(expr: str) -> str:
    # A sort key is a column name (quoted) or an expression such as toDate(event_time) (as written).
    return quote_identifier(expr) if _IDENT.match(expr) else expr


def _on(cluster: str | None) -> str:
    return f" ON CLUSTER {quote_identifier(cluster)}" if cluster else ""


def render_create_database(database: str, *, on_cluster: str | None = None) -> str:
    return f"CREATE DATABASE IF NOT EXISTS {quote_identifier(database)}{_on(on_cluster)}"


def render_columns(spec: TableSpec, caps: Capabilities) -> list[tuple[str, str]]:
    from pipelines.clickhouse import render_type

    return [(name, render_type(ctype, caps)) for name, ctype in spec.columns]


def render_create_table(
    spec: TableSpec,
    database: str,
    caps: Capabilities,
    *,
    name: str | None = None,
    engine: str | None = None,
    on_cluster: str | None = None,
    table_settings: dict[str, int] | None = None,
) -> str:
    """CREATE TABLE for `spec` (as `name`, with `engine`, `ON CLUSTER` when given: see `cluster_ddl`)."""
    cols = ",\n  ".join(f"{quote_identifier(n)} {t}" for n, t in render_columns(spec, caps))
    target = _qualified(database, name or spec.name)
    parts = [f"CREATE TABLE IF NOT EXISTS {target}{_on(on_cluster)} (\n  {cols}\n)"]
    parts.append(f"ENGINE = {engine or spec.engine}")
    if spec.partition_by:
        parts.append(f"PARTITION BY {spec.partition_by}")
    parts.append(f"ORDER BY ({', '.join(order_expr(e) for e in spec.order_by)})")
    if spec.ttl:
        caps.require("ttl")
        parts.append(f"TTL {spec.ttl}")
    if table_settings:
        parts.append("SETTINGS " + ", ".join(f"{k} = {int(v)}" for k, v in table_settings.items()))
    if spec.comment and getattr(caps, "table_comments", caps.version >= (21, 6)):
        parts.append(f"COMMENT {quote_string(spec.comment)}")
    return "\n".join(parts)


def render_add_column(
    table: str, database: str, name: str, ctype: str, after: str | None, *, on_cluster: str | None = None
) -> str:
    position = f" AFTER {quote_identifier(after)}" if after else ""
    return (
        f"ALTER TABLE {_qualified(database, table)}{_on(on_cluster)} "
        f"ADD COLUMN {quote_identifier(name)} {ctype}{position}"
    )


def render_create_view(
    spec: ViewSpec, database: str, *, to: str | None = None, select: str | None = None, on_cluster: str | None = None
) -> str:
    """The view's own names are quoted here; names inside its SELECT are quoted when the spec is loaded."""
    return (
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS {_qualified(database, spec.name)}{_on(on_cluster)} "
        f"TO {_qualified(database, to or spec.to)} AS {select or spec.select}"
    )


def normalise_type(ctype: str) -> str:
    """Compare types the way the server prints them (spacing differs between versions)."""
    return re.sub(r"\s+", "", ctype)
