"""The legacy batch warehouse (PostgreSQL): its schema, a realistic seed, the nightly ETL, and the
mapping of its rows to our Avro contract.

The warehouse is what such a company really has, not a copy of our contract (configs/legacy/):

    schema.sql    card_txn (local wall-clock time + IANA zone, amounts in MAJOR units, one-letter
                  codes) and daily_merchant_summary, the nightly ETL's output
    etl.sql       the nightly ETL: rebuild daily_merchant_summary for a range of business dates
    mapping.yaml  card_txn row → CardTransaction (renames, unit conversion with per-currency
                  exponents, time-zone conversion, enum maps)

    mapping = load_mapping(settings=settings)
    map_row = mapping.compile()
    map_row(row)            # MappedRow(record, utc_us) or Reject(reason, detail); row: column → value
    seed_legacy(settings=settings, days=3, rows=5000, seed=1)   # schema, COPY, nightly ETL
    run_nightly_etl(settings=settings, from_date=d1, to_date=d2)

Every schema-qualified statement takes the schema from `settings.legacy.schema_name`, so tests
work in a schema of their own. psycopg is imported where it is used.
"""

from __future__ import annotations

import ipaddress
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipelines.errors import ConfigError, UsageError, WarehouseError
from pipelines.urls import redact_url

if TYPE_CHECKING:
    import psycopg

    from pipelines.config import Settings

LEGACY_DIR = Path("legacy")  # under the configs dir
SCHEMA_FILE = "schema.sql"
ETL_FILE = "etl.sql"
MAPPING_FILE = "mapping.yaml"
SUMMARY_TABLE = "daily_merchant_summary"

# The columns of card_txn in table order, without loaded_at (the database's default).
CARD_TXN_COLUMNS = (
    "txn_ref", "txn_ts_local", "txn_tz", "card_token", "acct_no", "merchant_code", "mcc", "amount", "ccy",
    "merchant_country", "channel_cd", "status_cd", "device_ref", "client_ip", "geo_lat", "geo_lon", "batch_id",
)  # fmt: skip

EPOCH = datetime(1970, 1, 1)
_US = timedelta(microseconds=1)
_HOUR_US = 3_600_000_000
UNPLACEABLE_US = -(2**62)  # order key of a row whose time cannot be read: first, and in every range


def _config_file(settings: Settings, name: str) -> Path:
    return settings.configs_dir / LEGACY_DIR / name


# ── the mapping: a card_txn row → the contract ─────────────────────────────────────────────────


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FieldRule(_Model):
    """A contract field copied from one column, with a conversion."""

    column: str = Field(description="Legacy column the value comes from.")
    type: Literal["string", "char", "uuid", "float", "host"] = Field(
        "string",
        description="string: as is; char: char(n) padding trimmed; uuid: text that must parse as a UUID; "
        "float: numeric → double; host: inet → address without /mask (PostgreSQL's host()).",
    )
    nullable: bool = Field(False, description="NULL maps to null; otherwise a NULL rejects the row.")


class EventTimeRule(_Model):
    """event_time (UTC ms) = local_column AT TIME ZONE zone_column."""

    local_column: str = Field(description="timestamp without time zone: wall-clock time at the merchant.")
    zone_column: str = Field(description="IANA zone name of the merchant.")


class AmountRule(_Model):
    """amount_minor = column × 10^exponent(currency), exact."""

    column: str = Field(description="numeric amount in major units.")
    currency_column: str = Field(description="ISO 4217 code that selects the exponent.")
    exponents: dict[str, int] = Field(description="ISO 4217 minor-unit exponent per currency.")

    @field_validator("exponents")
    @classmethod
    def _sane(cls, v: dict[str, int]) -> dict[str, int]:
        for code, exp in v.items():
            if len(code) != 3 or not code.isalpha() or not code.isupper():
                raise ValueError(f"{code!r} is not an ISO 4217 code (3 capital letters)")
            if not 0 <= exp <= 4:
                raise ValueError(f"exponent of {code} must be 0–4, got {exp}")
        if not v:
            raise ValueError("needs at least one currency")
        return v


class EnumRule(_Model):
    """A legacy code column → a contract enum symbol."""

    column: str
    values: dict[str, str] = Field(description="legacy code → contract symbol.")


Value = Any
Converter = Callable[[Value, str], Value]  # (value, column) → converted; raises _RowError


