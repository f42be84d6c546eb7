"""The legacy batch warehouse itself (PostgreSQL): connections, its schema, the nightly ETL.

The warehouse is what such a company really has, not a copy of our contract (configs/legacy/):

    schema.sql    card_txn (local wall-clock time + IANA zone, amounts in MAJOR units, one-letter
                  codes) and daily_merchant_summary, the nightly ETL's output
    etl.sql       the nightly ETL: rebuild daily_merchant_summary for a range of business dates

    ensure_schema(settings=settings)
    run_nightly_etl(settings=settings, from_date=d1, to_date=d2)

Every schema-qualified statement takes the schema from `settings.legacy.schema_name`, so tests
work in a schema of their own. psycopg is imported where it is used, and its errors become
`WarehouseError` in one place, `warehouse_errors`, so no caller catches a vendor exception.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from typing import TYPE_CHECKING, TypeAlias

from pipelines.dualrun.mapping import legacy_config_file
from pipelines.errors import ConfigError, WarehouseError
from pipelines.urls import redact_url

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql
    from psycopg.rows import TupleRow

    from pipelines.config import Settings

    Connection: TypeAlias = psycopg.Connection[TupleRow]

SCHEMA_FILE = "schema.sql"
ETL_FILE = "etl.sql"
SUMMARY_TABLE = "daily_merchant_summary"


def pg_error_text(exc: BaseException) -> str:
    """PostgreSQL's primary message (one line, without the DETAIL/HINT/CONTEXT that follow)."""
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    text = (primary or str(exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextmanager
def warehouse_errors(
    what: str,
    *,
    hint: str | None = None,
    missing_hint: str | None = None,
    duplicate: WarehouseError | None = None,
) -> Iterator[None]:
    """Turn a psycopg error raised inside into `WarehouseError(f"{what}: {reason}")`.

    The one place psycopg's exceptions become nova's. `missing_hint` replaces `hint` when PostgreSQL
    says an object does not exist (a wrong schema or table name); `duplicate` is raised instead of
    the generic error on a unique violation (rows that were loaded before).
    """
    import psycopg

    try:
        yield
    except psycopg.Error as exc:
        if duplicate is not None and isinstance(exc, psycopg.errors.UniqueViolation):
            raise duplicate from None
        reason = pg_error_text(exc)
        if missing_hint is not None and "does not exist" in reason:
            hint = missing_hint
        raise WarehouseError(f"{what}: {reason}", hint=hint) from None


def connect(
    *, settings: Settings, dsn: str | None = None, autocommit: bool = False, inet_as_text: bool = False
) -> Connection:
    """A psycopg connection to the legacy warehouse (`dsn`, default legacy.dsn); failures become WarehouseError.

    `inet_as_text` loads inet columns as their text (10.1.2.3/24) rather than ipaddress objects: the
    mapping wants text, and those objects are slow to build for millions of rows.
    """
    import psycopg
    from psycopg.types.string import TextLoader

    target = dsn or settings.legacy.dsn
    with warehouse_errors(
        f"cannot connect to the legacy warehouse {redact_url(target)}",
        hint="is PostgreSQL up? `nova stack status` (start it with `nova stack up`), or set legacy.dsn",
    ):
        conn = psycopg.connect(target, autocommit=autocommit, connect_timeout=10, application_name="nova")
    if inet_as_text:
        conn.adapters.register_loader("inet", TextLoader)
    return conn


def _render(settings: Settings, name: str, schema: str, **literals: object) -> sql.Composed:
    """A SQL file of configs/legacy with {schema} quoted as an identifier and the other placeholders as literals."""
    from psycopg import sql

    path = legacy_config_file(settings, name)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"legacy SQL file {path} does not exist", hint="restore it from git") from None
    # Comments may contain braces; only the statements are templated.
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    return sql.SQL(body).format(schema=sql.Identifier(schema), **{k: sql.Literal(v) for k, v in literals.items()})


def ensure_schema(*, settings: Settings, conn: Connection | None = None) -> None:
    """Create the legacy schema and tables if missing (idempotent)."""
    schema = settings.legacy.schema_name
    statement = _render(settings, SCHEMA_FILE, schema)
    own = conn is None
    conn = conn or connect(settings=settings)
    try:
        with warehouse_errors(f"cannot create the legacy schema {schema!r}"), conn.transaction():
            conn.execute(statement)
    finally:
        if own:
            conn.close()


def run_nightly_etl(*, settings: Settings, from_date: date, to_date: date, conn: Connection | None = None) -> int:
    """Rebuild daily_merchant_summary for business dates [from_date, to_date); returns the summary rows written."""
    from psycopg import sql

    schema = settings.legacy.schema_name
    statement = _render(settings, ETL_FILE, schema, from_date=from_date, to_date=to_date)
    count_sql = sql.SQL("SELECT count(*) FROM {}.{} WHERE business_date >= %s AND business_date < %s").format(
        sql.Identifier(schema), sql.Identifier(SUMMARY_TABLE)
    )
    own = conn is None
    conn = conn or connect(settings=settings)
    try:
        failed = warehouse_errors(f"the nightly ETL failed for {from_date}..{to_date} in schema {schema!r}")
        with failed, conn.transaction():
            conn.execute(statement)
            count = conn.execute(count_sql, (from_date, to_date)).fetchone()
    finally:
        if own:
            conn.close()
    return int(count[0]) if count else 0
