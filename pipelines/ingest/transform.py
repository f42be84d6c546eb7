"""Decoded records → validated, enriched, scored columnar batch. Pure: no I/O, easy to test.

Everything after decoding works on whole columns (numpy / pyarrow compute), because the
per-record Python work is the budget of a ≥100k events/s worker. Validation is the data
contract of `pipelines/contracts/rules.py`; this module turns its verdict into dead letters
and the rows that pass into the `transactions` columns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.contracts.arrow import NULLABLE_FIELDS, column_array, records_table
from pipelines.contracts.rules import KNOWN_MERCHANT, ReferenceSets, check_contract

if TYPE_CHECKING:
    from pipelines.config import RulesSettings
    from pipelines.contracts.reference import ReferenceData


RULE_VIOLATION = "rule_violation"


@dataclass
class Rejected:
    """One message that goes to the dead-letter topic."""

    index: int  # position in the polled chunk
    reason: str  # bad_magic_byte | unknown_schema_id | truncated | wrong_type | rule_violation
    detail: str
    rule: str = ""  # for rule_violation: the name of the broken rule (pipelines.contracts.rules.RULES)


@dataclass
class Chunk:
    table: pa.Table | None  # valid rows, without the bookkeeping columns
    rows_index: np.ndarray  # chunk positions of the valid rows (to attach topic/partition/offset)
    rejected: list[Rejected] = field(default_factory=list)


class Enricher:
    """Merchant attributes from the merchant dimension, amounts in the reporting currency."""

    def __init__(self, reference: ReferenceData) -> None:
        ms = list(reference.merchants.values())
        self.sets = ReferenceSets.from_reference(reference)  # the contract's value sets, built once too
        self.merchant_ids = self.sets.merchant_ids
        self.merchant_names = pa.array([m.name for m in ms], pa.string())
        self.merchant_segments = pa.array([m.segment for m in ms], pa.string())
        self.merchant_currency = pa.array([m.currency for m in ms], pa.string())
        fx = reference.fx_rates
        rep_exp = fx[reference.reporting_currency].exponent
        self.fx_currencies = pa.array(list(fx), pa.string())
        # minor units of the currency → minor units of the reporting currency
        self.fx_factor = np.array([r.rate * 10.0 ** (rep_exp - r.exponent) for r in fx.values()], dtype=np.float64)

    def enrich(
        self,
        merchant_id: pa.Array,
        currency: pa.Array,
        amount_minor: np.ndarray,
        *,
        merchant_index: pa.Array | None = None,
    ) -> dict[str, Any]:
        """The enrichment columns; `merchant_index` is `merchant_id`'s lookup if the caller has it already."""
        idx = pc.index_in(merchant_id, value_set=self.merchant_ids) if merchant_index is None else merchant_index
        fx_idx = pc.index_in(currency, value_set=self.fx_currencies)
        factor = self.fx_factor[pc.fill_null(fx_idx, 0).to_numpy(zero_copy_only=False)]
        factor = np.where(pc.is_null(fx_idx).to_numpy(zero_copy_only=False), 0.0, factor)
        return {
            "merchant_name": pc.fill_null(pc.take(self.merchant_names, idx), ""),
            "merchant_segment": pc.fill_null(pc.take(self.merchant_segments, idx), "unknown"),
            "merchant_currency": pc.fill_null(pc.take(self.merchant_currency, idx), ""),
            "amount_reporting_minor": np.rint(amount_minor * factor).astype(np.int64),
        }


def score(
    *,
    amount_reporting_minor: np.ndarray,
    cross_border: np.ndarray,
    channel: pa.Array,
    device_missing: np.ndarray,
    status: pa.Array,
) -> np.ndarray:
    """A transparent rules-based risk score in [0, 1]; ≥ 0.8 raises an alert (alerts_mv)."""
    amount = amount_reporting_minor.astype(np.float64) / 100.0
    big = 1.0 / (1.0 + np.exp(-(np.log1p(amount) - np.log(250.0)) * 2.5))
    s = 0.05 + 0.6 * big + 0.3 * cross_border
    s += 0.2 * device_missing * pc.equal(channel, "ECOM").to_numpy(zero_copy_only=False)
    s += 0.15 * pc.equal(channel, "MOTO").to_numpy(zero_copy_only=False)
    s += 0.15 * pc.equal(status, "DECLINED").to_numpy(zero_copy_only=False)
    clipped: np.ndarray = np.clip(s, 0.0, 1.0).astype(np.float32)
    return clipped


