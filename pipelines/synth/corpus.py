"""Labelled corpora as files: transactions (the contract's columns) and ground truth, kept apart.

``build_corpus`` makes the generator's corpus: habitual legit traffic (``habits``) with fraud
episodes injected (``fraud``), sorted into event-time order so each card's episode sits among
its history. ``from_frame`` converts anybody's corpus (synccfd's, a public simulator's with only
card, terminal, time and amount) into the same two tables, filling what the source lacks with
constants or nulls. The labels table has a row per transaction (legit ones too, so precision
can be computed): ``LABELS_SCHEMA``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.contracts.arrow import CONTRACT_SCHEMA
from pipelines.contracts.columnar_writer import Coded, Column, Fixed, Floats
from pipelines.errors import UsageError
from pipelines.synth.fraud import SCENARIOS, FraudInjector, FraudSpec
from pipelines.synth.habits import HabitualTraffic, Rows
from pipelines.synth.model import TransactionChunk, uuid4_text

if TYPE_CHECKING:
    from pipelines.config import RulesSettings
    from pipelines.contracts.reference import ReferenceData

_TIMESTAMP: Final = pa.timestamp("ms", tz="UTC")
LABELS_SCHEMA: Final = pa.schema(
    [
        ("transaction_id", pa.string()),
        ("is_fraud", pa.bool_()),
        ("scenario", pa.string()),  # null for legit rows
        ("label_time", _TIMESTAMP),  # when the fraud became known; null for legit rows
        ("episode", pa.int64()),  # numbers a fraud episode (one card's, or one merchant's); null for legit rows
    ]
)
MERCHANT_HEADER: Final = ("merchant_id", "name", "category", "segment", "country", "currency")
# uuid5 namespace of ids derived from another corpus's transaction ids (stable across runs)
_ID_NAMESPACE: Final = uuid.UUID("5f1d7e2a-9a53-4c1b-8f0e-6e6f76610001")


@dataclass
class LabelledCorpus:
    """Transactions in event-time order and, row for row, their ground truth."""

    chunk: TransactionChunk
    is_fraud: np.ndarray  # bool
    scenario: np.ndarray  # int8 index into `scenario_names`; -1: legit
    episode: np.ndarray  # int64; -1: legit
    label_time_ms: np.ndarray  # int64; -1: legit (never labelled)
    scenario_names: tuple[str, ...] = SCENARIOS
    targets: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.is_fraud)

    def chunks(self, size: int) -> Iterator[TransactionChunk]:
        """The transactions in event-time order, `size` at a time (then empty chunks)."""
        n = len(self)
        for i in range(0, n, size):
            yield self.chunk[i : i + size]
        while True:
            yield self.chunk[n:n]

    def transactions_table(self) -> pa.Table:
        return chunk_table(self.chunk)

    def labels_table(self) -> pa.Table:
        ids = _fixed_strings(self.chunk.columns["transaction_id"])
        legit = ~self.is_fraud
        names = pa.array(list(self.scenario_names), pa.string())
        codes = pa.array(self.scenario.astype(np.int32), mask=legit)
        return pa.table(
            {
                "transaction_id": ids,
                "is_fraud": pa.array(self.is_fraud, pa.bool_()),
                "scenario": names.take(codes),
                "label_time": pa.array(self.label_time_ms, _TIMESTAMP, mask=legit),
                "episode": pa.array(self.episode, pa.int64(), mask=legit),
            },
            schema=LABELS_SCHEMA,
        )

    def summary(self) -> dict[str, dict[str, int]]:
        """Per scenario: fraudulent transactions, episodes and cards."""
        out: dict[str, dict[str, int]] = {}
        card = self.chunk.columns["card_id"]
        card_codes = card.codes if isinstance(card, Coded) else np.unique(np.asarray(card), return_inverse=True)[1]
        for i, name in enumerate(self.scenario_names):
            sel = self.scenario == i
            out[name] = {
                "transactions": int(sel.sum()),
                "episodes": len(np.unique(self.episode[sel])),
                "cards": len(np.unique(card_codes[sel])),
            }
        return out


def build_corpus(
    *,
    reference: ReferenceData,
    rules: RulesSettings,
    seed: int,
    count: int,
    start_ms: int,
    spread_s: float,
    fraud: FraudSpec,
    cards: int | None = None,
) -> LabelledCorpus:
    """`count` transactions over [start, start + spread): legit with habits plus the fraud `fraud` asks for.

    Deterministic by `seed`. `cards` defaults to one card per ~60 transactions (1,000 to 100,000),
    so a card has a history to learn from.
    """
    if count < 1:
        raise UsageError(f"a labelled corpus needs at least one transaction, got {count}")
    cards = cards if cards is not None else int(min(100_000, max(1_000, count // 60)))
    traffic = HabitualTraffic(
        seed=seed, merchants=reference.merchants, fx_rates=reference.fx_rates,
        currencies=[c for c in rules.currencies if c in reference.fx_rates], start_ms=start_ms, spread_s=spread_s,
        cards=cards, min_amount_minor=rules.min_amount_minor, max_amount_minor=rules.max_amount_minor,
    )  # fmt: skip
    targets = fraud.targets(count)
    legit = traffic.legit(count - sum(targets.values()))
    injected = FraudInjector(traffic, legit, seed).inject(targets)
    rows = Rows.concat([legit, injected])
    rows = rows.take(np.argsort(rows.time_ms, kind="stable"))
    columns = traffic.columns(rows, seed=seed)
    columns["transaction_id"] = Fixed(uuid4_text(np.random.default_rng([seed, 0x69647321]), len(rows)))
    is_fraud = rows.scenario >= 0
    lo, hi = fraud.label_delay_ms
    delay = np.random.default_rng([seed, 0x6C61626C]).integers(lo, hi + 1, len(rows), dtype=np.int64)
    label_time = np.where(is_fraud, rows.time_ms + delay, -1)
    return LabelledCorpus(
        chunk=TransactionChunk(columns), is_fraud=is_fraud, scenario=rows.scenario, episode=rows.episode,
        label_time_ms=label_time, targets=targets,
    )  # fmt: skip


def _fixed_strings(column: Column) -> pa.Array:
    """A ``Fixed`` column as an Arrow string array without a Python object per row."""
    if not isinstance(column, Fixed):
        return pa.array(np.asarray(column).tolist(), pa.string())
    matrix = np.ascontiguousarray(column.matrix)
    n, width = matrix.shape
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(matrix.tobytes()))


def _arrow_column(column: Column, type_: pa.DataType) -> pa.Array:
    if isinstance(column, Coded):
        vocab = pa.array(column.vocab.tolist(), pa.string())
        return vocab.take(pa.array(column.codes, pa.int64(), mask=column.codes < 0))
    if isinstance(column, Fixed):
        return _fixed_strings(column)
    if isinstance(column, Floats):
        return pa.array(column.values, pa.float64(), mask=np.isnan(column.values))
    return pa.array(column, type_)


def chunk_table(chunk: TransactionChunk) -> pa.Table:
    """Generated columns → an Arrow table of the contract's columns (``CONTRACT_SCHEMA``)."""
    return pa.table(
        {f.name: _arrow_column(chunk.columns[f.name], f.type) for f in CONTRACT_SCHEMA}, schema=CONTRACT_SCHEMA
    )


