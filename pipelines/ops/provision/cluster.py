"""The ClickHouse objects of configs/clickhouse/tables.yaml on a cluster, planned host by host, applied `ON CLUSTER`.

Every host of `system.clusters` is asked first: one that does not answer, has lost its ZooKeeper
session or whose replicas are more than `clickhouse.cluster.max_replica_delay_s` behind refuses the
whole plan, with the host named. That is what keeps provision from half-applying: an `ON CLUSTER`
statement runs on the hosts that are up and waits (then times out) for the others, leaving the
cluster in two shapes. With every host up, each object's state is read on every host, and one
statement per object creates it wherever it is missing (`IF NOT EXISTS` makes the hosts that have it
skip); an object that differs between hosts, or from the spec, is refused like on one server.
Layout of the objects: `pipelines.clickhouse.cluster_ddl`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

from pipelines.clickhouse import ddl
from pipelines.clickhouse.cluster import Host, host_report
from pipelines.clickhouse.cluster_ddl import (
    base_engine,
    localise_select,
    render_create_distributed,
    replicated_engine,
    table_settings,
)
from pipelines.clickhouse.sql import quote_identifier
from pipelines.ops.provision.plan import PlanItem, run_all

if TYPE_CHECKING:
    from pipelines.clickhouse.cluster_store import ClusterStore
    from pipelines.contracts.specs import TablesFile, TableSpec


@dataclass
class _Catalog:
    """What one host has in the database: engines and columns of its tables."""

    database: bool
    engines: dict[str, str] = field(default_factory=dict)
    columns: dict[str, dict[str, str]] = field(default_factory=dict)


def plan_cluster(store: ClusterStore, database: str, tables: TablesFile) -> list[PlanItem]:
    items = _plan_hosts(store)
    if any(item.action == "refused" for item in items):
        return items
    catalogs = {host: _read_catalog(store, host, database) for host in store.topology.hosts}
    name = store.cluster.name
    have_db = [h for h, c in catalogs.items() if c.database]
    if len(have_db) == len(catalogs):
        items.append(PlanItem("database", database, "unchanged", f"on all {len(catalogs)} hosts"))
    else:
        sql = ddl.render_create_database(database, on_cluster=name)
        items.append(
            PlanItem("database", database, "create", _where(catalogs, have_db), partial(store.execute, sql), (sql,))
        )
    for view_name in tables.retired_views:  # first: an old view must not write into a table about to be replaced
        have = [h for h, c in catalogs.items() if view_name in c.engines]
        if have:
            target = f"{quote_identifier(database)}.{quote_identifier(view_name)}"
            sql = f"DROP TABLE IF EXISTS {target} ON CLUSTER {quote_identifier(name)}"
            detail = "drop (retired) " + _where(catalogs, [h for h in catalogs if h not in have])
            items.append(PlanItem("view", view_name, "change", detail, partial(store.execute, sql), (sql,)))
    locals_ = {spec.name: store.local(spec.name) for spec in tables.tables}
    for spec in tables.tables:
        local = locals_[spec.name]
        try:
            engine = replicated_engine(spec, store.cluster, database, local)
        except ValueError as exc:
            items.append(PlanItem("table", local, "refused", str(exc)))
            continue
        create_local = ddl.render_create_table(
            spec,
            database,
            store.caps,
            name=local,
            engine=engine,
            on_cluster=name,
            table_settings=table_settings(spec),
        )
        items.append(
            _plan_object(store, catalogs, database, spec, local, "Replicated" + base_engine(spec), create_local)
        )
        create_front = render_create_distributed(spec, store.cluster, database, local)
        items.append(_plan_object(store, catalogs, database, spec, spec.name, "Distributed", create_front))
    existing = set().union(*(c.engines for c in catalogs.values()))
    for view in tables.views:
        have = [h for h, c in catalogs.items() if view.name in c.engines]
        target = locals_.get(view.to, view.to)
        if len(have) == len(catalogs):
            items.append(PlanItem("view", view.name, "unchanged", f"→ {target}, on all {len(catalogs)} hosts"))
        elif view.to not in locals_ and view.to not in existing:
            detail = f"writes to table '{view.to}', which is neither in tables.yaml nor in database '{database}'"
            items.append(PlanItem("view", view.name, "refused", detail))
        else:
            select = localise_select(view.select, database, locals_)
            sql = ddl.render_create_view(view, database, to=target, select=select, on_cluster=name)
            detail = f"→ {target}, " + _where(catalogs, have)
            items.append(PlanItem("view", view.name, "create", detail, partial(store.execute, sql), (sql,)))
    return items


def _plan_hosts(store: ClusterStore) -> list[PlanItem]:
    """One item per host: unchanged when it answers and its replicas keep up, refused (named) otherwise."""
    items = []
    limit = store.cluster.max_replica_delay_s
    for host in store.topology.hosts:
        e = host.endpoint
        report = host_report(e.host, e.port, endpoint=e, timeout_s=store.settings.clickhouse.connect_timeout_s)
        if report.problem:
            detail = (
                f"{report.problem} — ON CLUSTER DDL would change the other hosts and wait for this one; "
                "start it (nova stack up --with clickhouse-cluster) and re-run"
            )
            items.append(PlanItem("host", host.label, "refused", detail))
            continue
        behind = report.behind(limit)
        if behind:
            detail = "; ".join(behind) + " — wait until it has caught up (nova stack status shows the lag), then re-run"
            items.append(PlanItem("host", host.label, "refused", detail))
            continue
        items.append(PlanItem("host", host.label, "unchanged", report.summary))
    return items


def _read_catalog(store: ClusterStore, host: Host, database: str) -> _Catalog:
    with store.open_host(host) as conn:
        if not conn.database_exists(database):
            return _Catalog(database=False)
        catalog = _Catalog(database=True)
        for name, engine in conn.query_rows(
            "SELECT name, engine FROM system.tables WHERE database = %(db)s", {"db": database}
        ):
            catalog.engines[str(name)] = str(engine)
        for table, column, ctype in conn.query_rows(
            "SELECT table, name, type FROM system.columns WHERE database = %(db)s", {"db": database}
        ):
            catalog.columns.setdefault(str(table), {})[str(column)] = str(ctype)
        return catalog


def _where(catalogs: dict[Host, _Catalog], have: list[Host]) -> str:
    missing = [h.endpoint.label for h in catalogs if h not in have]
    if not have:
        return f"on all {len(catalogs)} hosts"
    return f"on {', '.join(missing)} (present on {len(have)} of {len(catalogs)} hosts)"


def _plan_object(
    store: ClusterStore,
    catalogs: dict[Host, _Catalog],
    database: str,
    spec: TableSpec,
    name: str,
    wanted_engine: str,
    create_sql: str,
) -> PlanItem:
    wanted = ddl.render_columns(spec, store.caps)
    settings = _ddl_settings(store)
    have = [h for h, c in catalogs.items() if name in c.engines]
    problems = []
    for host in have:
        engine = catalogs[host].engines[name]
        if engine != wanted_engine:
            problems.append(
                f"on {host.endpoint.label} it has engine {engine}; the cluster layout asks for {wanted_engine} "
                "— migrate the data into a new table"
            )
            continue
        cols = catalogs[host].columns.get(name, {})
        for col, ctype in wanted:
            if col in cols and ddl.normalise_type(cols[col]) != ddl.normalise_type(ctype):
                problems.append(f"on {host.endpoint.label} column {col} is {cols[col]}, the spec says {ctype}")
    if problems:
        return PlanItem("table", name, "refused", "; ".join(problems))
    if len(have) < len(catalogs):
        detail = f"{wanted_engine}, {len(wanted)} columns, " + _where(catalogs, have)
        return PlanItem(
            "table", name, "create", detail, partial(store.execute, create_sql, settings=settings), (create_sql,)
        )
    missing_by_host = {
        h: tuple(col for col, _t in wanted if col not in catalogs[h].columns.get(name, {})) for h in catalogs
    }
    shapes = set(missing_by_host.values())
    if len(shapes) > 1:
        listing = "; ".join(f"{h.endpoint.label} lacks {', '.join(m) or 'nothing'}" for h, m in missing_by_host.items())
        return PlanItem(
            "table", name, "refused", f"its columns differ between hosts ({listing}) — align them by hand first"
        )
    (missing,) = shapes
    if missing:
        previous: dict[str, str | None] = {}
        last: str | None = None
        for col, _t in wanted:
            previous[col] = last
            last = col
        types = dict(wanted)
        on = store.cluster.name
        sqls = tuple(
            ddl.render_add_column(name, database, col, types[col], previous[col], on_cluster=on) for col in missing
        )
        return PlanItem(
            "table",
            name,
            "change",
            "add " + ", ".join(f"{c} {types[c]}" for c in missing) + f" on all {len(catalogs)} hosts",
            run_all([partial(store.execute, sql, settings=settings) for sql in sqls]),
            sqls,
        )
    ncols = len(next(iter(catalogs.values())).columns.get(name, {}))
    return PlanItem("table", name, "unchanged", f"{wanted_engine}, {ncols} columns, on all {len(catalogs)} hosts")


def _ddl_settings(store: ClusterStore) -> dict[str, object]:
    setting = store.caps.low_cardinality_setting
    return {setting: 1} if setting and store.caps.low_cardinality else {}
