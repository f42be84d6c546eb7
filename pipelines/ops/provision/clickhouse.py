"""The ClickHouse database, tables and materialized views of configs/clickhouse/tables.yaml.

Columns are only ever added: a changed type or engine is refused. Every statement the plan
would run is first parsed by the server (`formatQuery`, ClickHouse ≥ 23.10), so a spec that
doesn't parse is refused before the first change instead of failing half-way through.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.clickhouse import ddl
from pipelines.clickhouse.sql import quote_identifier
from pipelines.config import check_identifier
from pipelines.errors import ConfigError, StoreError
from pipelines.ops.provision.plan import PlanItem, run_all

if TYPE_CHECKING:
    from pipelines.clickhouse import Store
    from pipelines.contracts.specs import TablesFile, TableSpec

# formatQuery() parses a statement without running it.
_FORMAT_QUERY_SINCE = (23, 10)
# Names in tables.yaml may extend pipeline.table (≤ 63 characters) with a suffix; ClickHouse
# itself refuses table names a little over 200 characters.
_SPEC_NAME_MAX = 128


def check_table_names(tables: TablesFile, path: Path) -> None:
    """Every table, view and column name (placeholders filled) must be a plain identifier; ConfigError otherwise."""
    named: list[tuple[str, str]] = []
    for i, table in enumerate(tables.tables):
        named.append((f"tables.{i}.name", table.name))
        named += [(f"tables.{i}.columns.{j}", column) for j, (column, _type) in enumerate(table.columns)]
    for i, view in enumerate(tables.views):
        named += [(f"views.{i}.name", view.name), (f"views.{i}.to", view.to)]
    problems = []
    for key, name in named:
        try:
            check_identifier(name, max_length=_SPEC_NAME_MAX)
        except ValueError as exc:
            problems.append(f"{path}: key '{key}': {exc}")
    if problems:
        raise ConfigError("invalid spec:\n  " + "\n  ".join(problems), hint="rename the object in the spec")


def plan_clickhouse(store: Store, database: str, tables: TablesFile) -> list[PlanItem]:
    items = []
    if not store.database_exists(database):
        sql = ddl.render_create_database(database)
        items.append(PlanItem("database", database, "create", store.backend, partial(store.execute, sql), (sql,)))
        existing_tables: dict[str, str] = {}
    else:
        items.append(PlanItem("database", database, "unchanged", store.backend))
        rows = store.query_rows("SELECT name, engine FROM system.tables WHERE database = %(db)s", {"db": database})
        existing_tables = {str(name): str(engine) for name, engine in rows}
    for name in tables.retired_views:  # first: an old view must not write into a table about to be replaced
        if name in existing_tables:
            sql = f"DROP TABLE IF EXISTS {quote_identifier(database)}.{quote_identifier(name)}"
            items.append(PlanItem("view", name, "change", "drop (retired)", partial(store.execute, sql), (sql,)))
    for spec in tables.tables:
        items.append(_plan_table(store, database, spec, existing_tables.get(spec.name)))
    targets = {spec.name for spec in tables.tables} | set(existing_tables)
    for view in tables.views:
        if view.name in existing_tables:
            items.append(PlanItem("view", view.name, "unchanged", f"→ {view.to}"))
        elif view.to not in targets:
            detail = f"writes to table '{view.to}', which is neither in tables.yaml nor in database '{database}'"
            items.append(PlanItem("view", view.name, "refused", detail))
        else:
            sql = ddl.render_create_view(view, database)
            items.append(PlanItem("view", view.name, "create", f"→ {view.to}", partial(store.execute, sql), (sql,)))
    return [_parsed(store, item) for item in items]


def _plan_table(store: Store, db: str, spec: TableSpec, engine: str | None) -> PlanItem:
    wanted = ddl.render_columns(spec, store.caps)
    settings = _ddl_settings(store)
    if engine is None:
        sql = ddl.render_create_table(spec, db, store.caps)
        detail = f"{spec.engine}, {len(wanted)} columns"
        return PlanItem("table", spec.name, "create", detail, partial(store.execute, sql, settings=settings), (sql,))
    wanted_engine = spec.engine.split("(")[0]
    if engine != wanted_engine and spec.replaces is not None and engine == spec.replaces.engine:
        old = f"{quote_identifier(db)}.{quote_identifier(spec.name)}"
        aside = spec.replaces.rename_to
        moves = (
            f"RENAME TABLE {old} TO {quote_identifier(db)}.{quote_identifier(aside)}",
            ddl.render_create_table(spec, db, store.caps),
        )
        detail = f"{engine} → {spec.engine}: the old table renamed to {aside} (rows kept), a new one created"
        steps = [partial(store.execute, sql, settings=settings) for sql in moves]
        return PlanItem("table", spec.name, "change", detail, run_all(steps), moves)
    if engine != wanted_engine:
        return PlanItem(
            "table",
            spec.name,
            "refused",
            f"exists with engine {engine}; the spec asks for {wanted_engine} — migrate the data into a new table",
        )
    have = dict(store.table_columns(f"{db}.{spec.name}"))
    problems: list[str] = []
    adds: list[tuple[str, str, str | None]] = []
    previous: str | None = None
    for name, ctype in wanted:
        if name not in have:
            adds.append((name, ctype, previous))
        elif ddl.normalise_type(have[name]) != ddl.normalise_type(ctype):
            problems.append(f"column {name} is {have[name]}, the spec says {ctype} — types are never changed in place")
        previous = name
    if problems:
        return PlanItem("table", spec.name, "refused", "; ".join(problems))
    extra = [n for n in have if n not in dict(wanted)]
    note = f" (kept columns not in the spec: {', '.join(extra)})" if extra else ""
    if adds:
        sqls = tuple(ddl.render_add_column(spec.name, db, n, t, after) for n, t, after in adds)
        return PlanItem(
            "table",
            spec.name,
            "change",
            "add " + ", ".join(f"{n} {t}" for n, t, _ in adds) + note,
            run_all([partial(store.execute, sql, settings=settings) for sql in sqls]),
            sqls,
        )
    return PlanItem("table", spec.name, "unchanged", f"{len(have)} columns{note}")


def _ddl_settings(store: Store) -> dict[str, object]:
    setting = store.caps.low_cardinality_setting
    return {setting: 1} if setting and store.caps.low_cardinality else {}


def _parsed(store: Store, item: PlanItem) -> PlanItem:
    """`item`, or a refusal when the server can't parse one of its statements (where it can tell)."""
    if not item.statements or store.caps.version < _FORMAT_QUERY_SINCE:
        return item
    for sql in item.statements:
        try:
            store.query_rows("SELECT formatQuery(%(sql)s)", {"sql": sql})
        except StoreError as exc:
            reason = exc.message.split(" In scope SELECT formatQuery(")[0].rstrip(" :")  # not the DDL again
            detail = f"its DDL does not parse on ClickHouse {store.caps.version_text}: {reason}"
            return PlanItem(item.kind, item.name, "refused", detail)
    return item