def transform(
    records: list[dict[str, Any]], positions: list[int], *, rules: RulesSettings, enricher: Enricher, now_ms: int
) -> Chunk:
    """Validate, enrich and score decoded records (at chunk `positions`): `transform_table` on their columns."""
    if not records:
        return Chunk(None, np.empty(0, dtype=np.int64))
    return transform_table(
        records_table(records), np.asarray(positions, dtype=np.int64), rules=rules, enricher=enricher, now_ms=now_ms
    )


def transform_table(
    table: pa.Table, positions: np.ndarray, *, rules: RulesSettings, enricher: Enricher, now_ms: int
) -> Chunk:
    """``transform`` for a table of contract columns (from ``FastDecoder.decode``): the same Chunk."""
    n = table.num_rows
    positions = np.asarray(positions, dtype=np.int64)
    if n == 0:
        return Chunk(None, np.empty(0, dtype=np.int64))
    table = table.combine_chunks()
    verdict = check_contract(table, rules=rules, sets=enricher.sets, now_ms=now_ms)
    rejected = [Rejected(int(positions[i]), RULE_VIOLATION, detail, rule) for i, rule, detail in verdict.rejected]
    merchant_index, flagged = verdict.merchant_index, verdict.flagged
    if rejected:
        keep = verdict.keep
        mask = pa.array(keep)
        table = table.filter(mask)
        merchant_index = merchant_index.filter(mask)
        flagged = flagged[keep]
        positions = positions[keep]
    if table.num_rows == 0:
        return Chunk(None, positions, rejected)

    col = {name: column_array(table, name) for name in table.column_names}
    currency = col["currency"]
    amount = col["amount_minor"].to_numpy()
    extra = enricher.enrich(col["merchant_id"], currency, amount, merchant_index=merchant_index)
    cross_border = pc.not_equal(currency, extra["merchant_currency"]).to_numpy(zero_copy_only=False).astype(np.float64)
    risk = score(
        amount_reporting_minor=extra["amount_reporting_minor"],
        cross_border=cross_border,
        channel=col["channel"],
        device_missing=pc.is_null(col["device_id"]).to_numpy(zero_copy_only=False),
        status=col["status"],
    )
    out = pa.table(
        {
            "transaction_id": col["transaction_id"],
            "event_time": col["event_time"],
            "card_id": col["card_id"],
            "account_id": col["account_id"],
            "merchant_id": col["merchant_id"],
            "merchant_category": col["merchant_category"],
            "merchant_name": extra["merchant_name"],
            "merchant_segment": extra["merchant_segment"],
            "amount_minor": col["amount_minor"],
            "currency": currency,
            "amount_reporting_minor": pa.array(extra["amount_reporting_minor"], pa.int64()),
            "country": col["country"],
            "channel": col["channel"],
            "status": col["status"],
            **{f: col[f] for f in NULLABLE_FIELDS},
            "risk_score": pa.array(risk, pa.float32()),
            "contract_flags": _flags_column(flagged),
        }
    )
    return Chunk(out, positions, rejected)


_FLAGS_TYPE = pa.list_(pa.string())


def _flags_column(flagged: np.ndarray) -> pa.Array:
    """`contract_flags`: ['known_merchant'] for a row kept under unknown_merchant: flag, [] for the rest.

    Built from offsets, without a Python list per row: a clean batch is one zeroed offsets buffer.
    """
    offsets = np.zeros(len(flagged) + 1, dtype=np.int32)
    np.cumsum(flagged, out=offsets[1:])
    values = pa.array(np.full(int(offsets[-1]), KNOWN_MERCHANT, dtype=object), pa.string())
    return pa.ListArray.from_arrays(pa.array(offsets), values, type=_FLAGS_TYPE)