class Reject(NamedTuple):
    """A row the mapping cannot turn into a record."""

    reason: str  # short code, counted: null_value, unknown_currency, amount_precision, bad_zone, …
    detail: str  # for people: names the column and the value


class MappedRow(NamedTuple):
    record: dict[str, Any]  # the Avro record (event_time as epoch ms)
    utc_us: int  # the event's UTC time in µs since the epoch (the source's order key)


class _RowError(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class LegacyMapping(_Model):
    """configs/legacy/mapping.yaml, validated. `map_row` is the hot path of `nova replay`."""

    table: str = Field("card_txn", description="The transactions table (in settings.legacy.schema).")
    fields: dict[str, FieldRule] = Field(description="Contract field → column and conversion.")
    event_time: EventTimeRule
    amount_minor: AmountRule
    enums: dict[str, EnumRule] = Field(default_factory=dict, description="Contract enum field → code map.")

    source_path: str = Field("", exclude=True, description="Where the mapping was loaded from (for messages).")

    @property
    def columns(self) -> list[str]:
        """Every legacy column the mapping reads, without duplicates."""
        cols = [r.column for r in self.fields.values()]
        cols += [self.event_time.local_column, self.event_time.zone_column]
        cols += [self.amount_minor.column, self.amount_minor.currency_column]
        cols += [e.column for e in self.enums.values()]
        return list(dict.fromkeys(cols))

    @property
    def key_column(self) -> str:
        """The column that identifies a row (transaction_id's): the tie-breaker of the order key."""
        return self.fields["transaction_id"].column

    def targets(self) -> list[str]:
        return [*self.fields, "event_time", "amount_minor", *self.enums]

    def check_contract(self, schema: dict[str, Any]) -> None:
        """Raise ConfigError unless the mapping produces exactly the contract's fields and enum symbols."""
        where = self.source_path or MAPPING_FILE
        contract = {f["name"]: f for f in schema.get("fields", [])}
        targets = self.targets()
        seen: set[str] = set()
        for t in targets:
            if t in seen:
                raise ConfigError(f"{where}: contract field '{t}' is produced twice", hint="map it once")
            seen.add(t)
            if t not in contract:
                raise ConfigError(
                    f"{where}: key '{t}' is not a field of the contract {schema.get('name', '')}",
                    hint=f"contract fields: {', '.join(contract)}",
                )
        for name, f in contract.items():
            if name not in seen and "default" not in f:
                raise ConfigError(
                    f"{where}: the contract's required field '{name}' is not mapped",
                    hint="add it under fields:, or give it a default in the schema",
                )
        if "transaction_id" not in self.fields:
            raise ConfigError(f"{where}: fields.transaction_id is required (it orders and identifies rows)")
        for name, rule in self.enums.items():
            ftype = contract[name]["type"]
            symbols = ftype.get("symbols") if isinstance(ftype, dict) else None
            if not symbols:
                raise ConfigError(f"{where}: enums.{name}: the contract field '{name}' is not an enum")
            for code, symbol in rule.values.items():
                if symbol not in symbols:
                    raise ConfigError(
                        f"{where}: key 'enums.{name}.values.{code}': '{symbol}' is not a symbol of {name}",
                        hint=f"symbols: {', '.join(symbols)}",
                    )

    def compile(self) -> Callable[[dict[str, Any]], MappedRow | Reject]:
        """The row → record function, with the per-field work decided once."""
        plan: list[tuple[str, str, Converter, bool]] = [
            (target, rule.column, _CONVERTERS[rule.type], rule.nullable) for target, rule in self.fields.items()
        ]
        enum_plan = [(target, rule.column, dict(rule.values)) for target, rule in self.enums.items()]
        local_col, zone_col = self.event_time.local_column, self.event_time.zone_column
        amount_col, ccy_col = self.amount_minor.column, self.amount_minor.currency_column
        exponents = {ccy: Decimal(10) ** exp for ccy, exp in self.amount_minor.exponents.items()}
        zones = ZoneCache()

        def map_row(row: dict[str, Any]) -> MappedRow | Reject:
            try:
                record: dict[str, Any] = {}
                for target, column, convert, nullable in plan:
                    value = row.get(column)
                    if value is None or (value == "" and convert is not _as_string):
                        if not nullable:
                            raise _RowError("null_value", f"{column} is NULL")
                        record[target] = None
                    else:
                        record[target] = convert(value, column)
                utc_us = zones.utc_us(row.get(local_col), row.get(zone_col), local_col, zone_col)
                record["event_time"] = utc_us // 1000
                record["amount_minor"] = _amount_minor(
                    row.get(amount_col), row.get(ccy_col), exponents, amount_col, ccy_col
                )
                for target, column, values in enum_plan:
                    code = row.get(column)
                    if code is None:
                        raise _RowError("null_value", f"{column} is NULL")
                    symbol = values.get(str(code).rstrip())
                    if symbol is None:
                        raise _RowError(f"unknown_{target}", f"{column} {code!r} is not one of {', '.join(values)}")
                    record[target] = symbol
                return MappedRow(record, utc_us)
            except _RowError as exc:
                return Reject(exc.reason, exc.detail)

        return map_row

    def order_key(self, ident: Value, local: Value, zone: Value, zones: ZoneCache) -> tuple[int, str]:
        """(UTC µs, row id) of a file row, from its id, local time and zone: the replay order.

        A row whose zone is unknown is placed at its local time read as UTC, and a row whose time
        cannot be read at all sorts first (UNPLACEABLE_US): either will be rejected by `map_row`,
        and must still fall into some range so that it is reported, not skipped.
        """
        ref = "" if ident is None else str(ident)
        try:
            local_dt = _as_datetime(local, self.event_time.local_column)
        except _RowError:
            return UNPLACEABLE_US, ref
        try:
            return zones.utc_us(local_dt, zone, self.event_time.local_column, self.event_time.zone_column), ref
        except _RowError:
            return (local_dt - EPOCH) // _US, ref


def _as_string(value: Value, column: str) -> str:
    return value if isinstance(value, str) else str(value)


def _as_char(value: Value, column: str) -> str:
    return (value if isinstance(value, str) else str(value)).rstrip(" ")


_UUID_TEXT = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_IPV4_TEXT = re.compile(r"(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)")


def _as_uuid(value: Value, column: str) -> str:
    # Kept as written (not canonicalised), so the id stays equal to the legacy txn_ref.
    text = value if isinstance(value, str) else str(value)
    if _UUID_TEXT.fullmatch(text) is None:
        raise _RowError("bad_uuid", f"{column} {text!r} is not a UUID")
    return text


def _as_float(value: Value, column: str) -> float:
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise _RowError("bad_number", f"{column} {value!r} is not a number") from None
    if not math.isfinite(result):
        raise _RowError("bad_number", f"{column} {value!r} is not a finite number")
    return result


def _as_host(value: Value, column: str) -> str:
    if isinstance(value, ipaddress.IPv4Interface | ipaddress.IPv6Interface):
        return str(value.ip)
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return str(value)
    text = value if isinstance(value, str) else str(value)
    if "/" in text:
        text = text.split("/", 1)[0]
    if _IPV4_TEXT.fullmatch(text):
        return text
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise _RowError("bad_ip", f"{column} {value!r} is not an IP address") from None


_CONVERTERS: dict[str, Converter] = {
    "string": _as_string, "char": _as_char, "uuid": _as_uuid, "float": _as_float, "host": _as_host,
}  # fmt: skip


def _as_datetime(value: Value, column: str) -> datetime:
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            raise _RowError("bad_timestamp", f"{column} {value.isoformat()} has a zone; expected wall-clock time")
        return value
    if value is None or value == "":
        raise _RowError("null_value", f"{column} is NULL")
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        raise _RowError("bad_timestamp", f"{column} {value!r} is not a timestamp") from None
    if parsed.tzinfo is not None:
        raise _RowError("bad_timestamp", f"{column} {value!r} has a UTC offset; expected wall-clock time")
    return parsed


def _amount_minor(value: Value, ccy: Value, scales: dict[str, Decimal], column: str, ccy_column: str) -> int:
    if ccy is None:
        raise _RowError("null_value", f"{ccy_column} is NULL")
    code = str(ccy).rstrip(" ")
    scale = scales.get(code)
    if scale is None:
        raise _RowError("unknown_currency", f"{ccy_column} {code!r} has no exponent in {MAPPING_FILE}")
    if value is None or value == "":
        raise _RowError("null_value", f"{column} is NULL")
    if isinstance(value, Decimal):
        amount = value
    elif isinstance(value, int | str):
        try:
            amount = Decimal(value)
        except InvalidOperation:
            raise _RowError("bad_amount", f"{column} {value!r} is not a number") from None
    elif isinstance(value, float):
        amount = Decimal(repr(value))  # the shortest decimal that round-trips, not the binary expansion
    else:
        raise _RowError("bad_amount", f"{column} {value!r} is not a number")
    if not amount.is_finite():
        raise _RowError("bad_amount", f"{column} {value!r} is not a finite number")
    minor = amount * scale
    integral = minor.to_integral_value()
    if minor != integral:
        raise _RowError(
            "amount_precision",
            f"{column} {amount} {code} has more decimals than {code} allows ({len(str(scale)) - 1})",
        )
    return int(integral)


class ZoneCache:
    """Local wall-clock time + IANA zone → UTC µs, with PostgreSQL's rule for DST gaps and overlaps.

    PostgreSQL reads a time in a spring-forward gap with the offset before the transition and an
    ambiguous fall-back time with the offset after it — in both cases the smaller UTC offset, i.e.
    the later UTC instant. Replay from a file must agree with replay from the database.
    """

    def __init__(self) -> None:
        self._zones: dict[str, ZoneInfo | None] = {}
        # (zone, local hour) → the one UTC offset (µs) valid all that hour, or None near a transition.
        self._hours: dict[tuple[str, int], int | None] = {}

    def zone(self, name: str) -> ZoneInfo | None:
        try:
            return self._zones[name]
        except KeyError:
            pass
        zone: ZoneInfo | None
        try:
            zone = ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            zone = None
        self._zones[name] = zone
        return zone

    def utc_us(self, local: Value, zone_name: Value, local_column: str, zone_column: str) -> int:
        local_dt = _as_datetime(local, local_column)
        if zone_name is None or zone_name == "":
            raise _RowError("null_value", f"{zone_column} is NULL")
        name = zone_name if isinstance(zone_name, str) else str(zone_name)
        local_us = (local_dt - EPOCH) // _US
        key = (name, local_us // _HOUR_US)
        try:
            offset = self._hours[key]
        except KeyError:
            offset = self._hours[key] = self._hour_offset(name, key[1], zone_column)
        if offset is not None:
            return local_us - offset
        return local_us - self._offset(local_dt, self.zone(name))  # type: ignore[arg-type]

    def _hour_offset(self, name: str, hour: int, zone_column: str) -> int | None:
        zone = self.zone(name)
        if zone is None:
            raise _RowError("bad_zone", f"{zone_column} {name!r} is not an IANA time zone")
        start = EPOCH + timedelta(microseconds=hour * _HOUR_US)
        end = start + timedelta(microseconds=_HOUR_US - 1)
        offsets = {d.replace(tzinfo=zone, fold=fold).utcoffset() for d in (start, end) for fold in (0, 1)}
        return self._offset(start, zone) if len(offsets) == 1 else None

    @staticmethod
    def _offset(local_dt: datetime, zone: ZoneInfo) -> int:
        aware = local_dt.replace(tzinfo=zone)
        off0 = aware.utcoffset()
        off1 = aware.replace(fold=1).utcoffset()
        assert off0 is not None and off1 is not None
        return (off0 if off0 <= off1 else off1) // _US


def load_mapping(*, settings: Settings | None = None, path: Path | None = None) -> LegacyMapping:
    """Read and validate mapping.yaml. Raises ConfigError naming the file and the key."""
    if path is None:
        if settings is None:
            raise ValueError("pass settings or path")
        path = _config_file(settings, MAPPING_FILE)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"legacy mapping {path} does not exist", hint="restore configs/legacy/mapping.yaml") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    try:
        mapping = LegacyMapping.model_validate({**raw, "source_path": str(path)})
    except ValidationError as exc:
        lines = []
        for e in exc.errors():
            key = ".".join(str(p) for p in e["loc"]) or "(top level)"
            if e["type"] == "extra_forbidden":
                lines.append(f"{path}: unknown key '{key}' — remove it or check its spelling")
            else:
                lines.append(f"{path}: key '{key}': {e['msg']}")
        raise ConfigError("invalid legacy mapping:\n  " + "\n  ".join(lines)) from None
    return mapping


def json_safe(row: dict[str, Any]) -> dict[str, Any]:
    """A source row as JSON values (for the reject file): times ISO, decimals and addresses as text."""
    out: dict[str, Any] = {}
    for k, v in row.items():
        if v is None or isinstance(v, bool | int | float | str):
            out[k] = v
        elif isinstance(v, datetime | date):
            out[k] = v.isoformat()
        else:
            out[k] = str(v)
    return out


# ── the warehouse: connect, schema, ETL ────────────────────────────────────────────────────────


def connect(*, settings: Settings, dsn: str | None = None, autocommit: bool = False) -> psycopg.Connection[Any]:
    """A psycopg connection to the legacy warehouse; failures become WarehouseError."""
    import psycopg

    target = dsn or settings.legacy.dsn
    try:
        return psycopg.connect(target, autocommit=autocommit, connect_timeout=10, application_name="nova")
    except psycopg.Error as exc:
        raise WarehouseError(
            f"cannot connect to the legacy warehouse {redact_url(target)}: {pg_error_text(exc)}",
            hint="is PostgreSQL up? `nova stack status` (start it with `nova stack up`), or set legacy.dsn",
        ) from None


def pg_error_text(exc: BaseException) -> str:
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    return (primary or str(exc)).strip().splitlines()[0] if (primary or str(exc)).strip() else type(exc).__name__


def _render(settings: Settings, name: str, schema: str, **literals: Any) -> Any:
    """A SQL file of configs/legacy with {schema} quoted as an identifier and the other placeholders as literals."""
    from psycopg import sql

    path = _config_file(settings, name)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"legacy SQL file {path} does not exist", hint="restore it from git") from None
    # Comments may contain braces; only the statements are templated.
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    return sql.SQL(body).format(schema=sql.Identifier(schema), **{k: sql.Literal(v) for k, v in literals.items()})


