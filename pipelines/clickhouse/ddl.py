"""Render the table specs of configs/clickhouse/ as DDL for the server at hand."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipelines.clickhouse import Capabilities
    from pipelines.contracts.specs import TableSpec, ViewSpec

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def quote(name: str) -> str:
    return f"`{name}`"


def _order_expr(expr: str) -> str:
    return quote(expr) if _IDENT.match(expr) else expr


def render_columns(spec: TableSpec, caps: Capabilities) -> list[tuple[str, str]]:
    from pipelines.clickhouse import render_type

    return [(name, render_type(ctype, caps)) for name, ctype in spec.columns]


def render_create_table(spec: TableSpec, database: str, caps: Capabilities) -> str:
    cols = ",\n  ".join(f"{quote(n)} {t}" for n, t in render_columns(spec, caps))
    parts = [f"CREATE TABLE IF NOT EXISTS {quote(database)}.{quote(spec.name)} (\n  {cols}\n)"]
    parts.append(f"ENGINE = {spec.engine}")
    if spec.partition_by:
        parts.append(f"PARTITION BY {spec.partition_by}")
    parts.append(f"ORDER BY ({', '.join(_order_expr(e) for e in spec.order_by)})")
    if spec.ttl:
        caps.require("ttl")
        parts.append(f"TTL {spec.ttl}")
    if spec.comment and getattr(caps, "table_comments", caps.version >= (21, 6)):
        parts.append("COMMENT '" + spec.comment.replace("\\", "\\\\").replace("'", "\\'") + "'")
    return "\n".join(parts)


def render_add_column(table: str, database: str, name: str, ctype: str, after: str | None) -> str:
    position = f" AFTER {quote(after)}" if after else ""
    return f"ALTER TABLE {quote(database)}.{quote(table)} ADD COLUMN {quote(name)} {ctype}{position}"


def render_create_view(spec: ViewSpec, database: str) -> str:
    return (
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS {quote(database)}.{quote(spec.name)} "
        f"TO {quote(database)}.{quote(spec.to)} AS {spec.select}"
    )


def normalise_type(ctype: str) -> str:
    """Compare types the way the server prints them (spacing differs between versions)."""
    return re.sub(r"\s+", "", ctype)
