"""`--all-tiers`: one SQL statement over hot, warm and cold as if each tiered table were one table.

Every reference to a tiered table in the statement is replaced, in the text, by a subquery that
unions its tiers: the table itself (hot and warm volumes), or on 18.16 the hot and warm tables read
over HTTP, plus the cold Parquet files of the days the statement can touch. The statement runs in
the embedded engine, which reads S3 (18.16 cannot).

Day pruning: conditions on the time column in the WHERE (or PREWHERE) of the SELECT that reads the
table — `event_time >= '2024-05-03'`, `<`, `BETWEEN`, `=`, or the same on `toDate(event_time)` /
`toYYYYMMDD(event_time)`, joined by AND — bound the days, and only those days' cold files are named
in the subquery (hot and warm get the same bound, so their partitions prune too). Anything else
(an OR, a function of the column, no condition) reads every cold day: slower, still correct.

Each day is counted once, also after a crash in the middle of a move: the journal says which copy
of an in-flight day is the one to read (the source until it is dropped, then the copy).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any, cast

from pipelines.clickhouse.sql import quote_identifier
from pipelines.errors import UsageError
from pipelines.instants import parse_instant
from pipelines.lifecycle.context import Lifecycle
from pipelines.lifecycle.manifest import ColdFile, list_manifests
from pipelines.lifecycle.moves import structure
from pipelines.lifecycle.tiers import TableTiers, Tier, Tiers

if TYPE_CHECKING:
    from sqlglot import exp

_DAY_FUNCS = {"todate", "tostartofday", "todatetime", "todatetime64", "parsedatetimebesteffort", "todate32"}


@dataclass(frozen=True)
class TieredSql:
    """The rewritten statement and what it reads."""

    sql: str
    tables: tuple[str, ...]
    cold_days_read: int
    cold_days_total: int


@dataclass
class _Visible:
    """Which copy of each day a query reads, given the journal's moves in flight.

    `skip` is per unit of the table (the table itself, or on a cluster each shard): a shard in the
    middle of a move skips the day in its own source only, so a cluster with skips is read per shard.
    """

    cold: dict[date, list[ColdFile]] = field(default_factory=dict)
    skip: dict[int, dict[Tier, set[date]]] = field(default_factory=dict)

    def skipped(self, unit: int, tier: Tier) -> set[date]:
        return self.skip.get(unit, {}).get(tier, set())


def _visible(life: Lifecycle, tiers: Tiers) -> _Visible:
    vis = _Visible()
    for day, manifest in list_manifests(life.cold, tiers.name).items():
        vis.cold[day] = list(manifest.files)
    for index, unit in enumerate(tiers.units()):
        _in_flight(life, unit, vis, vis.skip.setdefault(index, {"hot": set(), "warm": set()}))
    vis.cold = {d: fs for d, fs in vis.cold.items() if fs}
    return vis


def _in_flight(life: Lifecycle, tiers: Tiers, vis: _Visible, skip: dict[Tier, set[date]]) -> None:
    for entry in life.journal(tiers.journal_key).open_entries():
        past_copy = entry.state != "planned"
        if entry.move == "warm-to-cold" and entry.state in ("verified", "source_dropped"):
            source: Tier = "hot" if tiers.layout == "volume" else "warm"
            parts = tiers.source_parts(source, entry.day)
            if entry.state == "source_dropped" or parts is None or parts.min_block > entry.source_max_block:
                files = [f for f in vis.cold.get(entry.day, []) if f.key not in entry.cold_keys]
                files.append(ColdFile(entry.cold_keys[0], entry.source, entry.schema, ""))
                vis.cold[entry.day] = files
        elif entry.move == "cold-to-hot" and past_copy:
            vis.cold[entry.day] = [f for f in vis.cold.get(entry.day, []) if f.key not in entry.cold_keys]
        elif tiers.layout == "table" and entry.move in ("hot-to-warm", "warm-to-hot"):
            source_tier: Tier = "hot" if entry.move == "hot-to-warm" else "warm"
            dest: Tier = "warm" if source_tier == "hot" else "hot"
            # Killed between the copy and its journal entry: the destination's fingerprint tells.
            if not past_copy and tiers.fingerprint(dest, entry.day) != entry.dest_before + entry.source:
                continue
            parts = tiers.source_parts(source_tier, entry.day)
            if parts is not None and parts.min_block <= entry.source_max_block:
                skip[source_tier].add(entry.day)  # the destination already holds the copy


def tiered_sql(*, life: Lifecycle, sql: str) -> TieredSql:
    """`sql` with every tiered table replaced by the union of its tiers; raises UsageError if unparsable."""
    import sqlglot
    from sqlglot import exp
    from sqlglot.errors import ParseError, TokenError

    try:
        tree = sqlglot.parse_one(sql, read="clickhouse")
    except (ParseError, TokenError) as exc:
        raise UsageError(
            f"--all-tiers cannot find the tables in this SQL: {str(exc).splitlines()[0]}",
            hint="simplify the statement, or query one tier without --all-tiers",
        ) from None
    database = life.store.database
    replacements: list[tuple[int, int, str]] = []
    visible: dict[str, _Visible] = {}
    read_days: set[tuple[str, date]] = set()
    for table in tree.find_all(exp.Table):
        name, db = table.name, table.db
        if name not in life.tiers or (db and db != database):
            continue
        tiers = life.tiers[name]
        if name not in visible:
            visible[name] = _visible(life, tiers)
        lo, hi = _bounds(table, tiers.policy.time_column)
        start, end = _span(sql, table)
        days = [d for d in sorted(visible[name].cold) if (lo is None or d >= lo) and (hi is None or d <= hi)]
        read_days.update((name, d) for d in days)
        union = _union(life, tiers, visible[name], days, lo, hi)
        alias = "" if table.alias else f" AS {quote_identifier(name)}"
        replacements.append((start, end, f"({union}){alias}"))
    text = sql
    for start, end, replacement in sorted(replacements, reverse=True):
        text = text[:start] + replacement + text[end:]
    total = sum(len(v.cold) for v in visible.values())
    return TieredSql(text, tuple(visible), len(read_days), total)


def _span(sql: str, table: exp.Table) -> tuple[int, int]:
    """[start, end) of `db.table` in the statement's text, quotes included."""
    this = table.this
    first = table.args.get("db") or this
    start, end = int(first.meta["start"]), int(this.meta["end"]) + 1
    if start > 0 and sql[start - 1] in '`"':
        start -= 1
    if end < len(sql) and sql[end] in '`"':
        end += 1
    return start, end


