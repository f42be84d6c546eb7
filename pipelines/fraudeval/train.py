"""`nova fraud train`: the model from labelled history in ClickHouse, with the features the workers compute.

The stored transactions go through a fresh `Detector` per Kafka partition in partition/offset
order (the order a worker saw them), with `emit=False, features=True`, so every row gets exactly
the features it had live: windows over the card's earlier rows, and the merchant risk as known
at that row's event-time step (`MerchantRisk`, switched at the first row whose watermark reaches
a new step, as the workers do). A row's label is its fraud label if that label was known by the
cutoff (label_time ≤ cutoff); otherwise it counts as legitimate — which is what the detector
would have been told. `label_delay_ms` leaves out the rows of the last D before the cutoff,
whose frauds may simply not be reported yet. The model is `detect.model.train_model`'s; the
artifact is the file the workers load (`detection.model`).

A `ReplayCache` carries the replay from one call to the next over the same growing store (the
retrainings of `nova fraud evaluate`): each partition's detector as it stood after the rows it
has seen, and their features, so a call replays only the rows stored since. Without it each
retraining replays all history, and a replay's merchant risk is read again at every step so far:
on a Handbook-style corpus of 60 days, two thirds of the training time went to those re-reads,
and over 183 days the cost grew with the square of the corpus.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.errors import UsageError

if TYPE_CHECKING:
    from pipelines.clickhouse import Store
    from pipelines.config import Settings
    from pipelines.detect.config import DetectionConfig
    from pipelines.detect.engine import Detector
    from pipelines.detect.merchant_risk import MerchantRisk
    from pipelines.detect.model import Method

OnProgress = Callable[[str, float, float | None], None]
CHUNK_ROWS = 100_000
# The columns `Detector.process` reads, as the transactions table stores them.
DETECTOR_COLUMNS = (
    "transaction_id",
    "event_time",
    "card_id",
    "merchant_id",
    "merchant_category",
    "amount_minor",
    "amount_reporting_minor",
    "currency",
    "country",
    "channel",
    "status",
    "device_id",
    "ip_address",
    "latitude",
    "longitude",
)


@dataclass(frozen=True)
class TrainReport:
    out: str
    version: str
    rows_read: int
    rows_trained: int
    frauds: int
    until: str
    elapsed_s: float
    rules_weight: float = 1.0  # the model's choice (FraudModel.rules_weight)
    alert_threshold: float | None = None  # ranking alone, the probability it alerts at (FraudModel.alert_threshold)
    rows_replayed: int = 0  # of rows_read, those replayed by this call (the rest came from a ReplayCache)
    validation: dict[str, Any] | None = None  # the figures it was chosen on


@dataclass
class _Replayed:
    """One partition's rows replayed so far: the detector after them, and what each row gave."""

    offset: int  # the last offset replayed
    snapshot: bytes  # `Detector.snapshot()` after that row
    features: dict[str, np.ndarray]
    ids: pa.ChunkedArray  # transaction_id of each row, in offset order
    times: np.ndarray  # event_time (ms) of each row


@dataclass
class ReplayCache:
    """What `train` replayed, kept for its next call on the same store (see the module docstring).

    Sound only where a later call would replay the cached rows exactly as before: the rows stored
    up to the last cutoff do not change, and neither do the labels known at each of their steps.
    That holds for evaluate's replay, which produces rows in event-time order and each label at
    its label_time; a live store may learn a label dated before it arrived, so the CLI's `nova
    fraud train` replays everything each time. A partition is cached only up to its last row
    when every row read was at or before the cutoff (else it replays from its previous point).
    """

    key: str = ""  # the store, table and detection config the entries were made with
    parts: dict[int, _Replayed] = field(default_factory=dict)

    def check(self, key: str) -> None:
        if key != self.key:
            self.key, self.parts = key, {}


def _plain(table: pa.Table) -> pa.Table:
    """Dictionary (LowCardinality) columns as their values, so the detector sees plain strings."""
    columns = []
    for column in table.columns:
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        columns.append(column)
    return pa.table(columns, names=table.column_names)


