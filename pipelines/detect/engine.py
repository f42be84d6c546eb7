"""`Detector`: one partition's card state, fed batches in offset order, scoring every row.

The output of `process` depends only on the rows it was given before (in offset order), the
merchant risk set with `set_merchant_risk`, the config and the model: never on the wall clock
or on where batches begin and end (the per-row recurrences live in `features`, a compiled loop
over rows in order). `snapshot()` / `restore()` carry the whole state, so a restored detector
continues exactly where the original was.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, cast

import numpy as np

from pipelines.config import PACKAGE_ROOT
from pipelines.contracts.codec import enum_symbols
from pipelines.detect import features as feat
from pipelines.detect.config import DetectionConfig
from pipelines.detect.rules import RULE_NAMES, evaluate_rules, rule_names, rule_params
from pipelines.errors import ConfigError, StoreError

if TYPE_CHECKING:
    import pyarrow as pa

    from pipelines.detect.model import FraudModel

_CONTRACT: Final = json.loads((PACKAGE_ROOT / "configs" / "schemas" / "transaction-v1.avsc").read_text())
# Channel bit = 1 << the channel's position in the contract's enum (the card's "channels seen" mask).
CHANNELS: Final = enum_symbols(_CONTRACT, "channel")
DECLINED: Final = "DECLINED"
# Channels where the card is not at the merchant: the merchant's country is not the card's location.
CARD_NOT_PRESENT: Final = ("ECOM", "MOTO")
assert set(CARD_NOT_PRESENT) <= set(CHANNELS), "the contract's channel enum lost ECOM or MOTO"
assert DECLINED in enum_symbols(_CONTRACT, "status"), "the contract's status enum lost DECLINED"
assert len(CHANNELS) <= 8, "the channels-seen mask is 8 bits"
_SNAPSHOT_MAGIC: Final = "nova-detect-state"
# numba's Dispatcher types its call with the first signature only; the kernel takes ~40 arrays.
_KERNEL: Final = cast("Callable[..., None]", feat.update_and_featurize)


MODEL_REASON: Final = "model"  # in an alert's rules: the model's probability alone reached alert_threshold


@dataclass(frozen=True)
class Scored:
    """What `Detector.process` says about each row of a batch, in the batch's order."""

    score: np.ndarray  # float32 [n] in [0, 1]
    alert: np.ndarray  # bool [n]
    rules: list[tuple[str, ...]]  # names of the rules that fired, per row (and MODEL_REASON)
    features: dict[str, np.ndarray] | None = None  # the model's input columns, when asked for
    rule_score: np.ndarray | None = None  # float32 [n]: the rules' noisy-OR alone
    model_score: np.ndarray | None = None  # float32 [n]: the model's probability, if a model is loaded


