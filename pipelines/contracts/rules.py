"""The data contract's rules, checked on whole columns: which decoded events may enter `transactions`.

The Avro schema (`configs/schemas/transaction-v1.avsc`) fixes the types; these rules fix what
the values mean, with the domain data taken from configuration (`pipeline.rules`) and from
`configs/reference/` (merchant dimension, FX rates, ISO 3166-1 countries), never re-listed
here. Every check runs over a whole batch with numpy / pyarrow compute, because this is the
ingest worker's hot path (≥ 100k events/s); only the rare broken rows get a Python-built
detail message.

An event that breaks a rule goes to the dead-letter topic with reason `rule_violation` and the
rule's name (the `nova.rule` header); one that breaks several is named by the first in `RULES`.
`known_merchant` alone can be relaxed (`pipeline.rules.unknown_merchant: flag`): the event is
kept, with the rule's name in its `contract_flags` column, so it stays findable in ClickHouse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.contracts.arrow import column_array

if TYPE_CHECKING:
    from pipelines.config import RulesSettings
    from pipelines.contracts.reference import ReferenceData

# Rule name → what it checks, in precedence order. The README's table and the comments in
# configs/nova.yaml describe the same rules (a test keeps them in step).
RULES: dict[str, str] = {
    "amount_range": "amount_minor within [rules.min_amount_minor, rules.max_amount_minor]",
    "known_currency": "currency in rules.currencies and with a rate in pipeline.fx_rates",
    "event_time_future": "event_time at most rules.max_future_s ahead of the worker's clock",
    "event_time_past": "event_time at most rules.max_past_days old",
    "transaction_id_uuid": "transaction_id is a UUID in text form: 8-4-4-4-12 hex digits",
    "card_id_present": "card_id is not empty or blank",
    "merchant_category_mcc": "merchant_category is an ISO 18245 MCC: exactly 4 ASCII digits",
    "country_code": "country is an ISO 3166-1 alpha-2 code listed in rules.countries",
    "geo_position": "latitude and longitude both null, or both finite with |lat| ≤ 90 and |lon| ≤ 180",
    "known_merchant": "merchant_id is in the merchant dimension (pipeline.merchants)",
}
KNOWN_MERCHANT = "known_merchant"

# A UUID's text: 36 bytes, dashes at 8, 13, 18 and 23, hex digits elsewhere. Checked with
# byte arithmetic on a (rows, 36) matrix, the row's 36 verdicts read as nine 4-byte words:
# ~4x cheaper than a regex over the column, ~2x cheaper than a lookup table.
_UUID_LENGTH = 36
_UUID_DASHES = np.array([8, 13, 18, 23])
_ALL_TRUE_WORD = int.from_bytes(b"\x01" * 4, "little")
_DETAIL_VALUE_MAX = 64  # characters of an offending value quoted in a detail (a DLQ header)


@dataclass(frozen=True)
class ReferenceSets:
    """The reference data as Arrow value sets, built once per worker rather than once per batch."""

    merchant_ids: pa.Array
    fx_currencies: frozenset[str]
    countries: pa.Array

    @classmethod
    def from_reference(cls, reference: ReferenceData) -> ReferenceSets:
        return cls(
            merchant_ids=pa.array(list(reference.merchants), pa.string()),
            fx_currencies=frozenset(reference.fx_rates),
            countries=pa.array(sorted(reference.countries), pa.string()),
        )


@dataclass
class Verdict:
    """What the contract says about each row of a batch."""

    keep: np.ndarray  # bool per row: breaks no rule that dead-letters
    rejected: list[tuple[int, str, str]]  # (row, rule, detail) of the other rows, in row order
    flagged: np.ndarray  # bool per row: kept although its merchant is unknown (unknown_merchant: flag)
    merchant_index: pa.Array  # row → index in ReferenceSets.merchant_ids, null if unknown (for enrichment)


def check_contract(table: pa.Table, *, rules: RulesSettings, sets: ReferenceSets, now_ms: int) -> Verdict:
    """Every rule of `RULES` over a table of contract columns (`CONTRACT_SCHEMA`), column by column."""
    return _Checker(table, rules, sets, now_ms).verdict()


class _Checker:
    """One batch's columns and rule masks, so that a broken row's detail can quote what broke."""

    def __init__(self, table: pa.Table, rules: RulesSettings, sets: ReferenceSets, now_ms: int) -> None:
        self.table = table
        self.rules = rules
        self.now_ms = now_ms
        self.amount = table["amount_minor"].to_numpy()
        self.event_ms = pc.cast(table["event_time"], pa.int64()).to_numpy()
        self.accepted_currencies = [c for c in rules.currencies if c in sets.fx_currencies]
        self.merchant_index = pc.index_in(column_array(table, "merchant_id"), value_set=sets.merchant_ids)
        self.sets = sets

    def verdict(self) -> Verdict:
        masks = self._masks()
        unknown = masks.pop(KNOWN_MERCHANT)
        flagged = np.zeros(len(unknown), dtype=bool)
        if self.rules.unknown_merchant == "flag":
            flagged = unknown
        else:
            masks[KNOWN_MERCHANT] = unknown
        bad = np.zeros(len(unknown), dtype=bool)
        for mask in masks.values():
            bad |= mask
        rows = np.flatnonzero(bad)
        rejected: list[tuple[int, str, str]] = []
        if rows.size:
            names = list(masks)
            first = np.argmax(np.stack([m[rows] for m in masks.values()]), axis=0)
            for i, k in zip(rows.tolist(), first.tolist(), strict=True):
                rejected.append((i, names[k], self._detail(names[k], i)))
        return Verdict(~bad, rejected, flagged & ~bad, self.merchant_index)

    def _masks(self) -> dict[str, np.ndarray]:
        """Rule name → bool per row, True where the row breaks the rule; in `RULES` order."""
        t, rules = self.table, self.rules
        amount, event_ms = self.amount, self.event_ms
        masks = {
            "amount_range": (amount < rules.min_amount_minor) | (amount > rules.max_amount_minor),
            "known_currency": ~_bools(
                pc.is_in(t["currency"], value_set=pa.array(self.accepted_currencies, pa.string()))
            ),
            "event_time_future": event_ms > self.now_ms + rules.max_future_s * 1000,
            "event_time_past": event_ms < self.now_ms - rules.max_past_days * 86_400_000,
            "transaction_id_uuid": ~is_uuid_text(column_array(t, "transaction_id")),
            "card_id_present": _bools(
                pc.or_(pc.equal(pc.binary_length(t["card_id"]), 0), pc.utf8_is_space(t["card_id"])), null=True
            ),
            "merchant_category_mcc": ~_bools(
                pc.and_(
                    pc.equal(pc.binary_length(t["merchant_category"]), 4), pc.ascii_is_decimal(t["merchant_category"])
                )
            ),
            "country_code": ~_bools(pc.is_in(t["country"], value_set=self.sets.countries)),
            "geo_position": off_earth(column_array(t, "latitude"), column_array(t, "longitude")),
            KNOWN_MERCHANT: _bools(pc.is_null(self.merchant_index)),
        }
        assert list(masks) == list(RULES)
        return masks

    def _detail(self, rule: str, i: int) -> str:
        t, rules = self.table, self.rules

        def value(name: str) -> str:
            return _quote(t[name][i].as_py())

        if rule == "amount_range":
            return f"amount_minor={int(self.amount[i])} outside [{rules.min_amount_minor}, {rules.max_amount_minor}]"
        if rule == "known_currency":
            currency = t["currency"][i].as_py()
            if currency in rules.currencies:
                return f"currency {_quote(currency)} has no rate in the FX reference (pipeline.fx_rates)"
            return f"currency {_quote(currency)} is not one of pipeline.rules.currencies"
        if rule == "event_time_future":
            return f"event_time {self.event_ms[i]} is more than {rules.max_future_s}s ahead"
        if rule == "event_time_past":
            return f"event_time {self.event_ms[i]} is older than {rules.max_past_days} days"
        if rule == "transaction_id_uuid":
            return f"transaction_id {value('transaction_id')} is not a UUID (8-4-4-4-12 hex digits)"
        if rule == "card_id_present":
            return f"card_id {value('card_id')} is empty or blank"
        if rule == "merchant_category_mcc":
            return f"merchant_category {value('merchant_category')} is not a 4-digit ISO 18245 MCC"
        if rule == "country_code":
            return f"country {value('country')} is not an ISO 3166-1 alpha-2 code of pipeline.rules.countries"
        if rule == "geo_position":
            return (
                f"latitude={value('latitude')}, longitude={value('longitude')} is not a position on Earth "
                "(both null, or finite with |latitude| ≤ 90 and |longitude| ≤ 180)"
            )
        if rule == KNOWN_MERCHANT:
            return f"merchant_id {value('merchant_id')} is not in the merchant dimension (pipeline.merchants)"
        raise AssertionError(f"rule {rule!r} has no detail message: add one to _Checker._detail")


def is_uuid_text(values: pa.Array) -> np.ndarray:
    """Bool per row: the string is a UUID's 36-character text (hex digits in either case)."""
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        values = values.cast(pa.string())
    n = len(values)
    if n == 0:
        return np.zeros(0, dtype=bool)
    width = 8 if pa.types.is_large_string(values.type) else 4
    offsets = np.frombuffer(
        values.buffers()[1], dtype=np.int64 if width == 8 else np.int32, count=n + 1, offset=values.offset * width
    )
    ok: np.ndarray = np.diff(offsets) == _UUID_LENGTH
    if values.null_count:
        ok &= ~_bools(pc.is_null(values))
    all_fit = bool(ok.all())
    rows = None if all_fit else np.flatnonzero(ok)
    if rows is not None and rows.size == 0:
        return ok
    data = np.frombuffer(values.buffers()[2], dtype=np.uint8)
    chars: np.ndarray
    if rows is None:  # the usual batch: one contiguous run of 36-byte strings
        chars = data[offsets[0] : offsets[-1]].reshape(-1, _UUID_LENGTH)
    else:
        starts: np.ndarray = offsets[rows]
        chars = data[starts[:, None] + np.arange(_UUID_LENGTH)]
    # uint8 arithmetic wraps, so one comparison tests a range: '0'-'9', then 'a'-'f' or 'A'-'F'.
    good_byte = (chars - ord("0")) < 10
    good_byte |= ((chars | 0x20) - ord("a")) < 6
    good_byte[:, _UUID_DASHES] = chars[:, _UUID_DASHES] == ord("-")
    words = good_byte.view(np.uint8).view(np.uint32)  # (rows, 9): each all-true word is 0x01010101
    good: np.ndarray = words[:, 0] == _ALL_TRUE_WORD
    for j in range(1, words.shape[1]):  # column by column: faster than .all(axis=1) on 9 columns
        good &= words[:, j] == _ALL_TRUE_WORD
    if rows is None:
        return good
    ok[rows] = good
    return ok