def _known_frauds(store: Store, database: str, until_ms: int) -> set[str]:
    from pipelines.clickhouse.sql import quote_identifier
    from pipelines.detect.labels import LABELS_TABLE

    labels = _plain(
        store.query_arrow(
            "SELECT transaction_id, is_fraud, label_time "
            f"FROM {quote_identifier(database)}.{quote_identifier(LABELS_TABLE)}"
        )
    )
    if not labels.num_rows:
        return set()
    at = labels["label_time"]
    at_ms = at.cast(pa.int64()) if pa.types.is_timestamp(at.type) else pc.multiply(at.cast(pa.int64()), 1000)
    # ReplacingMergeTree by transaction_id: before a merge a label may appear twice; the newest known one wins
    newest: dict[str, tuple[int, bool]] = {}
    for tid, fraud, ms in zip(
        labels["transaction_id"].to_pylist(), labels["is_fraud"].to_pylist(), at_ms.to_pylist(), strict=True
    ):
        if ms is None or ms > until_ms:
            continue
        if tid not in newest or ms >= newest[tid][0]:
            newest[tid] = (ms, bool(fraud))
    return {tid for tid, (_, fraud) in newest.items() if fraud}


def merchant_risk_for(settings: Settings, store: Store) -> MerchantRisk:
    """The merchant risk the workers read, over this store (the same window, minimum and step)."""
    from pipelines.detect.merchant_risk import MerchantRisk

    return MerchantRisk.for_settings(settings, store)