def _schema_name(settings: Settings) -> str:
    return settings.legacy.schema_name


def ensure_schema(*, settings: Settings, conn: psycopg.Connection[Any] | None = None) -> None:
    """Create the legacy schema and tables if missing (idempotent)."""
    import psycopg

    statement = _render(settings, SCHEMA_FILE, _schema_name(settings))
    own = conn is None
    conn = conn or connect(settings=settings)
    try:
        with conn.transaction():
            conn.execute(statement)
    except psycopg.Error as exc:
        raise WarehouseError(
            f"cannot create the legacy schema {_schema_name(settings)!r}: {pg_error_text(exc)}"
        ) from None
    finally:
        if own:
            conn.close()


def run_nightly_etl(
    *, settings: Settings, from_date: date, to_date: date, conn: psycopg.Connection[Any] | None = None
) -> int:
    """Rebuild daily_merchant_summary for business dates [from_date, to_date); returns the summary rows written."""
    import psycopg

    statement = _render(settings, ETL_FILE, _schema_name(settings), from_date=from_date, to_date=to_date)
    own = conn is None
    conn = conn or connect(settings=settings)
    try:
        with conn.transaction():
            conn.execute(statement)
            from psycopg import sql

            count = conn.execute(
                sql.SQL("SELECT count(*) FROM {}.{} WHERE business_date >= %s AND business_date < %s").format(
                    sql.Identifier(_schema_name(settings)), sql.Identifier(SUMMARY_TABLE)
                ),
                (from_date, to_date),
            ).fetchone()
    except psycopg.Error as exc:
        raise WarehouseError(
            f"the nightly ETL failed for {from_date}..{to_date} in schema {_schema_name(settings)!r}: "
            f"{pg_error_text(exc)}"
        ) from None
    finally:
        if own:
            conn.close()
    return int(count[0]) if count else 0


