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


def _order_expr(expr: str) -> str:
    # A sort key is a column name (quoted) or an expression such as toDate(event_time) (as written).
    return quote_identifier(expr) if _IDENT.match(expr) else expr


def render_create_database(database: str) -> str:
    return f"CREATE DATABASE IF NOT EXISTS {quote_identifier(database)}"


def render_columns(spec: TableSpec, caps: Capabilities) -> list[tuple[str, str]]:
    from pipelines.clickhouse import render_type

    return [(name, render_type(ctype, caps)) for name, ctype in spec.columns]


def render_create_table(spec: TableSpec, database: str, caps: Capabilities) -> str:
    cols = ",\n  ".join(f"{quote_identifier(n)} {t}" for n, t in render_columns(spec, caps))
    parts = [f"CREATE TABLE IF NOT EXISTS {_qualified(database, spec.name)} (\n  {cols}\n)"]
    parts.append(f"ENGINE = {spec.engine}")
    if spec.partition_by:
        parts.append(f"PARTITION BY {spec.partition_by}")
    parts.append(f"ORDER BY ({', '.join(_order_expr(e) for e in spec.order_by)})")
    if spec.ttl:
        caps.require("ttl")
        parts.append(f"TTL {spec.ttl}")
    if spec.comment and getattr(caps, "table_comments", caps.version >= (21, 6)):
        parts.append(f"COMMENT {quote_string(spec.comment)}")
    return "\n".join(parts)


def render_add_column(table: str, database: str, name: str, ctype: str, after: str | None) -> str:
    position = f" AFTER {quote_identifier(after)}" if after else ""
    return f"ALTER TABLE {_qualified(database, table)} ADD COLUMN {quote_identifier(name)} {ctype}{position}"


def render_create_view(spec: ViewSpec, database: str) -> str:
    """The view's own names are quoted here; names inside its SELECT are quoted when the spec is loaded."""
    return (
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS {_qualified(database, spec.name)} "
        f"TO {_qualified(database, spec.to)} AS {spec.select}"
    )


def normalise_type(ctype: str) -> str:
    """Compare types the way the server prints them (spacing differs between versions)."""
    return re.sub(r"\s+", "", ctype)