def replay_partitions(
    detectors: list[Detector], tables: list[pa.Table], risk: MerchantRisk | None
) -> list[dict[str, np.ndarray]]:
    """Every row's features, partition by partition, the merchant risk switched at each new step of the watermark.

    The steps are walked in event-time order across all partitions, so each step's risk is read once
    (`MerchantRisk` caches only the latest steps; partition after partition would read each again).
    """
    steps: list[np.ndarray] = []
    for det, rows in zip(detectors, tables, strict=True):
        t = rows["event_time"].cast(pa.int64()).to_numpy()
        start = det.watermark_ms if det.watermark_ms is not None else np.iinfo(np.int64).min
        watermark = np.maximum.accumulate(np.maximum(t, start)) if len(t) else t
        steps.append((watermark // risk.step_ms) * risk.step_ms if risk is not None else np.zeros(len(t), np.int64))
    features: list[list[dict[str, np.ndarray]]] = [[] for _ in tables]
    done = [0] * len(tables)
    for as_of in np.unique(np.concatenate(steps)).tolist() if steps else []:
        known = risk.as_of(int(as_of)) if risk is not None else None
        for k, (det, rows, step) in enumerate(zip(detectors, tables, steps, strict=True)):
            end = int(np.searchsorted(step, as_of, side="right"))  # a watermark's step never goes back
            if end <= done[k]:
                continue
            if known is not None and det.merchant_risk_as_of_ms != int(as_of):
                known.apply(det, int(as_of))
            for c in range(done[k], end, CHUNK_ROWS):
                scored = det.process(rows.slice(c, min(CHUNK_ROWS, end - c)), emit=False, features=True)
                assert scored.features is not None
                features[k].append(scored.features)
            done[k] = end
    return [
        {name: np.concatenate([p[name] for p in parts]) for name in parts[0]} if parts else {} for parts in features
    ]


def train(
    *,
    settings: Settings,
    out: Path,
    until_ms: int | None = None,
    history_ms: int | None = None,
    label_delay_ms: int | None = None,
    method: Method = "lightgbm",
    on_progress: OnProgress | None = None,
    cache: ReplayCache | None = None,
) -> TrainReport:
    """Train on the stored history up to `until_ms` (default now); see the module docstring."""
    from pipelines.clickhouse import open_store
    from pipelines.detect.config import load_detection_config
    from pipelines.detect.model import train_model

    started = time.monotonic()
    cutoff = until_ms if until_ms is not None else int(time.time() * 1000)
    config = load_detection_config(settings.resolve(settings.detection.config))
    if cache is not None:
        cache.check(_cache_key(settings, config.model_dump_json()))
    with open_store(settings) as store:
        if not store.table_exists(settings.pipeline.table):
            raise UsageError(
                f"table {settings.clickhouse.database}.{settings.pipeline.table} does not exist: "
                "there is no history to train on",
                hint="run `nova provision --yes` and ingest labelled traffic first",
            )
        frauds = _known_frauds(store, settings.clickhouse.database, cutoff)
        parts, replayed = _replay(settings, store, config, cutoff, cache, on_progress)
    feature_parts: list[dict[str, np.ndarray]] = []
    label_parts: list[np.ndarray] = []
    time_parts: list[np.ndarray] = []
    for ids, t, features in parts:
        if not len(t):
            continue
        keep = np.ones(len(t), dtype=bool)
        if history_ms is not None:
            keep &= t >= cutoff - history_ms
        if label_delay_ms is not None:
            keep &= t <= cutoff - label_delay_ms
        y = np.fromiter((tid in frauds for tid in ids.to_pylist()), dtype=bool, count=len(ids))
        feature_parts.append({name: v[keep] for name, v in features.items()})
        label_parts.append(y[keep])
        time_parts.append(t[keep])
    if on_progress:
        on_progress("train: features", 1, 1)
    if not feature_parts:
        raise UsageError(
            f"no stored transactions up to {_iso(cutoff)} to train on",
            hint="ingest labelled traffic first, or move --until later",
        )
    features = {name: np.concatenate([p[name] for p in feature_parts]) for name in feature_parts[0]}
    labels = np.concatenate(label_parts)
    if on_progress:
        on_progress("train: fit", 0, 1)
    model = train_model(
        features,
        labels,
        method=method,
        event_time_ms=np.concatenate(time_parts),
        alert_threshold=config.alert_threshold,
    )
    model.summary.update({"until": _iso(cutoff), "history_ms": history_ms, "label_delay_ms": label_delay_ms})
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(out)
    if on_progress:
        on_progress("train: fit", 1, 1)
    return TrainReport(
        out=str(out),
        version=model.version,
        rows_read=sum(len(t) for _, t, _ in parts),
        rows_trained=len(labels),
        frauds=int(labels.sum()),
        until=_iso(cutoff),
        elapsed_s=time.monotonic() - started,
        rules_weight=model.rules_weight,
        alert_threshold=model.alert_threshold,
        rows_replayed=replayed,
        validation=model.summary.get("validation"),
    )


def _cache_key(settings: Settings, config_json: str) -> str:
    """What a cached replay depends on: the store, the table, the detector's config, the risk step."""
    import json

    return json.dumps(
        [
            settings.clickhouse.model_dump(mode="json"),
            settings.pipeline.table,
            settings.detection.merchant_risk_step_s,
            config_json,
        ],
        sort_keys=True,
    )


def _replay(
    settings: Settings,
    store: Store,
    config: DetectionConfig,
    cutoff: int,
    cache: ReplayCache | None,
    on_progress: OnProgress | None,
) -> tuple[list[tuple[pa.ChunkedArray, np.ndarray, dict[str, np.ndarray]]], int]:
    """(transaction ids, event times, features) of each partition's rows up to `cutoff`, in offset order;
    and how many of those rows were replayed here (not taken from `cache`)."""
    from pipelines.clickhouse.sql import quote_identifier
    from pipelines.detect.engine import Detector

    table = f"{quote_identifier(settings.clickhouse.database)}.{quote_identifier(settings.pipeline.table)}"
    risk = merchant_risk_for(settings, store)
    found = [int(p) for (p,) in store.query_rows(f"SELECT DISTINCT _partition FROM {table} ORDER BY _partition")]
    priors: list[_Replayed | None] = []
    tables: list[pa.Table] = []
    last_offsets: list[int | None] = []  # where a partition's replay may be cached to (None: not this time)
    for k, partition in enumerate(found):
        prior = cache.parts.get(partition) if cache is not None else None
        rows = _plain(
            store.query_arrow(
                f"SELECT {', '.join(map(quote_identifier, DETECTOR_COLUMNS))}, _offset FROM {table} "
                f"WHERE _partition = {partition} AND _offset > {prior.offset if prior else -1} ORDER BY _offset"
            )
        )
        t = rows["event_time"].cast(pa.int64()).to_numpy()
        within = t <= cutoff
        offsets = rows["_offset"].to_numpy()
        if not within.all():  # a row past the cutoff: the next call must replay from before it
            last_offsets.append(None)
        else:
            last_offsets.append(int(offsets[-1]) if len(offsets) else None)
        priors.append(prior)
        tables.append(rows.drop_columns(["_offset"]).filter(pa.array(within)))
        if on_progress:
            on_progress("train: read", k + 1, len(found))
    if on_progress:
        on_progress("train: features", 0, 1)
    detectors = [Detector.restore(config, p.snapshot) if p else Detector(config) for p in priors]
    replayed = replay_partitions(detectors, tables, risk)
    out = []
    for partition, prior, rows, features, det, last in zip(
        found, priors, tables, replayed, detectors, last_offsets, strict=True
    ):
        ids = rows["transaction_id"]
        t = rows["event_time"].cast(pa.int64()).to_numpy()
        if prior is not None:
            if features:
                features = {name: np.concatenate([prior.features[name], v]) for name, v in features.items()}
            else:
                features = prior.features
            ids = pa.chunked_array(prior.ids.chunks + ids.chunks, type=prior.ids.type)
            t = np.concatenate([prior.times, t])
        if cache is not None and last is not None:  # (no new rows: the entry stays as it was)
            cache.parts[partition] = _Replayed(last, det.snapshot(), features, ids, t)
        out.append((ids, t, features))
    return out, sum(rows.num_rows for rows in tables)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")