# ── seeding: realistic legacy rows from the transaction generator ──────────────────────────────

# The merchant's IANA zone by country; a country with several zones spreads its merchants over them.
COUNTRY_ZONES: dict[str, tuple[str, ...]] = {
    "DE": ("Europe/Berlin",), "FR": ("Europe/Paris",), "NL": ("Europe/Amsterdam",), "ES": ("Europe/Madrid",),
    "IT": ("Europe/Rome",), "IE": ("Europe/Dublin",), "AT": ("Europe/Vienna",), "BE": ("Europe/Brussels",),
    "PT": ("Europe/Lisbon",), "FI": ("Europe/Helsinki",), "GB": ("Europe/London",), "CH": ("Europe/Zurich",),
    "SE": ("Europe/Stockholm",), "PL": ("Europe/Warsaw",), "JP": ("Asia/Tokyo",),
    "US": ("America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles"),
}  # fmt: skip

_SEED_CHUNK = 50_000


@dataclass
class SeedResult:
    schema: str
    rows: int
    days: int
    seed: int
    start: datetime  # UTC, inclusive
    end: datetime  # UTC, exclusive
    truncated: bool
    copy_seconds: float
    etl_seconds: float
    summary_rows: int

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.copy_seconds if self.copy_seconds > 0 else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema, "rows": self.rows, "days": self.days, "seed": self.seed,
            "start": self.start.isoformat(), "end": self.end.isoformat(), "truncated": self.truncated,
            "copy_seconds": round(self.copy_seconds, 3), "rows_per_s": round(self.rows_per_s),
            "etl_seconds": round(self.etl_seconds, 3), "summary_rows": self.summary_rows,
        }  # fmt: skip