@dataclass(frozen=True)
class FrameMap:
    """How another corpus's columns become the contract's.

    `columns`: contract column → source column (`amount` for an amount in major units, scaled by
    10**`amount_exponent`; `amount_minor` for one already in minor units). `constants`: contract
    column → the value every row gets (for columns the source lacks). `values`: contract column →
    source value → contract value (e.g. channel {"CP": "POS", "CNP": "ECOM"}). `prefixes`: a
    prefix for ids that are bare numbers (card "C", terminal "T"). `time_unit` reads a numeric
    event time ("s" or "ms" since the epoch). A transaction id that is not a UUID becomes a
    UUID derived from it (uuid5), so the same corpus converts to the same ids every time.
    Contract columns neither mapped nor constant: account_id = card_id, device_id / ip_address /
    latitude / longitude null, and the defaults of `DEFAULT_CONSTANTS`.
    """

    columns: Mapping[str, str]
    constants: Mapping[str, object] = field(default_factory=dict)
    values: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    prefixes: Mapping[str, str] = field(default_factory=dict)
    amount_exponent: int = 2
    time_unit: str = "s"


DEFAULT_CONSTANTS: Final[Mapping[str, object]] = {
    "merchant_category": "5999",
    "currency": "EUR",
    "country": "DE",
    "channel": "POS",
    "status": "AUTHORIZED",
}
_REQUIRED: Final = ("event_time", "card_id", "merchant_id")