def _union(life: Lifecycle, tiers: Tiers, vis: _Visible, days: list[date], lo: date | None, hi: date | None) -> str:
    columns = tiers.engine_columns()
    names = ", ".join(quote_identifier(n) for n, _ in columns)
    bound = tiers.days_filter(lo, hi)
    branches: list[str] = []
    if isinstance(tiers, TableTiers):
        units = tiers.units()
        # A cluster reads through Distributed unless a shard is in the middle of a move: then per shard.
        read: list[tuple[int, Tiers]] = (
            [(0, tiers)] if len(units) == 1 or not _any_skip(vis) else list(enumerate(units))
        )
        for index, unit in read:
            for tier in ("hot", "warm") if tiers.warm_exists() else ("hot",):
                skipped = sorted(vis.skipped(index, tier))
                where = bound + "".join(f" AND NOT ({unit.day_filter(d)})" for d in skipped)
                branches.append(f"SELECT {names} FROM {unit.engine_source(tier, where)}")
    else:
        branches.append(f"SELECT {names} FROM {tiers.engine_source(None, bound)}")
    by_schema: dict[tuple[tuple[str, str], ...], list[str]] = {}
    for day in days:
        for f in vis.cold[day]:
            by_schema.setdefault(f.schema, []).append(f.key)
    for schema, keys in by_schema.items():
        present = dict(schema)
        exprs = [
            f"CAST({quote_identifier(n)} AS {t}) AS {quote_identifier(n)}"
            if n in present
            else f"CAST(defaultValueOfTypeName('{t}') AS {t}) AS {quote_identifier(n)}"
            for n, t in columns
        ]
        branches.append(f"SELECT {', '.join(exprs)} FROM {life.cold.read_function(keys, structure(schema))}")
    return " UNION ALL ".join(branches)


def _any_skip(vis: _Visible) -> bool:
    return any(days for unit in vis.skip.values() for days in unit.values())


def _bounds(table: exp.Table, time_column: str) -> tuple[date | None, date | None]:
    """The first and last day that the SELECT reading `table` can match, from its AND-ed conditions."""
    from sqlglot import exp

    select = table.find_ancestor(exp.Select)
    if select is None:
        return None, None
    names = {table.name, table.alias} - {""}
    lo: date | None = None
    hi: date | None = None
    for clause in ("where", "prewhere"):
        node = select.args.get(clause)
        if node is None:
            continue
        for cond in _conjuncts(cast("exp.Expression", node.this)):
            for first, last in _condition_days(cond, time_column, names):
                if first is not None:
                    lo = first if lo is None else max(lo, first)
                if last is not None:
                    hi = last if hi is None else min(hi, last)
    return lo, hi