def merchant_zone(merchant_id: str, country: str) -> str:
    """The merchant's zone: its country's, or a stable pick among the country's zones."""
    import hashlib

    zones = COUNTRY_ZONES.get(country)
    if not zones:
        raise ConfigError(
            f"merchant {merchant_id} is in country {country}, which has no time zone in "
            "pipelines/legacy.py COUNTRY_ZONES",
            hint=f"add {country} and its IANA zone(s) there",
        )
    if len(zones) == 1:
        return zones[0]
    pick = int.from_bytes(hashlib.blake2b(merchant_id.encode(), digest_size=4).digest(), "little")
    return zones[pick % len(zones)]


class _LegacyRows:
    """Generator chunks (contract-shaped columns) → card_txn rows as CSV bytes for COPY, vectorised."""

    def __init__(self, *, mapping: LegacyMapping, merchants: dict[str, Any]) -> None:
        import numpy as np

        self._np = np
        self.zone_names: list[str] = sorted({merchant_zone(mid, m.country) for mid, m in merchants.items()})
        zone_index = {z: i for i, z in enumerate(self.zone_names)}
        self._merchant_zone = {mid: zone_index[merchant_zone(mid, m.country)] for mid, m in merchants.items()}
        self._zones = [ZoneInfo(z) for z in self.zone_names]
        self._exponents = mapping.amount_minor.exponents
        self._channel_codes = {symbol: code for code, symbol in mapping.enums["channel"].values.items()}
        self._status_codes = {symbol: code for code, symbol in mapping.enums["status"].values.items()}
        self._offsets: dict[int, int | None] = {}  # zone * 2^32 + UTC hour → offset ms (None: changes that hour)

    def _offset_ms(self, key: int) -> int | None:
        zone = self._zones[key >> 32]
        hour = key & 0xFFFFFFFF
        start = datetime.fromtimestamp(hour * 3600, tz=zone).utcoffset()
        end = datetime.fromtimestamp(hour * 3600 + 3599.999, tz=zone).utcoffset()
        assert start is not None and end is not None
        return start // timedelta(milliseconds=1) if start == end else None

    def local_ms(self, event_ms: Any, zone_idx: Any) -> Any:
        """UTC ms → the merchant's wall-clock ms (UTC instants map to one wall-clock time each)."""
        np = self._np
        keys = (zone_idx.astype(np.int64) << 32) | (event_ms // 3_600_000)
        uniq, inverse = np.unique(keys, return_inverse=True)
        offsets = np.empty(len(uniq), dtype=np.int64)
        exact = []
        for i, key in enumerate(uniq.tolist()):
            if key not in self._offsets:
                self._offsets[key] = self._offset_ms(key)
            off = self._offsets[key]
            if off is None:
                exact.append(i)
                off = 0
            offsets[i] = off
        local = event_ms + offsets[inverse]
        if exact:  # an hour with a DST transition in it: convert those rows one by one
            for row in np.nonzero(np.isin(inverse, exact))[0].tolist():
                zone = self._zones[int(zone_idx[row])]
                delta = datetime.fromtimestamp(int(event_ms[row]) / 1000, tz=zone).utcoffset()
                assert delta is not None
                local[row] = int(event_ms[row]) + delta // timedelta(milliseconds=1)
        return local

    def csv_chunk(self, chunk: Any) -> bytes:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.csv as pacsv

        np = self._np
        col = chunk.column  # plain arrays, whatever compact form the generator keeps them in
        n = len(chunk)
        event_ms = col("event_time").astype(np.int64)
        zone_idx = np.fromiter((self._merchant_zone[m] for m in col("merchant_id")), dtype=np.int64, count=n)
        local = self.local_ms(event_ms, zone_idx)
        zones = pa.DictionaryArray.from_arrays(pa.array(zone_idx, pa.int32()), pa.array(self.zone_names))

        currency = pa.array(col("currency"), pa.string()).dictionary_encode()
        suffixes = pa.array(["" if (e := self._exponents.get(c)) is None or e == 0 else f"e-{e}"
                             for c in currency.dictionary.to_pylist()], pa.string())  # fmt: skip
        missing = [c for c in currency.dictionary.to_pylist() if c not in self._exponents]
        if missing:
            raise ConfigError(
                f"the generator produced currency {missing[0]}, which has no exponent in {MAPPING_FILE}",
                hint="add it under amount_minor.exponents",
            )
        # numeric input accepts exponent notation: 5020e-2 is exactly 50.20 (no float on the way)
        amount = pc.binary_join_element_wise(
            pa.array(col("amount_minor"), pa.int64()).cast(pa.string()),
            pc.take(suffixes, currency.indices),
            "",
        )
        days = (event_ms // 86_400_000).astype("datetime64[D]")
        months = days.astype("datetime64[M]")
        batch_id = ((months.astype("datetime64[Y]").astype(np.int64) + 1970) * 10000
                    + (months.astype(np.int64) % 12 + 1) * 100
                    + (days - months).astype(np.int64) + 1)  # fmt: skip
        channel = pa.array([self._channel_codes[c] for c in col("channel").tolist()], pa.string())
        status = pa.array([self._status_codes[s] for s in col("status").tolist()], pa.string())
        table = pa.table({
            "txn_ref": pa.array(col("transaction_id"), pa.string()),
            "txn_ts_local": pa.array(local, pa.timestamp("ms")),
            "txn_tz": zones.cast(pa.string()),
            "card_token": pa.array(col("card_id"), pa.string()),
            "acct_no": pa.array(col("account_id"), pa.string()),
            "merchant_code": pa.array(col("merchant_id"), pa.string()),
            "mcc": pa.array(col("merchant_category"), pa.string()),
            "amount": amount,
            "ccy": currency.cast(pa.string()),
            "merchant_country": pa.array(col("country"), pa.string()),
            "channel_cd": channel,
            "status_cd": status,
            "device_ref": pa.array(col("device_id"), pa.string()),
            "client_ip": pa.array(col("ip_address"), pa.string()),
            "geo_lat": pa.array(col("latitude"), pa.float64(), from_pandas=True),  # NaN → NULL
            "geo_lon": pa.array(col("longitude"), pa.float64(), from_pandas=True),
            "batch_id": pa.array(batch_id, pa.int32()),
        })  # fmt: skip
        sink = pa.BufferOutputStream()
        pacsv.write_csv(table, sink, pacsv.WriteOptions(include_header=False, quoting_style="needed"))
        return sink.getvalue().to_pybytes()


def _check_exponents(mapping: LegacyMapping, fx_rates: dict[str, Any], fx_path: Path) -> None:
    for ccy, fx in fx_rates.items():
        exp = mapping.amount_minor.exponents.get(ccy)
        if exp is not None and exp != fx.exponent:
            raise ConfigError(
                f"{mapping.source_path}: key 'amount_minor.exponents.{ccy}' is {exp}, but {fx_path} says "
                f"{ccy} has {fx.exponent} minor units",
                hint="ISO 4217 decides; make them agree",
            )


def _drop_indexes(conn: psycopg.Connection[Any], schema: str, table: str) -> list[Any]:
    """Drop the table's indexes and constraints that own one; return the statements that recreate them."""
    from psycopg import sql

    constraints = conn.execute(
        "SELECT c.conname, pg_get_constraintdef(c.oid), c.conindid FROM pg_constraint c "
        "JOIN pg_class t ON t.oid = c.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace "
        "WHERE n.nspname = %s AND t.relname = %s AND c.contype IN ('p', 'u')",
        (schema, table),
    ).fetchall()
    owned = {row[2] for row in constraints}
    indexes = conn.execute(
        "SELECT i.indexrelid, pg_get_indexdef(i.indexrelid), ic.relname FROM pg_index i "
        "JOIN pg_class t ON t.oid = i.indrelid JOIN pg_namespace n ON n.oid = t.relnamespace "
        "JOIN pg_class ic ON ic.oid = i.indexrelid WHERE n.nspname = %s AND t.relname = %s",
        (schema, table),
    ).fetchall()
    recreate: list[Any] = []
    qualified = sql.Identifier(schema, table)
    for name, definition, _ in constraints:
        conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(qualified, sql.Identifier(name)))
        recreate.append(
            sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} " + definition.replace("{", "{{").replace("}", "}}")).format(
                qualified, sql.Identifier(name)
            )
        )
    for oid, definition, name in indexes:
        if oid in owned:
            continue
        conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(schema, name)))
        recreate.append(definition)
    return recreate


