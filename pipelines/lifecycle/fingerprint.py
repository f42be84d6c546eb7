"""What "verified" means: the same row count, amount sum and order-independent checksum on both sides.

The checksum is the sum (mod 2^64) of `cityHash64` over every column of a row, so it ignores row
order and part boundaries, counts a duplicated row twice, and adds up: the fingerprint of a day
split over several files is the sum of theirs. Values are normalised before hashing so that the
same rows hash alike in every place they are stored: DateTime64 and DateTime become epoch
milliseconds (Parquet turns DateTime into DateTime64(3)), LowCardinality hashes as its values,
NULL hashes as a flag next to the type's default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipelines.clickhouse.capabilities import split_type
from pipelines.clickhouse.sql import quote_identifier

_MASK = (1 << 64) - 1


@dataclass(frozen=True)
class Fingerprint:
    """rows, amount sum and checksum of a set of rows; additive, so copies can be checked incrementally."""

    rows: int
    amount: int
    checksum: int

    def __add__(self, other: Fingerprint) -> Fingerprint:
        return Fingerprint(self.rows + other.rows, self.amount + other.amount, (self.checksum + other.checksum) & _MASK)

    def __sub__(self, other: Fingerprint) -> Fingerprint:
        return Fingerprint(self.rows - other.rows, self.amount - other.amount, (self.checksum - other.checksum) & _MASK)

    @property
    def empty(self) -> bool:
        return self.rows == 0

    def to_dict(self) -> dict[str, int]:
        return {"rows": self.rows, "amount": self.amount, "checksum": self.checksum}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fingerprint:
        return cls(int(data["rows"]), int(data["amount"]), int(data["checksum"]) & _MASK)

    def differences(self, other: Fingerprint) -> str:
        """'rows 500 ≠ 499, checksum …' — what differs, for a mismatch message."""
        parts = [
            f"{name} {mine} ≠ {theirs}"
            for name, mine, theirs in (
                ("rows", self.rows, other.rows),
                ("amount sum", self.amount, other.amount),
                ("checksum", self.checksum, other.checksum),
            )
            if mine != theirs
        ]
        return ", ".join(parts) or "none"


EMPTY = Fingerprint(0, 0, 0)


def _normalised(expr: str, ctype: str) -> list[str]:
    name, args = split_type(ctype)
    if name == "LowCardinality":
        return _normalised(expr, args[0])
    if name == "Nullable":
        return [f"isNull({expr})", *_normalised(f"assumeNotNull({expr})", args[0])]
    if name == "DateTime64":
        return [f"toUnixTimestamp64Milli({expr})"]
    if name == "DateTime":
        return [f"toInt64({expr}) * 1000"]
    return [expr]


def fingerprint_columns(columns: list[tuple[str, str]], amount_column: str) -> str:
    """The SELECT list `rows, amount, checksum` over rows with these (name, type) columns."""
    hashed: list[str] = []
    for name, ctype in columns:
        hashed += _normalised(quote_identifier(name), ctype)
    return (
        f"count() AS rows, sum({quote_identifier(amount_column)}) AS amount, "
        f"sum(cityHash64({', '.join(hashed)})) AS checksum"
    )


def from_row(row: tuple[Any, ...] | None) -> Fingerprint:
    """A fingerprint from the (rows, amount, checksum) row a fingerprint query returned."""
    if not row:
        return EMPTY
    rows, amount, checksum = row
    return Fingerprint(int(rows or 0), int(amount or 0), int(checksum or 0) & _MASK)
