"""Where PostgreSQL and ClickHouse SQL differ; the query shapes (`queries`) are shared.

The row hash is the first 15 hex digits (60 bits) of MD5 of the canonical string
`id|epoch_s|merchant_id|amount_minor|currency|country|channel|status`, as a non-negative
integer. PostgreSQL: `('x' || substr(md5(s), 1, 15))::bit(60)::bigint`; ClickHouse (18.16 and
26.x alike): `bitShiftRight(reinterpretAsUInt64(reverse(substring(MD5(s), 1, 8))), 4)`.
(PostgreSQL builds the string with `concat_ws('|', …)`, ClickHouse with `concat(…)`; both print
integers in plain decimal.) Checksums are sums of row hashes compared modulo 2^64 (ClickHouse's
`sum(UInt64)` wraps, PostgreSQL's `sum(bigint)` is an exact numeric reduced with `mod`), so a
duplicate or a missing row always changes them.

Literals and identifiers go through each database's one quoter: `psycopg.sql` for PostgreSQL,
`pipelines.clickhouse.sql` for ClickHouse.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from psycopg import sql as pgsql

from pipelines.clickhouse.sql import literal as ch_literal
from pipelines.dualrun.parity.columns import NORMALISED_COLUMNS


def pg_identifier(*names: str) -> str:
    """`schema`, `table` → `"schema"."table"`, quoted the way PostgreSQL parses it back."""
    return pgsql.Identifier(*names).as_string()


def pg_literal(value: int | str) -> str:
    """A PostgreSQL literal of `value` (`E'…'` when it holds a backslash)."""
    return pgsql.quote(value).strip()


class Dialect(ABC):
    """The expressions whose spelling differs between the two databases."""

    name: str

    @abstractmethod
    def literal(self, value: int | str) -> str: ...

    @abstractmethod
    def hash60(self, text_expr: str) -> str: ...

    @abstractmethod
    def shift_right(self, expr: str, bits: int) -> str: ...

    @abstractmethod
    def distinct(self, expr: str) -> str: ...

    @abstractmethod
    def concat(self, parts: Sequence[str]) -> str: ...

    @abstractmethod
    def to_text(self, expr: str) -> str: ...

    @abstractmethod
    def checksum_sum(self, expr: str) -> str: ...

    @abstractmethod
    def zero_u64(self) -> str: ...

    @abstractmethod
    def epoch_day(self, epoch_expr: str) -> str:
        """Whole UTC days since 1970 of an epoch-seconds expression (no server time zone involved)."""

    def canonical(self) -> str:
        """The row's canonical string: compared columns, '|'-separated, integers in decimal."""
        parts: list[str] = []
        for col in NORMALISED_COLUMNS:
            if parts:
                parts.append("'|'")
            parts.append(self.to_text(col) if col in ("c_epoch", "c_amount") else col)
        return self.concat(parts)


class PgDialect(Dialect):
    name = "postgresql"

    def literal(self, value: int | str) -> str:
        return pg_literal(value)

    def canonical(self) -> str:
        # One concat_ws call (bigints through their output function, as ::text) costs PostgreSQL
        # less than fifteen || operators; the string is the same.
        return "concat_ws('|', " + ", ".join(NORMALISED_COLUMNS) + ")"

    def hash60(self, text_expr: str) -> str:
        return f"('x' || substr(md5({text_expr}), 1, 15))::bit(60)::bigint"

    def shift_right(self, expr: str, bits: int) -> str:
        return f"({expr} >> {bits})"

    def distinct(self, expr: str) -> str:
        return f"count(DISTINCT {expr})"

    def concat(self, parts: Sequence[str]) -> str:
        return "(" + " || ".join(parts) + ")"

    def to_text(self, expr: str) -> str:
        return f"{expr}::text"

    def checksum_sum(self, expr: str) -> str:
        # sum(bigint) is an exact numeric; reduce it the way ClickHouse's UInt64 sum wraps.
        return f"mod(sum({expr}), 18446744073709551616)"

    def zero_u64(self) -> str:
        return "0"

    def epoch_day(self, epoch_expr: str) -> str:
        return f"({epoch_expr} / 86400)"  # bigint division truncates; epochs here are positive


class ChDialect(Dialect):
    name = "clickhouse"

    def literal(self, value: int | str) -> str:
        return ch_literal(value)

    def hash60(self, text_expr: str) -> str:
        # The first 8 bytes of the digest, read big-endian (reverse + little-endian reinterpret),
        # minus the last 4 bits = the first 15 hex digits, exactly as PostgreSQL's bit(60) cast.
        return f"bitShiftRight(reinterpretAsUInt64(reverse(substring(MD5({text_expr}), 1, 8))), 4)"

    def shift_right(self, expr: str, bits: int) -> str:
        return f"bitShiftRight({expr}, {bits})"

    def distinct(self, expr: str) -> str:
        return f"uniqExact({expr})"

    def concat(self, parts: Sequence[str]) -> str:
        return "concat(" + ", ".join(parts) + ")"

    def to_text(self, expr: str) -> str:
        return f"toString({expr})"

    def checksum_sum(self, expr: str) -> str:
        return f"sum({expr})"  # UInt64: wraps modulo 2**64

    def zero_u64(self) -> str:
        return "toUInt64(0)"

    def epoch_day(self, epoch_expr: str) -> str:
        return f"intDiv({epoch_expr}, 86400)"
