"""The mapping of a legacy card_txn row to our Avro contract (configs/legacy/mapping.yaml).

`nova replay` applies it to every row, from the database or from exports, so it is the hot path of
the dual run; `nova legacy seed` reads it backwards (contract → legacy codes, exponents, zones).

    mapping = load_mapping(settings=settings)
    map_row = mapping.compile()
    map_row(row)            # MappedRow(record, utc_us) or Reject(reason, detail); row: column → value

A row that cannot be mapped is rejected with a reason and a detail naming the column and value,
never dropped and never guessed.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable
from datetime import date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipelines.errors import ConfigError

if TYPE_CHECKING:
    from pipelines.config import Settings

LEGACY_DIR = Path("legacy")  # under the configs dir
MAPPING_FILE = "mapping.yaml"

EPOCH = datetime(1970, 1, 1)
_US = timedelta(microseconds=1)
_HOUR_US = 3_600_000_000
UNPLACEABLE_US = -(2**62)  # order key of a row whose time cannot be read: first, and in every range


def legacy_config_file(settings: Settings, name: str) -> Path:
    """A file of configs/legacy/ (mapping, schema, ETL) of this configuration."""
    return settings.configs_dir / LEGACY_DIR / name


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

    column: str = Field(description="Legacy column holding the code.")
    values: dict[str, str] = Field(description="legacy code → contract symbol.")


def _iana_zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"{name!r} is not an IANA time zone (e.g. Europe/Berlin)") from None
    return name


def _country_code(code: str) -> str:
    if len(code) != 2 or not code.isascii() or not code.isalpha() or not code.isupper():
        raise ValueError(f"{code!r} is not an ISO 3166 country code (2 capital letters, e.g. DE)")
    return code


def _some_zones(zones: tuple[str, ...]) -> tuple[str, ...]:
    if not zones:
        raise ValueError("list at least one IANA zone")
    return zones


CountryCode = Annotated[str, AfterValidator(_country_code)]
IanaZone = Annotated[str, AfterValidator(_iana_zone)]
CountryZones = Annotated[tuple[IanaZone, ...], AfterValidator(_some_zones)]

# A cell of a source row: whatever the driver or the file reader hands over (str, datetime, Decimal,
# ipaddress objects, None, …); the converters below decide what they accept.
Value = Any
Row = dict[str, Value]
Converter = Callable[[Value, str], Value]  # (value, column) → converted; raises _RowError


class Reject(NamedTuple):
    """A row the mapping cannot turn into a record."""

    reason: str  # short code, counted: null_value, unknown_currency, amount_precision, bad_zone, …
    detail: str  # for people: names the column and the value


class MappedRow(NamedTuple):
    """A row turned into a record of the contract, with the key replay orders by."""

    record: dict[str, Any]  # the Avro record (event_time as epoch ms)
    utc_us: int  # the event's UTC time in µs since the epoch (the source's order key)


MapRow = Callable[[Row], MappedRow | Reject]


class _RowError(Exception):
    """Raised by the converters; `map_row` turns it into a Reject, so one bad cell rejects its row only."""

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
    country_zones: dict[CountryCode, CountryZones] = Field(
        default_factory=dict,
        description="ISO 3166 country → the IANA zone(s) of its merchants: where `nova legacy seed` puts a "
        "merchant's wall clock (a country with several zones spreads its merchants over them).",
    )

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
        """The contract fields the mapping produces, in mapping order (duplicates kept, to be reported)."""
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

    def compile(self) -> MapRow:
        """The row → record function, with the per-field work decided once."""
        plan: list[tuple[str, str, Converter, bool]] = [
            (target, rule.column, _CONVERTERS[rule.type], rule.nullable) for target, rule in self.fields.items()
        ]
        enum_plan = [(target, rule.column, dict(rule.values)) for target, rule in self.enums.items()]
        local_col, zone_col = self.event_time.local_column, self.event_time.zone_column
        amount_col, ccy_col = self.amount_minor.column, self.amount_minor.currency_column
        exponents = {ccy: Decimal(10) ** exp for ccy, exp in self.amount_minor.exponents.items()}
        zones = ZoneCache()

        def map_row(row: Row) -> MappedRow | Reject:
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
        zone = self.zone(name)
        assert zone is not None  # an unknown zone raised in _hour_offset before its hour was cached
        return local_us - self._offset(local_dt, zone)

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
        path = legacy_config_file(settings, MAPPING_FILE)
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


def json_safe(row: Row) -> dict[str, Any]:
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