class Detector:
    """Stateful fraud scoring of one Kafka partition's cards (see the module docstring)."""

    def __init__(self, config: DetectionConfig, model: FraudModel | None = None) -> None:
        if model is not None:
            model.check_features(feat.FEATURE_NAMES)
        self.config = config
        self.model = model
        self._state = feat.CardState.empty()
        self._devices = feat.DeviceTable.empty()
        # merchant categories: hash → index into the category amount profile (0: none, and overall)
        self._mcc_index: dict[int, int] = {0: 0}
        self._mcc_n = np.zeros(64, dtype=np.float64)
        self._mcc_mu = np.zeros(64, dtype=np.float64)
        # merchant risk tables: "" (the one the rule reads) and one per window; sorted hashes → risk
        self._risk: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.merchant_risk_as_of_ms: int | None = None
        self.watermark_ms: int | None = None  # max event_time seen (None before the first row)
        self._names_cache: dict[int, tuple[str, ...]] = {0: ()}
        self._params = rule_params(config)

    @property
    def model_version(self) -> str | None:
        return None if self.model is None else self.model.version

    @property
    def alert_threshold(self) -> float:
        """The score a row alerts at: the config's, or with a model ranking alone its own (see config.ModelBlend)."""
        blend, model = self.config.model, self.model
        if model is None or (model.rules_weight if blend.rules_weight is None else blend.rules_weight) != 0:
            return self.config.alert_threshold
        if blend.alert_threshold is not None:
            return blend.alert_threshold
        if model.alert_threshold is not None:
            return blend.weight * model.alert_threshold
        return self.config.alert_threshold

    @property
    def cards(self) -> int:
        """Distinct cards in the state."""
        return self._state.cards

    def state_bytes(self) -> int:
        """Memory allocated for the card and device state (bytes; rows grow by half, hash tables by doubling)."""
        return self._state.nbytes() + self._devices.nbytes()

    def set_merchant_risk(
        self,
        risk: Mapping[str, float],
        as_of_ms: int,
        *,
        by_window: Mapping[str, Mapping[str, float]] | None = None,
    ) -> None:
        """Replace the merchant risk (merchant_id → fraud share in [0, 1] of labels known by `as_of_ms`).

        `by_window` (optional, keys `features.MERCHANT_RISK_WINDOWS`: "1d", "7d", "30d") gives the
        same share over each trailing window, for the features merchant_risk_1d/7d/30d in the
        style of the literature; a window not given takes `risk`'s values.
        """
        windows = dict(by_window or {})
        unknown = sorted(set(windows) - set(feat.MERCHANT_RISK_WINDOWS))
        if unknown:
            raise ConfigError(
                f"merchant risk window {unknown[0]!r} is not one of {', '.join(feat.MERCHANT_RISK_WINDOWS)}"
            )
        tables = {"": _risk_table(risk)}
        for w in feat.MERCHANT_RISK_WINDOWS:
            tables[w] = _risk_table(windows[w]) if w in windows else tables[""]
        self._risk = tables
        self.merchant_risk_as_of_ms = int(as_of_ms)

    def process(self, batch: pa.Table, *, emit: bool = True, features: bool = False) -> Scored:
        """Fold a batch (one partition's rows, in offset order) into the state and score every row.

        `emit=False` (warm-up, replay) only updates the state: the Scored it returns has zero
        scores and no rules. `features=True` adds the model's input columns (for training).
        """
        n = batch.num_rows
        cols = _Columns(batch, self.config.small_amount_minor, self.watermark_ms or 0)
        hashes = cols.hashes("card_id")
        st = self._state
        st.reserve(n)
        slots, st.cards = feat.assign_slots(st.keys, st.vals, hashes, st.cards)
        merchants = cols.hashes("merchant_id")
        risk = self._merchant_risk(merchants, "")
        want = emit or features
        out = np.zeros((n if want else 0, len(feat.FEATURE_NAMES)), dtype=np.float32)
        device64 = cols.hashes("device_id")
        device = _low32(device64)
        country = _low32(cols.hashes("country"))
        bits = cols.channel_bits()
        mcc = self._mcc_indices(cols.hashes("merchant_category"))
        ip = _low32(cols.hashes("ip_address"))
        _KERNEL(
            slots, cols.t_ms, cols.amount, cols.small, cols.declined, device, country, cols.lat, cols.lon,
            bits, (bits & _NOT_PRESENT_BITS) == 0, risk, mcc, self._mcc_n, self._mcc_mu, ip, *st.fields(), out, want,
        )  # fmt: skip
        fanout = self._devices.update(device64, slots)
        if want:
            out[:, feat.F["device_cards"]] = fanout
            for w in feat.MERCHANT_RISK_WINDOWS:
                out[:, feat.F[f"merchant_risk_{w}"]] = np.nan_to_num(self._merchant_risk(merchants, w), nan=0.0)
        if n:
            top = int(cols.t_ms.max())
            self.watermark_ms = top if self.watermark_ms is None else max(self.watermark_ms, top)
        if not want:
            return Scored(score=np.zeros(n, dtype=np.float32), alert=np.zeros(n, dtype=bool), rules=[()] * n)
        result = evaluate_rules(self.config, out, cols.amount, self._params)
        out[:, feat.F["rules_score"]] = result.score
        named = feat.as_feature_dict(out)
        if not emit:
            return Scored(
                score=np.zeros(n, dtype=np.float32),
                alert=np.zeros(n, dtype=bool),
                rules=[()] * n,
                features=named if features else None,
            )
        score = result.score
        model_p: np.ndarray | None = None
        if self.model is not None and n:
            model_p = self.model.predict(out)
            blend = self.config.model
            rules_weight = self.model.rules_weight if blend.rules_weight is None else blend.rules_weight
            score = 1.0 - (1.0 - rules_weight * score) * (1.0 - blend.weight * model_p)
        score32 = np.clip(score, 0.0, 1.0).astype(np.float32)
        threshold = np.float32(self.alert_threshold)
        alert = (score32 >= threshold) | result.alerting
        names = self._names(result.fired)
        if model_p is not None:  # the model is named where it alone reaches the threshold: an alert says why
            for i in np.flatnonzero((self.config.model.weight * model_p).astype(np.float32) >= threshold).tolist():
                names[i] = (*names[i], MODEL_REASON)
        return Scored(
            score=score32,
            alert=alert,
            rules=names,
            features=named if features else None,
            rule_score=result.score.astype(np.float32),
            model_score=None if model_p is None else model_p.astype(np.float32),
        )

    def _mcc_indices(self, hashes: np.ndarray) -> np.ndarray:
        """Each row's merchant-category index, new categories numbered in order of first appearance."""
        uniq, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
        index = self._mcc_index
        mapped = np.zeros(len(uniq), dtype=np.int64)
        for j in np.argsort(first, kind="stable").tolist():  # first appearance: the same numbering however batched
            h = int(uniq[j])
            at = index.get(h)
            if at is None:
                at = index[h] = len(index)
            mapped[j] = at
        if len(index) > len(self._mcc_n):
            grow = max(len(index), 2 * len(self._mcc_n)) - len(self._mcc_n)
            self._mcc_n = np.concatenate([self._mcc_n, np.zeros(grow)])
            self._mcc_mu = np.concatenate([self._mcc_mu, np.zeros(grow)])
        out: np.ndarray = mapped[inverse.reshape(-1)]
        return out

    def _names(self, fired: np.ndarray) -> list[tuple[str, ...]]:
        """Rule names per row: most rows fire nothing, so only the others cost a Python step."""
        names: list[tuple[str, ...]] = [()] * len(fired)
        cache = self._names_cache
        hit = np.flatnonzero(fired)
        for i, mask in zip(hit.tolist(), fired[hit].tolist(), strict=True):
            found = cache.get(mask)
            if found is None:
                found = cache[mask] = rule_names(mask)
            names[i] = found
        return names

    def _merchant_risk(self, merchant_hashes: np.ndarray, window: str) -> np.ndarray:
        """Each row's merchant risk (of `window`; "" the main one), NaN for a merchant without one."""
        risk = np.full(len(merchant_hashes), np.nan, dtype=np.float32)
        if window not in self._risk:
            return risk
        keys, vals = self._risk[window]
        if len(keys) == 0:
            return risk
        at = np.minimum(np.searchsorted(keys, merchant_hashes), len(keys) - 1)
        hit = keys[at] == merchant_hashes
        risk[hit] = vals[at[hit]]
        return risk

    def snapshot(self) -> bytes:
        """The whole state as bytes (numpy .npz, no pickle); `Detector.restore` reads it back exactly."""
        st = self._state
        header = {
            "magic": _SNAPSHOT_MAGIC,
            "state_version": feat.STATE_VERSION,
            "feature_version": feat.FEATURE_VERSION,
            "rules": list(RULE_NAMES),
            "cards": st.cards,
            "watermark_ms": self.watermark_ms,
            "merchant_risk_as_of_ms": self.merchant_risk_as_of_ms,
        }
        # The table in slot order: the same bytes for the same cards, whatever size the table grew to.
        arrays = {
            "rows": st.rows[: st.cards],
            "table_keys": st.keys_by_slot(),
            "table_vals": np.arange(st.cards, dtype=np.int32),
            "device_keys": self._devices.keys_by_slot(),
            "device_last": self._devices.last[: self._devices.devices],
            "device_count": self._devices.count[: self._devices.devices],
            "mcc_keys": np.array(list(self._mcc_index), dtype=np.uint64),
            "mcc_n": self._mcc_n[: len(self._mcc_index)],
            "mcc_mu": self._mcc_mu[: len(self._mcc_index)],
        }
        for name, (keys, vals) in self._risk.items():
            arrays[f"risk_keys_{name}"] = keys
            arrays[f"risk_vals_{name}"] = vals
        buf = io.BytesIO()
        header_bytes = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
        np.savez(buf, allow_pickle=False, header=header_bytes, **arrays)
        return buf.getvalue()

    @classmethod
    def restore(cls, config: DetectionConfig, data: bytes, model: FraudModel | None = None) -> Detector:
        """A detector in exactly the state `snapshot()` captured (config and model may be new)."""
        try:
            npz = np.load(io.BytesIO(data), allow_pickle=False)
            header = json.loads(npz["header"].tobytes())
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise StoreError(f"detector snapshot is unreadable ({exc})", hint="rebuild the state by replay") from None
        if header.get("magic") != _SNAPSHOT_MAGIC or header.get("state_version") != feat.STATE_VERSION:
            raise StoreError(
                f"detector snapshot has state version {header.get('state_version')!r}; "
                f"this nova reads version {feat.STATE_VERSION}",
                hint="drop the snapshot and rebuild the state by replay",
            )
        det = cls(config, model)
        cards = int(header["cards"])
        rows = npz["rows"]
        if rows.dtype != np.uint8 or rows.shape != (cards, feat.ROW_BYTES):
            raise StoreError(
                f"detector snapshot's card rows have shape {rows.shape}", hint="rebuild the state by replay"
            )
        det._state = feat.CardState.restored(rows, npz["table_keys"], npz["table_vals"])
        det._devices = feat.DeviceTable.restored(npz["device_keys"], npz["device_last"], npz["device_count"])
        mcc_keys = npz["mcc_keys"].tolist()
        if not mcc_keys or mcc_keys[0] != 0 or len(npz["mcc_n"]) != len(mcc_keys):
            raise StoreError("detector snapshot's category profile is malformed", hint="rebuild the state by replay")
        det._mcc_index = {int(h): i for i, h in enumerate(mcc_keys)}
        size = max(64, len(mcc_keys))
        det._mcc_n = np.zeros(size)
        det._mcc_mu = np.zeros(size)
        det._mcc_n[: len(mcc_keys)] = npz["mcc_n"]
        det._mcc_mu[: len(mcc_keys)] = npz["mcc_mu"]
        det._risk = {
            name.removeprefix("risk_keys_"): (npz[name], npz["risk_vals_" + name.removeprefix("risk_keys_")])
            for name in npz.files
            if name.startswith("risk_keys_")
        }
        det.watermark_ms = header["watermark_ms"]
        det.merchant_risk_as_of_ms = header["merchant_risk_as_of_ms"]
        return det


