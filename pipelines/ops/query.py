"""Run analysts' SQL on the configured ClickHouse and shape the result for output."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipelines.clickhouse import Store


@dataclass
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]
    elapsed_s: float


def run_query(*, store: Store, sql: str) -> QueryResult:
    import time

    started = time.perf_counter()
    columns, rows = store.query_columns(sql)
    return QueryResult(columns, rows, time.perf_counter() - started)


def _plain(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def format_csv(result: QueryResult) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(result.columns)
    for row in result.rows:
        writer.writerow(["" if v is None else _plain(v) for v in row])
    return buf.getvalue()


def format_json(result: QueryResult) -> str:
    return json.dumps([dict(zip(result.columns, map(_plain, row), strict=True)) for row in result.rows], default=str)
