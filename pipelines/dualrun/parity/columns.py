"""The vocabulary both sides of the comparison share: compared columns, dimensions, hash width.

The legacy and the ClickHouse source queries select the same normalised `c_*` columns in the
same order, so every later query, the canonical row string and the row classification can be
written once for both databases.
"""

from __future__ import annotations

LEGACY_TABLE = "card_txn"

DIMENSIONS = ("day", "merchant", "currency", "country", "channel", "status")
DEFAULT_BY = ("day", "merchant", "currency")

# Contract names of the compared columns, as a row difference reports them.
COMPARED_COLUMNS = (
    "transaction_id",
    "event_time",
    "merchant_id",
    "amount_minor",
    "currency",
    "country",
    "channel",
    "status",
)

# The normalised columns each source exposes, in this order (c_day is derived from c_epoch).
NORMALISED_COLUMNS = ("c_id", "c_epoch", "c_merchant", "c_amount", "c_currency", "c_country", "c_channel", "c_status")
CONTRACT_COLUMN = dict(zip(NORMALISED_COLUMNS, COMPARED_COLUMNS, strict=True))
DIMENSION_COLUMN = {
    "day": "c_day",
    "merchant": "c_merchant",
    "currency": "c_currency",
    "country": "c_country",
    "channel": "c_channel",
    "status": "c_status",
}

# What a segment query returns after the dimension columns.
SEGMENT_COLUMNS = ("n_rows", "amount", "n_ids", "checksum")

HASH_BITS = 60  # width of the row and id hashes: the first 15 hex digits of MD5
CHECKSUM_MODULUS = 1 << 64  # checksums are sums of row hashes, compared modulo 2**64

SegmentKey = tuple[int | str, ...]
"""The dimension values of one segment, in `by` order: the day as an epoch day number, the rest as text."""

Bucket = tuple[SegmentKey, int]
"""A segment and the leading bits of the id hash (the prefix) that select a bucket in it."""