def _low32(hashes: np.ndarray) -> np.ndarray:
    """64-bit hashes cut to 32 bits, null (0) kept and no other value becoming 0."""
    low = (hashes & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    low[(low == 0) & (hashes != 0)] = 1
    return low


def _string_hashes(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """`features.hash_strings` of an Arrow string column (dictionary or large strings are cast first)."""
    import pyarrow as pa

    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks() if array.num_chunks != 1 else array.chunk(0)
    if not pa.types.is_string(array.type):
        array = array.cast(pa.string())
    n = len(array)
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    buffers = array.buffers()
    offsets = _own(np.frombuffer(buffers[1], dtype=np.int32)[array.offset : array.offset + n + 1], np.int32)
    data = _own(np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] is not None else np.zeros(0), np.uint8)
    if array.null_count:
        valid = _own(array.is_valid().to_numpy(zero_copy_only=False), np.bool_)
    else:
        valid = np.ones(n, dtype=np.bool_)
    return feat.hash_strings(offsets, data, valid)


def _filled(column: pa.Array | pa.ChunkedArray, fill: float | bool) -> np.ndarray:
    """A numeric or boolean column as numpy, nulls replaced by `fill` (no pass when it has none)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if column.null_count:
        column = pc.fill_null(column, fill)
    values = column.to_numpy(zero_copy_only=False) if isinstance(column, pa.Array) else column.to_numpy()
    return np.asarray(values)


def _own(values: np.ndarray, dtype: type[np.generic]) -> np.ndarray:
    """`values` as a writable, C-contiguous array of `dtype` (a copy only when needed).

    numba compiles one machine-code version per argument *type*, and a read-only array (what
    zero-copy Arrow views are) is another type than a writable one: handing the kernels
    always the same kind keeps it to one compilation (seconds) per process and cache.
    """
    return np.require(values, dtype=dtype, requirements=["C", "W", "A"])


class _Columns:
    """A batch's columns as the numpy arrays the kernel wants; a missing optional column is all-null."""

    def __init__(self, batch: pa.Table, small_amount_minor: int, default_ms: int) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc

        self._batch = batch
        self.n = n = batch.num_rows
        names = set(batch.column_names)
        if "card_id" not in names or "event_time" not in names:
            raise ConfigError(
                f"the detector needs card_id and event_time columns; the batch has {sorted(names)}",
                hint="map the corpus's card and time columns to card_id and event_time",
            )
        t = batch["event_time"]
        if pa.types.is_timestamp(t.type) and t.type.unit != "ms":
            t = pc.cast(t, pa.timestamp("ms", tz=t.type.tz))
        self.t_ms = _own(_filled(pc.cast(t, pa.int64()), default_ms), np.int64)
        source = "amount_reporting_minor" if "amount_reporting_minor" in names else "amount_minor"
        if source not in names:
            raise ConfigError(
                f"the detector needs amount_reporting_minor or amount_minor; the batch has {sorted(names)}"
            )
        self.amount = _own(_filled(batch[source], 0), np.float64)
        np.maximum(self.amount, 0.0, out=self.amount)
        self.small = self.amount <= small_amount_minor
        if "status" in names:
            self.declined = _own(_filled(pc.equal(batch["status"], DECLINED), False), np.bool_)
        else:
            self.declined = np.zeros(n, dtype=np.bool_)
        self.lat = self._floats("latitude")
        self.lon = self._floats("longitude")

    def _floats(self, name: str) -> np.ndarray:
        if name not in self._batch.column_names:
            return np.full(self.n, np.nan)
        return _own(_filled(self._batch[name], math.nan), np.float64)

    def hashes(self, name: str) -> np.ndarray:
        if name not in self._batch.column_names:
            return np.zeros(self.n, dtype=np.uint64)
        return _string_hashes(self._batch[name])

    def channel_bits(self) -> np.ndarray:
        """1 << the channel's position in the contract's enum; 0 for null or a channel it lacks."""
        if "channel" not in self._batch.column_names:
            return np.zeros(self.n, dtype=np.uint8)
        import pyarrow as pa
        import pyarrow.compute as pc

        channel = self._batch["channel"]
        if not pa.types.is_string(channel.type):  # dictionary (LowCardinality) or large strings
            channel = channel.cast(pa.string())
        index = pc.index_in(channel, value_set=_CHANNEL_SET)
        positions = np.asarray(pc.fill_null(index, len(CHANNELS)).to_numpy(zero_copy_only=False), dtype=np.int64)
        bits: np.ndarray = _CHANNEL_BITS[positions]
        return bits


def _risk_table(risk: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """Merchant risk as (sorted id hashes, risk); ConfigError for a value outside [0, 1]."""
    bad = [(m, v) for m, v in risk.items() if not (0.0 <= float(v) <= 1.0)]
    if bad:
        m, v = bad[0]
        raise ConfigError(f"merchant risk of {m!r} is {v!r}; a risk is a fraud share in [0, 1]")
    keys = hash_texts(list(risk))
    vals = np.fromiter((float(v) for v in risk.values()), dtype=np.float32, count=len(risk))
    order = np.argsort(keys, kind="stable")
    return keys[order], vals[order]


def hash_texts(texts: Sequence[str]) -> np.ndarray:
    """`features.hash_strings` of Python strings (the same hash as the batch's Arrow columns get).

    Built from numpy buffers rather than `pa.array`, which imports pandas (most of a second).
    """
    encoded = [t.encode() for t in texts]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int32)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    data = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()
    return feat.hash_strings(offsets, data, np.ones(len(encoded), dtype=np.bool_))


# channel → its bit: the position in the contract's enum (a channel it lacks, or null: the last, 0)
_CHANNEL_BITS: Final = np.array([1 << k for k in range(len(CHANNELS))] + [0], dtype=np.uint8)


def _channel_set() -> pa.Array:
    import pyarrow as pa

    return pa.array(CHANNELS, pa.string())


_CHANNEL_SET: Final = _channel_set()
_NOT_PRESENT_BITS: Final = np.uint8(sum(1 << CHANNELS.index(c) for c in CARD_NOT_PRESENT))
