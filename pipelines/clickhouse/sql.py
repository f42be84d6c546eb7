"""Client-side parameter substitution and identifier quoting, the same for both backends.

Parameters use pyformat (`%(name)s`) like clickhouse-driver: with params, a literal `%` in the SQL
must be written `%%`; without params the SQL is sent as is. Values become ClickHouse literals:

| Python | literal |
|---|---|
| None | NULL |
| bool | 1 / 0 |
| int, float, Decimal | the number (`nan`, `inf`, `-inf` for floats) |
| str | `'…'` with `\\` `'` and control characters backslash-escaped |
| bytes | `'…'` with non-printable bytes as `\\xNN` |
| datetime | `toDateTime('…', 'UTC')`; with microseconds `toDateTime64('….ffffff', 6, 'UTC')` where |
|  | the server has DateTime64 (else truncated to the second); naive datetimes are taken as UTC |
| date | `toDate('YYYY-MM-DD')` |
| UUID | `toUUID('…')` |
| list / tuple / set | `[…]` / `(…)` (a tuple suits `IN %(ids)s`) |
| Enum | its value |
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import Enum
from typing import Any
from uuid import UUID

from pipelines.errors import StoreError

_ESCAPES = {
    "\\": "\\\\",
    "'": "\\'",
    "\b": "\\b",
    "\f": "\\f",
    "\r": "\\r",
    "\n": "\\n",
    "\t": "\\t",
    "\0": "\\0",
    "\a": "\\a",
    "\v": "\\v",
}


def quote_string(s: str) -> str:
    return "'" + "".join(_ESCAPES.get(c, c) for c in s) + "'"


def quote_bytes(b: bytes) -> str:
    out = []
    for byte in b:
        ch = chr(byte)
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif 32 <= byte < 127:
            out.append(ch)
        else:
            out.append(f"\\x{byte:02X}")
    return "'" + "".join(out) + "'"


def quote_identifier(name: str) -> str:
    """`name` → `` `name` `` (backslash-escaped inside), safe for any table or column name."""
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def split_table(table: str, database: str) -> tuple[str, str]:
    """`'db.t'` → `('db', 't')`; `'t'` → `(database, 't')`. Backtick-quoted parts are unquoted."""
    table = table.strip()
    if table.startswith("`"):
        end = table.find("`", 1)
        first, rest = table[1:end], table[end + 1 :]
        if rest.startswith("."):
            return first, rest[1:].strip("`")
        return database, first
    if "." in table:
        db, _, name = table.partition(".")
        return db.strip("`"), name.strip("`")
    return database, table


def qualify(table: str, database: str) -> str:
    """A table name as `` `db`.`t` ``, unqualified names resolving in `database`."""
    db, name = split_table(table, database)
    return f"{quote_identifier(db)}.{quote_identifier(name)}"


def literal(value: Any, *, datetime64: bool = True) -> str:
    """One Python value as a ClickHouse literal (see the module docstring)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, Enum):
        return literal(value.value, datetime64=datetime64)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise StoreError(f"cannot pass the Decimal {value} to ClickHouse")
        return str(value)
    if isinstance(value, str):
        return quote_string(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return quote_bytes(bytes(value))
    if isinstance(value, datetime):
        utc = value.astimezone(UTC) if value.tzinfo is not None else value
        if utc.microsecond and datetime64:
            return f"toDateTime64('{utc:%Y-%m-%d %H:%M:%S.%f}', 6, 'UTC')"
        return f"toDateTime('{utc:%Y-%m-%d %H:%M:%S}', 'UTC')"
    if isinstance(value, date):
        return f"toDate('{value:%Y-%m-%d}')"
    if isinstance(value, UUID):
        return f"toUUID('{value}')"
    if isinstance(value, list | set | frozenset):
        items = sorted(value, key=repr) if isinstance(value, set | frozenset) else value
        return "[" + ", ".join(literal(v, datetime64=datetime64) for v in items) + "]"
    if isinstance(value, tuple):
        return "(" + ", ".join(literal(v, datetime64=datetime64) for v in value) + ")"
    raise StoreError(f"cannot pass a {type(value).__name__} as a ClickHouse query parameter")


def substitute(sql: str, params: dict[str, Any] | None, *, datetime64: bool = True) -> str:
    """`sql` with each `%(name)s` replaced by the literal of `params[name]`."""
    if params is None:
        return sql
    if not isinstance(params, dict):
        raise StoreError(f"query parameters must be a dict, got {type(params).__name__}")
    escaped = {key: literal(value, datetime64=datetime64) for key, value in params.items()}
    try:
        return sql % escaped
    except KeyError as exc:
        raise StoreError(f"the query uses the parameter %({exc.args[0]})s but no value was given") from None
    except (TypeError, ValueError) as exc:
        raise StoreError(
            f"cannot substitute parameters into the query: {exc}",
            hint="parameters are written %(name)s; write a literal % as %%",
        ) from None