def seed_legacy(
    *,
    settings: Settings,
    days: int,
    rows: int,
    seed: int = 1,
    truncate: bool = False,
    end: date | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> SeedResult:
    """Create the legacy schema if needed and load `rows` realistic card_txn rows over the `days`
    UTC days before `end` (default: today, UTC), then run the nightly ETL for those dates.

    One transaction: a crash leaves the warehouse as it was. Deterministic for (seed, days, rows, end).
    Rows go in with COPY (CSV built by pyarrow from the generator's numpy columns).
    """
    import psycopg
    from psycopg import sql
    from psycopg.copy import QueuedLibpqWriter

    from pipelines.contracts.reference import load_reference
    from pipelines.synth.generate import TransactionGenerator

    if days < 1:
        raise UsageError(f"--days must be at least 1, got {days}")
    if rows < 0:
        raise UsageError(f"--rows must not be negative, got {rows}")
    mapping = load_mapping(settings=settings)
    ref = load_reference(settings)
    _check_exponents(mapping, dict(ref.fx_rates), settings.resolve(settings.pipeline.fx_rates))
    end_date = end or datetime.now(UTC).date()
    end_dt = datetime(end_date.year, end_date.month, end_date.day, tzinfo=UTC)
    start_dt = end_dt - timedelta(days=days)
    converter = _LegacyRows(mapping=mapping, merchants=dict(ref.merchants))
    generator = TransactionGenerator(
        seed=seed,
        merchants=ref.merchants,
        fx_rates=ref.fx_rates,
        currencies=[c for c in settings.pipeline.rules.currencies if c in ref.fx_rates],
        start_ms=int(start_dt.timestamp() * 1000),
        spread_s=days * 86400.0,
    )
    schema = _schema_name(settings)
    table = sql.Identifier(schema, mapping.table)
    copy_sql = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(
        table, sql.SQL(", ").join(sql.Identifier(c) for c in CARD_TXN_COLUMNS)
    )
    conn = connect(settings=settings)
    try:
        ensure_schema(settings=settings, conn=conn)
        started = time.perf_counter()
        done = 0
        with conn.transaction():
            if truncate:
                conn.execute(sql.SQL("TRUNCATE {}").format(table))
            # Into an empty table, load first and index after: building an index by sorting is several
            # times faster than growing a random-uuid btree row by row. Same transaction, so a failure
            # rolls the drop back too.
            empty = conn.execute(sql.SQL("SELECT NOT EXISTS (SELECT 1 FROM {})").format(table)).fetchone()
            rebuild = _drop_indexes(conn, schema, mapping.table) if empty and empty[0] and rows else []
            with conn.cursor() as cur, cur.copy(copy_sql, writer=QueuedLibpqWriter(cur)) as copy:
                chunks = generator.chunks(_SEED_CHUNK)
                while done < rows:
                    chunk = next(chunks)
                    if done + len(chunk) > rows:
                        chunk = chunk[: rows - done]
                    copy.write(converter.csv_chunk(chunk))
                    done += len(chunk)
                    if on_progress:
                        on_progress(done, rows)
            if rebuild:
                conn.execute("SET LOCAL maintenance_work_mem = '512MB'")
                for statement in rebuild:
                    conn.execute(statement)
            copy_seconds = time.perf_counter() - started
            etl_started = time.perf_counter()
            summary_rows = run_nightly_etl(settings=settings, from_date=start_dt.date(), to_date=end_date, conn=conn)
            etl_seconds = time.perf_counter() - etl_started
    except psycopg.errors.UniqueViolation:
        raise WarehouseError(
            f"{schema}.{mapping.table} already holds some of these transactions (seed {seed} was loaded before)",
            hint="pass --truncate to reload, or another --seed to add different rows",
        ) from None
    except psycopg.Error as exc:
        raise WarehouseError(f"seeding {schema}.{mapping.table} failed: {pg_error_text(exc)}") from None
    finally:
        conn.close()
    return SeedResult(
        schema=schema, rows=done, days=days, seed=seed, start=start_dt, end=end_dt, truncated=truncate,
        copy_seconds=copy_seconds, etl_seconds=etl_seconds, summary_rows=summary_rows,
    )  # fmt: skip