def _conjuncts(node: exp.Expression) -> list[exp.Expression]:
    from sqlglot import exp

    if isinstance(node, exp.And):
        return _conjuncts(cast("exp.Expression", node.left)) + _conjuncts(cast("exp.Expression", node.right))
    if isinstance(node, exp.Paren):
        return _conjuncts(node.this)
    return [node]


def _condition_days(cond: exp.Expression, time_column: str, names: set[str]) -> list[tuple[date | None, date | None]]:
    from sqlglot import exp

    if isinstance(cond, exp.Between):
        kind = _target(cond.this, time_column, names)
        low, high = _value(cond.args["low"], kind), _value(cond.args["high"], kind)
        if kind is None:
            return []
        return [(_first(low, kind, strict=False), _last(high, kind, strict=False))]
    if isinstance(cond, exp.In):
        kind = _target(cond.this, time_column, names)
        values = [_value(v, kind) for v in cond.expressions]
        if kind is None or not values or any(v is None for v in values):
            return []
        days = [_first(v, kind, strict=False) for v in values]
        present = [d for d in days if d is not None]
        return [(min(present), max(present))] if present else []
    ops: dict[type[exp.Expression], tuple[str, str]] = {
        exp.GTE: (">=", "<="),
        exp.GT: (">", "<"),
        exp.LTE: ("<=", ">="),
        exp.LT: ("<", ">"),
        exp.EQ: ("=", "="),
    }
    pair = ops.get(type(cond))
    if pair is None:
        return []
    left, right = cond.args["this"], cond.args["expression"]
    op = pair[0]
    kind = _target(left, time_column, names)
    if kind is None:
        kind, op, right = _target(right, time_column, names), pair[1], left
    if kind is None:
        return []
    value = _value(right, kind)
    if value is None:
        return []
    if op == "=":
        day = _first(value, kind, strict=False)
        return [(day, day)]
    if op in (">=", ">"):
        return [(_first(value, kind, strict=op == ">"), None)]
    return [(None, _last(value, kind, strict=op == "<"))]


def _target(node: exp.Expression, time_column: str, names: set[str]) -> str | None:
    """'time' for the column itself, 'day' for toDate(col)/toStartOfDay(col), 'yyyymmdd' for toYYYYMMDD(col)."""
    from sqlglot import exp

    def is_column(n: Any) -> bool:
        return isinstance(n, exp.Column) and n.name == time_column and (not n.table or n.table in names)

    if is_column(node):
        return "time"
    if isinstance(node, exp.Anonymous) and len(node.expressions) >= 1 and is_column(node.expressions[0]):
        fn = str(node.name).lower()
        if fn in ("todate", "tostartofday", "todate32"):
            return "day"
        if fn == "toyyyymmdd":
            return "yyyymmdd"
    return None


def _value(node: exp.Expression, kind: str | None) -> date | datetime | None:
    """The constant `node` stands for: a datetime for time/day targets, an int for yyyymmdd; else None."""
    from sqlglot import exp

    if kind is None:
        return None
    if kind == "yyyymmdd":
        if isinstance(node, exp.Literal) and not node.is_string and node.this.isdigit() and len(node.this) == 8:
            n = node.this
            try:
                return date(int(n[:4]), int(n[4:6]), int(n[6:]))
            except ValueError:
                return None
        return None
    text: str | None = None
    if isinstance(node, exp.Literal) and node.is_string:
        text = node.this
    elif isinstance(node, exp.Cast) and isinstance(node.this, exp.Literal) and node.this.is_string:
        text = node.this.this
    elif isinstance(node, exp.Anonymous) and str(node.name).lower() in _DAY_FUNCS and node.expressions:
        first = node.expressions[0]
        if isinstance(first, exp.Literal) and first.is_string:
            text = first.this
    if text is None:
        return None
    try:
        return parse_instant(text, option="--all-tiers")
    except UsageError:
        return None


def _day(value: date | datetime) -> date:
    return value.date() if isinstance(value, datetime) else value


def _first(value: date | datetime | None, kind: str, *, strict: bool) -> date | None:
    """The first day a `>=` (or, strict, `>`) bound admits."""
    if value is None:
        return None
    day = _day(value)
    return day + timedelta(days=1) if strict and kind != "time" else day


def _last(value: date | datetime | None, kind: str, *, strict: bool) -> date | None:
    """The last day a `<=` (or, strict, `<`) bound admits (`< midnight` ends the day before)."""
    if value is None:
        return None
    day = _day(value)
    if not strict:
        return day
    if kind == "time" and isinstance(value, datetime) and value != datetime.combine(day, time(), value.tzinfo):
        return day
    return day - timedelta(days=1)