def from_frame(source: pa.Table, mapping: FrameMap) -> pa.Table:
    """Another corpus (an Arrow table; pandas: ``pa.Table.from_pandas(df)``) → the contract's columns.

    Raises UsageError naming a missing required column (event_time, card_id, merchant_id and an
    amount) and the source's columns, so the mapping can be fixed.
    """
    cols = dict(mapping.columns)
    for name in (*_REQUIRED, "amount"):
        present = name in cols or name in mapping.constants or (name == "amount" and "amount_minor" in cols)
        if not present:
            raise UsageError(
                f"the corpus mapping gives no {name!r} column",
                hint=f"map it to one of the source's columns: {', '.join(source.column_names)}",
            )
    for target, column in cols.items():
        if column not in source.column_names:
            raise UsageError(
                f"the corpus has no column {column!r} (mapped to {target!r})",
                hint=f"its columns are: {', '.join(source.column_names)}",
            )
    n = source.num_rows
    out: dict[str, pa.Array] = {}

    def text(target: str) -> pa.Array:
        values = pc.cast(_source(source, cols[target]), pa.string())
        table = mapping.values.get(target)
        if table:
            keys = pa.array(list(table), pa.string())
            mapped = pa.array(list(table.values()), pa.string()).take(pc.index_in(values, value_set=keys))
            values = pc.coalesce(mapped, values)
        prefix = mapping.prefixes.get(target)
        return pc.binary_join_element_wise(pa.scalar(prefix), values, "") if prefix else values

    for f in CONTRACT_SCHEMA:
        name = f.name
        if name in cols and name not in ("transaction_id", "event_time", "amount_minor"):
            out[name] = pc.cast(text(name), f.type) if f.type != pa.string() else text(name)
        elif name in mapping.constants or name in DEFAULT_CONSTANTS:
            value = mapping.constants.get(name, DEFAULT_CONSTANTS.get(name))
            out[name] = pa.nulls(n, f.type) if value is None else pa.array(np.full(n, value).tolist(), f.type)
    out["event_time"] = _event_time(_source(source, cols["event_time"]), mapping.time_unit)
    if "amount_minor" in cols:
        out["amount_minor"] = pc.cast(_source(source, cols["amount_minor"]), pa.int64())
    else:
        major = pc.cast(_source(source, cols["amount"]), pa.float64()).to_numpy(zero_copy_only=False)
        out["amount_minor"] = pa.array(np.rint(major * 10**mapping.amount_exponent).astype(np.int64), pa.int64())
    out["transaction_id"] = _transaction_ids(source, cols.get("transaction_id"))
    out.setdefault("account_id", out["card_id"])
    for name in ("device_id", "ip_address", "latitude", "longitude"):
        out.setdefault(name, pa.nulls(n, CONTRACT_SCHEMA.field(name).type))
    return pa.table({f.name: out[f.name] for f in CONTRACT_SCHEMA}, schema=CONTRACT_SCHEMA)


def _source(source: pa.Table, column: str) -> pa.Array:
    values = source[column]
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def _event_time(values: pa.Array, unit: str) -> pa.Array:
    if pa.types.is_timestamp(values.type):
        if values.type.tz is None:
            values = pc.assume_timezone(values, "UTC")
        return pc.cast(values, _TIMESTAMP)
    if unit not in ("s", "ms"):
        raise UsageError(f"time unit {unit!r}: use 's' or 'ms' for a numeric event time")
    numbers = pc.cast(values, pa.float64()).to_numpy(zero_copy_only=False)
    ms = np.rint(numbers * (1000 if unit == "s" else 1)).astype(np.int64)
    return pa.array(ms, _TIMESTAMP)


def _transaction_ids(source: pa.Table, column: str | None) -> pa.Array:
    """UUID text ids: the source's if they are UUIDs, else uuid5 of them (or of the row number)."""
    from pipelines.contracts.rules import is_uuid_text

    if column is not None:
        values = pc.cast(_source(source, column), pa.string())
        if values.null_count == 0 and bool(is_uuid_text(values).all()):
            return values
        raw = values.to_pylist()
    else:
        raw = [str(i) for i in range(source.num_rows)]
    return pa.array([str(uuid.uuid5(_ID_NAMESPACE, str(v))) for v in raw], pa.string())


def labels_from_frame(
    transaction_ids: pa.Array,
    is_fraud: np.ndarray,
    event_time: pa.Array,
    *,
    scenario: pa.Array | None = None,
    episode: np.ndarray | None = None,
    label_delay_ms: int = 7 * 86_400_000,
) -> pa.Table:
    """The labels table of a converted corpus: label_time = event_time + `label_delay_ms` for fraud rows."""
    fraud = np.asarray(is_fraud, dtype=bool)
    legit = ~fraud
    times = pc.cast(event_time, pa.int64()).to_numpy(zero_copy_only=False)
    names = scenario if scenario is not None else pa.nulls(len(fraud), pa.string())
    names = pc.if_else(pa.array(legit), pa.scalar(None, pa.string()), names)
    return pa.table(
        {
            "transaction_id": transaction_ids,
            "is_fraud": pa.array(fraud, pa.bool_()),
            "scenario": names,
            "label_time": pa.array(times + label_delay_ms, _TIMESTAMP, mask=legit),
            "episode": pa.array(
                episode if episode is not None else np.zeros(len(fraud), np.int64), pa.int64(), mask=legit
            ),
        },
        schema=LABELS_SCHEMA,
    )


def merchant_rows(
    merchant_ids: pa.Array, *, category: str, country: str, currency: str, segment: str = "small"
) -> list[tuple[str, ...]]:
    """A merchant dimension (configs/reference/merchants.csv's columns) for a corpus's merchants, in id order."""
    ids = sorted(set(pc.cast(merchant_ids, pa.string()).to_pylist()))
    return [(m, f"Terminal {m}", category, segment, country, currency) for m in ids]


def write_merchants(path: Path, rows: list[tuple[str, ...]]) -> None:
    import csv

    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(MERCHANT_HEADER)
        writer.writerows(rows)


def write_parquet(table: pa.Table, path: Path) -> None:
    """A table to Parquet, written to a temporary name first so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd")
    tmp.replace(path)


def read_table(path: Path) -> pa.Table:
    """A corpus file: Parquet, or CSV (by extension)."""
    if not path.exists():
        raise UsageError(f"corpus file {path} does not exist")
    if path.suffix.lower() == ".csv":
        from pyarrow import csv as pacsv

        return pacsv.read_csv(path)
    return pq.read_table(path)