def off_earth(latitude: pa.Array, longitude: pa.Array) -> np.ndarray:
    """Bool per row: the coordinates are no position (one null, NaN, infinite or out of range)."""
    lat_valid, lat = _float_column(latitude)
    lon_valid, lon = _float_column(longitude)
    # NaN compares false, so it is off Earth like ±inf; a null slot's value is whatever Arrow left there.
    on_earth = (lat >= -90.0) & (lat <= 90.0) & (lon >= -180.0) & (lon <= 180.0)
    off: np.ndarray = (lat_valid != lon_valid) | (lat_valid & ~on_earth)
    return off


def _float_column(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(valid per row, values) of a float64 column without copying it: nulls read from the bitmap."""
    n = len(values)
    if values.type != pa.float64():
        values = values.cast(pa.float64())
    validity, data = values.buffers()[:2]
    if data is None:  # no values at all (an empty or all-null array may come without a buffer)
        return np.zeros(n, dtype=bool), np.full(n, np.nan)
    numbers = np.frombuffer(data, dtype=np.float64, count=n, offset=values.offset * 8)
    if values.null_count == 0 or validity is None:
        return np.ones(n, dtype=bool), numbers
    bits = np.unpackbits(np.frombuffer(validity, dtype=np.uint8), bitorder="little")
    return bits[values.offset : values.offset + n].view(bool), numbers


def _bools(values: pa.Array | pa.ChunkedArray, *, null: bool = False) -> np.ndarray:
    """A boolean Arrow result as numpy; a null (from a null input) counts as `null`."""
    if values.null_count:
        values = pc.fill_null(values, null)
    mask: np.ndarray = values.to_numpy(zero_copy_only=False)
    return mask


def _quote(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _DETAIL_VALUE_MAX else text[: _DETAIL_VALUE_MAX - 1] + "…"
