"""A labelled corpus read from files and checked before anything is touched.

The transactions file has the contract's columns (`contracts.arrow.CONTRACT_SCHEMA`; the nullable
ones — device_id, ip_address, latitude, longitude — may be absent), as CSV with a header or as
Parquet; event_time is a timestamp, an ISO 8601 text, or integer epoch milliseconds. The labels
file has transaction_id and is_fraud, optionally scenario and label_time (when the label became
known). Every problem found here is a `UsageError` (exit 2) naming the file, the column or value,
and the fix: the evaluation has not created a topic yet.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.contracts.arrow import CONTRACT_SCHEMA, NULLABLE_FIELDS
from pipelines.errors import UsageError

if TYPE_CHECKING:
    from collections.abc import Collection, Mapping

    from pipelines.config import Settings

LABEL_COLUMNS = ("transaction_id", "is_fraud")
LABEL_OPTIONAL = ("scenario", "label_time")
_TRUE = {"true", "1", "t", "yes", "y"}
_FALSE = {"false", "0", "f", "no", "n", ""}


@dataclass(frozen=True)
class Corpus:
    """Transactions in event-time order with the ground truth of each, aligned row for row."""

    transactions: pa.Table  # CONTRACT_SCHEMA, sorted by event_time (stable: file order among equal times)
    is_fraud: np.ndarray  # bool
    scenario: np.ndarray  # object: str, "" for legitimate transactions and frauds without one
    label_time_ms: np.ndarray  # int64: when the label became known; -1 if it never did (no feedback)
    unmatched_labels: int  # label rows whose transaction is not in the transactions file

    def __len__(self) -> int:
        return int(self.transactions.num_rows)

    @property
    def event_time_ms(self) -> np.ndarray:
        """Event times as epoch ms (int64), computed once."""
        cached: np.ndarray | None = self.__dict__.get("_event_time_ms")
        if cached is None:
            cached = np.asarray(self.transactions["event_time"].cast(pa.int64()).to_numpy(), dtype=np.int64)
            object.__setattr__(self, "_event_time_ms", cached)
        return cached


def _read_table(path: Path, *, what: str) -> pa.Table:
    if not path.is_file():
        raise UsageError(f"{what} file {str(path)!r} does not exist", hint="pass the path of a .parquet or .csv file")
    name = path.name.lower()
    try:
        if name.endswith((".parquet", ".pq")):
            import pyarrow.parquet as pq

            return pq.read_table(path)
        if name.endswith((".csv", ".csv.gz")):
            import pyarrow.csv as pacsv

            # Ids stay text even when they look like numbers (synthetic corpora number their cards).
            text_columns = {c: pa.string() for c in ("transaction_id", "card_id", "account_id", "merchant_id")}
            text_columns |= {"merchant_category": pa.string(), "device_id": pa.string(), "ip_address": pa.string()}
            text_columns |= {"scenario": pa.string(), "label_time": pa.string(), "event_time": pa.string()}
            return pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types=text_columns))
    except (pa.ArrowInvalid, OSError) as exc:
        raise UsageError(f"cannot read the {what} file {str(path)!r}: {exc}", hint="check its format") from None
    raise UsageError(
        f"{what} file {str(path)!r} is neither Parquet nor CSV",
        hint="name it *.parquet, *.csv or *.csv.gz",
    )


def _timestamps_ms(column: pa.ChunkedArray, *, path: Path, name: str) -> pa.Array:
    """A column of instants (timestamp, ISO text or epoch ms) as epoch-ms int64, nulls kept."""
    t = column.type
    try:
        if pa.types.is_timestamp(t):
            if t.tz is None:  # naive: UTC, as the contract reads every instant
                column = pc.assume_timezone(column, "UTC")
            return column.cast(pa.timestamp("ms", tz="UTC")).cast(pa.int64()).combine_chunks()
        if pa.types.is_integer(t):
            return column.cast(pa.int64()).combine_chunks()
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            text = pc.replace_substring_regex(column, r"[Zz]$", "+00:00")
            has_zone = pc.match_substring_regex(text, r"[+-]\d\d:?\d\d$")
            naive = pc.if_else(has_zone, text, pc.binary_join_element_wise(text, "+00:00", ""))
            stamps = pc.strptime(
                pc.replace_substring_regex(naive, " ", "T"), format="%Y-%m-%dT%H:%M:%S%z", unit="ms", error_is_null=True
            )
            bad = pc.and_(pc.is_null(stamps), pc.invert(pc.is_null(column)))
            if pc.any(bad).as_py():
                # fractional seconds: let Arrow's ISO 8601 cast read those
                stamps = naive.cast(pa.timestamp("ms", tz="UTC"))
            return stamps.cast(pa.int64()).combine_chunks()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise UsageError(
            f"{path}: column {name!r} is not readable as instants ({exc})",
            hint="write ISO 8601 times (2024-03-01T06:00:00Z), epoch milliseconds, or a Parquet timestamp",
        ) from None
    raise UsageError(
        f"{path}: column {name!r} has type {t}, not a timestamp",
        hint="write ISO 8601 times (2024-03-01T06:00:00Z), epoch milliseconds, or a Parquet timestamp",
    )


def read_transactions(path: Path, *, enums: Mapping[str, Collection[str]]) -> pa.Table:
    """The file's transactions as CONTRACT_SCHEMA columns, in event-time order.

    `enums` holds the symbols the schema allows per enum field (channel, status): a corpus value
    outside them could not be encoded, so it is refused here with the symbols listed.
    """
    raw = _read_table(path, what="transactions")
    required = [f.name for f in CONTRACT_SCHEMA if f.name not in NULLABLE_FIELDS]
    missing = [c for c in required if c not in raw.column_names]
    if missing:
        raise UsageError(
            f"transactions file {str(path)!r} lacks the contract column(s) {', '.join(missing)}",
            hint=f"it needs {', '.join(required)} (optional: {', '.join(NULLABLE_FIELDS)})",
        )
    n = raw.num_rows
    if n == 0:
        raise UsageError(f"transactions file {str(path)!r} has no rows", hint="evaluate a corpus with transactions")
    columns: dict[str, pa.Array] = {}
    for f in CONTRACT_SCHEMA:
        if f.name not in raw.column_names:
            columns[f.name] = pa.nulls(n, f.type)
            continue
        column = raw[f.name]
        if f.name == "event_time":
            ms = _timestamps_ms(column, path=path, name=f.name)
            columns[f.name] = ms.cast(pa.timestamp("ms", tz="UTC"))
            continue
        try:
            columns[f.name] = column.cast(f.type).combine_chunks()
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise UsageError(
                f"{path}: column {f.name!r} is {column.type}, not readable as {f.type} ({exc})",
                hint=f"write {f.name} as {f.type}",
            ) from None
        if f.name not in NULLABLE_FIELDS and columns[f.name].null_count:
            raise UsageError(
                f"{path}: column {f.name!r} has {columns[f.name].null_count} empty value(s); the contract requires it",
                hint=f"fill {f.name} in every row",
            )
    if columns["event_time"].null_count:
        raise UsageError(f"{path}: column 'event_time' has empty or unreadable value(s)", hint="fill it in every row")
    for name, symbols in enums.items():
        values = {str(v) for v in pc.unique(columns[name]).to_pylist()}
        unknown = sorted(values - set(symbols))
        if unknown:
            raise UsageError(
                f"{path}: column {name!r} has value(s) the contract does not know: {', '.join(map(repr, unknown[:5]))}",
                hint=f"use one of {', '.join(symbols)}",
            )
    duplicates = n - pc.count_distinct(columns["transaction_id"]).as_py()
    if duplicates:
        raise UsageError(
            f"{path}: {duplicates} transaction_id(s) appear more than once",
            hint="each transaction needs its own id (the labels are joined on it)",
        )
    table = pa.table(columns, schema=CONTRACT_SCHEMA)
    order = np.argsort(table["event_time"].cast(pa.int64()).to_numpy(), kind="stable")
    return table.take(pa.array(order))


def _booleans(column: pa.ChunkedArray, *, path: Path) -> np.ndarray:
    if pa.types.is_boolean(column.type) or pa.types.is_integer(column.type):
        if column.null_count:
            raise UsageError(f"{path}: column 'is_fraud' has empty value(s)", hint="write true or false in every row")
        return np.asarray(column.cast(pa.bool_()).to_numpy(zero_copy_only=False), dtype=bool)
    values = [str(v).strip().lower() if v is not None else "" for v in column.to_pylist()]
    bad = sorted({v for v in values if v not in _TRUE | _FALSE})
    if bad:
        raise UsageError(
            f"{path}: column 'is_fraud' has value(s) {', '.join(map(repr, bad[:5]))}", hint="write true/false or 1/0"
        )
    return np.fromiter((v in _TRUE for v in values), dtype=bool, count=len(values))


def read_corpus(transactions_path: Path, labels_path: Path, *, enums: Mapping[str, Collection[str]]) -> Corpus:
    """Transactions and labels joined on transaction_id; a transaction without a label is legitimate."""
    transactions = read_transactions(transactions_path, enums=enums)
    raw = _read_table(labels_path, what="labels")
    missing = [c for c in LABEL_COLUMNS if c not in raw.column_names]
    if missing:
        raise UsageError(
            f"labels file {str(labels_path)!r} lacks the column(s) {', '.join(missing)}",
            hint="it needs transaction_id and is_fraud (optional: scenario, label_time)",
        )
    ids = raw["transaction_id"].cast(pa.string())
    fraud = _booleans(raw["is_fraud"], path=labels_path)
    n = transactions.num_rows
    rows = np.asarray(pc.fill_null(pc.index_in(ids, value_set=transactions["transaction_id"]), -1), dtype=np.int64)
    matched = rows >= 0
    is_fraud = np.zeros(n, dtype=bool)
    is_fraud[rows[matched]] = fraud[matched]
    scenario = np.full(n, "", dtype=object)
    if "scenario" in raw.column_names:
        names = np.array(pc.fill_null(raw["scenario"].cast(pa.string()), "").to_pylist(), dtype=object)
        scenario[rows[matched]] = names[matched]
    scenario[~is_fraud] = ""
    label_time = np.full(n, -1, dtype=np.int64)
    if "label_time" in raw.column_names:
        known = _timestamps_ms(raw["label_time"], path=labels_path, name="label_time")
        at = np.asarray(pc.fill_null(known, -1), dtype=np.int64)
        label_time[rows[matched]] = at[matched]
    return Corpus(
        transactions=transactions,
        is_fraud=is_fraud,
        scenario=scenario,
        label_time_ms=label_time,
        unmatched_labels=int((~matched).sum()),
    )


def unknown_merchants(transactions: pa.Table, known: Collection[str]) -> list[str]:
    """The corpus's merchant ids the merchant dimension lacks, sorted."""
    present = {str(v) for v in pc.unique(transactions["merchant_id"]).to_pylist()}
    return sorted(present - set(known))


def contract_enums(settings: Settings) -> dict[str, list[str]]:
    """The enum fields of the transactions subject's latest schema and their symbols (channel, status)."""
    import json

    from pipelines.contracts.registry import open_registry

    _id, _version, schema = open_registry(settings).latest(settings.pipeline.subject)
    enums: dict[str, list[str]] = {}
    for f in json.loads(schema.raw)["fields"]:
        t = f["type"]
        if isinstance(t, dict) and t.get("type") == "enum":
            enums[f["name"]] = list(t["symbols"])
    return enums


def load_corpus(settings: Settings, transactions: Path, labels: Path) -> Corpus:
    """`read_corpus` with the contract's enums from the schema registry."""
    return read_corpus(transactions, labels, enums=contract_enums(settings))
