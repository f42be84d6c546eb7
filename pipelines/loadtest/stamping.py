"""Pre-encoded transactions, re-sent with a fresh transaction id and event time stamped per send.

Encoding every message with fastavro caps a Python process near 60k messages/s. A load test at
3× peak needs more per process, so each producer encodes a pool of generated transactions once
(`ColumnarEncoder`, Confluent framing) and, per batch, copies pool rows and overwrites two byte
ranges in place with numpy:

- the transaction id. Ids of a run read `RRRRRRRR-PPPP-4000-8000-CCCCCCCCCCCC`: the run id, the
  producer's index and a per-producer counter, all hex — a valid UUID text (version 4 and variant
  bits set) that is unique per run and lets the completeness check select the run's rows by
  prefix. Only the 12 counter digits change per send;
- the event time, which is the intended send time (the load test measures latency from it). It
  is a zigzag varint, so its length depends on the value: the pool is encoded with a time of the
  width every epoch millisecond from 1970-07-18 to 2039-09-07 has (6 bytes), and `stamp()`
  refuses a time of another width rather than corrupt a message.

Both offsets are found by looking, not by assuming a field order: the id by its text, the time as
the first byte that differs between two encodings of the same row one millisecond apart. A unit
test decodes stamped messages with fastavro and compares them to what was stamped.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.contracts.columnar_writer import ColumnarEncoder, Fixed
from pipelines.errors import UsageError

if TYPE_CHECKING:
    from pipelines.config import Settings

COUNTER_DIGITS = 12
MAX_COUNTER = 16**COUNTER_DIGITS
MAX_PRODUCERS = 16**4
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_COUNTER_SHIFTS = np.arange(COUNTER_DIGITS - 1, -1, -1, dtype=np.uint64) * np.uint64(4)
_ID_LENGTH = 36


def id_prefix(run_id: str, producer: int) -> str:
    """The 24 characters every id of one producer of one run starts with."""
    if not 0 <= producer < MAX_PRODUCERS:
        raise UsageError(f"producer index {producer} is out of range: at most {MAX_PRODUCERS} producers per run")
    return f"{run_id}-{producer:04x}-4000-8000-"


def transaction_id(run_id: str, producer: int, counter: int) -> str:
    """The id of message number `counter` of `producer` in run `run_id`."""
    return f"{id_prefix(run_id, producer)}{counter:0{COUNTER_DIGITS}x}"


def varint_width(value: int) -> int:
    """Bytes of the Avro (zigzag) varint of `value`."""
    zigzag = (value << 1) ^ (value >> 63)
    return max(1, (zigzag.bit_length() + 6) // 7)


def width_range(width: int) -> tuple[int, int]:
    """[lo, hi): the non-negative longs whose varint has `width` bytes."""
    lo = 0 if width == 1 else 1 << (7 * (width - 1) - 1)
    return lo, 1 << (7 * width - 1)


@dataclass(frozen=True)
class _Layout:
    """Where one pool row's stamped bytes go."""

    counter_at: np.ndarray  # per row: offset of the id's counter digits
    time_at: np.ndarray  # per row: offset of the event_time varint
    time_width: int
    uniform: bool  # every row has the same offsets: stamp with slices, not fancy indexing


class PayloadPool:
    """Pool rows as a zero-padded byte matrix plus where to stamp each; `stamp()` makes messages."""

    def __init__(self, *, matrix: np.ndarray, lengths: np.ndarray, keys: list[bytes], layout: _Layout) -> None:
        self._matrix = matrix
        self._lengths = lengths
        self._keys = keys
        self._layout = layout
        self._next = 0
        self.time_range = width_range(layout.time_width)

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def card_ids(self) -> list[str]:
        """The distinct cards the pool sends (the analyst's card-history query picks from them)."""
        return sorted({k.decode() for k in self._keys})

    @classmethod
    def build(cls, settings: Settings, *, run_id: str, producer: int, size: int, seed: int) -> PayloadPool:
        """A pool of `size` transactions from the generator, encoded with the subject's latest schema."""
        from pipelines.contracts.reference import load_reference
        from pipelines.contracts.registry import open_registry
        from pipelines.synth import TransactionGenerator

        reference = load_reference(settings)
        schema_id, _version, schema = open_registry(settings).latest(settings.pipeline.subject)
        schema_json: dict[str, Any] = json.loads(schema.raw)
        if not ColumnarEncoder.supports(schema_json):
            raise UsageError(
                f"subject '{settings.pipeline.subject}' (schema id {schema_id}) is not a flat record of primitives; "
                "the load test's pre-encoded pool needs one",
                hint="load-test with a flat schema, or extend contracts.columnar_writer",
            )
        rules = settings.pipeline.rules
        generator = TransactionGenerator(
            seed=seed,
            merchants=reference.merchants,
            fx_rates=reference.fx_rates,
            currencies=[c for c in rules.currencies if c in reference.fx_rates],
            min_amount_minor=rules.min_amount_minor,
            max_amount_minor=rules.max_amount_minor,
        )
        chunk = next(generator.chunks(size))
        prefix = id_prefix(run_id, producer)
        ids = [f"{prefix}{i:0{COUNTER_DIGITS}x}".encode() for i in range(size)]
        chunk.columns["transaction_id"] = Fixed(np.frombuffer(b"".join(ids), dtype=np.uint8).reshape(size, -1))
        encoder = ColumnarEncoder(schema_id, schema_json)
        reference_ms = int(time.time() * 1000)
        chunk.columns["event_time"] = np.full(size, reference_ms, dtype=np.int64)
        first = encoder.encode_chunk(chunk)
        chunk.columns["event_time"] = np.full(size, reference_ms + 1, dtype=np.int64)
        second = encoder.encode_chunk(chunk)
        keys = [str(k).encode() for k in chunk.keys]
        return cls.from_payloads(first, second, ids=ids, keys=keys, time_width=varint_width(reference_ms))

    @classmethod
    def from_payloads(
        cls, first: list[bytes], second: list[bytes], *, ids: list[bytes], keys: list[bytes], time_width: int
    ) -> PayloadPool:
        """A pool from the same rows encoded twice, their event times one millisecond apart."""
        lengths = np.fromiter(map(len, first), dtype=np.int64, count=len(first))
        if not np.array_equal(lengths, np.fromiter(map(len, second), dtype=np.int64, count=len(second))):
            raise ValueError("the two encodings of the pool differ in length: the event time changed width")
        filled = np.arange(int(lengths.max()))[None, :] < lengths[:, None]
        matrix = np.zeros(filled.shape, dtype=np.uint8)
        other = np.zeros_like(matrix)
        matrix[filled] = np.frombuffer(b"".join(first), dtype=np.uint8)
        other[filled] = np.frombuffer(b"".join(second), dtype=np.uint8)
        differs = matrix != other
        if not differs.any(axis=1).all():
            raise ValueError("some pool rows did not change with the event time: the schema has no event_time long")
        time_at = differs.argmax(axis=1)
        counter_at = np.empty(len(first), dtype=np.int64)
        for i, (payload, tid) in enumerate(zip(first, ids, strict=True)):
            at = payload.find(tid)
            if at < 0 or payload.find(tid, at + 1) >= 0:
                raise ValueError(f"pool row {i}: the transaction id {tid.decode()!r} is not in the payload once")
            counter_at[i] = at + _ID_LENGTH - COUNTER_DIGITS
        uniform = bool((counter_at == counter_at[0]).all() and (time_at == time_at[0]).all())
        layout = _Layout(counter_at=counter_at, time_at=time_at, time_width=time_width, uniform=uniform)
        return cls(matrix=matrix, lengths=lengths, keys=keys, layout=layout)

    def stamp(self, first_counter: int, times_ms: np.ndarray) -> tuple[list[bytes], list[bytes]]:
        """Values and keys of the next len(times_ms) messages: counters from `first_counter`, these times."""
        n = len(times_ms)
        if n == 0:
            return [], []
        lo, hi = self.time_range
        if int(times_ms.min()) < lo or int(times_ms.max()) >= hi:
            raise UsageError(
                f"event times {int(times_ms.min())}..{int(times_ms.max())} ms fall outside the pool's fixed-width "
                f"range [{lo}, {hi})",
                hint="the pool stamps epoch milliseconds of 1970-07-18 to 2039-09-07",
            )
        if first_counter < 0 or first_counter + n > MAX_COUNTER:
            raise UsageError(f"message counter {first_counter + n} exceeds {MAX_COUNTER} for one producer")
        rows = (self._next + np.arange(n)) % len(self._keys)
        self._next = int((self._next + n) % len(self._keys))
        matrix = self._matrix[rows]
        counters = np.arange(first_counter, first_counter + n, dtype=np.uint64)
        digits = _HEX[((counters[:, None] >> _COUNTER_SHIFTS) & np.uint64(0xF)).astype(np.intp)]
        varints = _fixed_varints(times_ms.astype(np.int64), self._layout.time_width)
        lay = self._layout
        if lay.uniform:
            c, t = int(lay.counter_at[0]), int(lay.time_at[0])
            matrix[:, c : c + COUNTER_DIGITS] = digits
            matrix[:, t : t + lay.time_width] = varints
        else:
            at = np.arange(n)[:, None]
            matrix[at, lay.counter_at[rows][:, None] + np.arange(COUNTER_DIGITS)] = digits
            matrix[at, lay.time_at[rows][:, None] + np.arange(lay.time_width)] = varints
        data = matrix.tobytes()
        stride = matrix.shape[1]
        values = [data[i * stride : i * stride + length] for i, length in enumerate(self._lengths[rows].tolist())]
        keys = self._keys
        return values, [keys[r] for r in rows.tolist()]


def _fixed_varints(values: np.ndarray, width: int) -> np.ndarray:
    """Zigzag varints of non-negative int64s that all have `width` bytes, as an (n, width) matrix."""
    zigzag = (values << 1).astype(np.uint64)
    shifts = np.arange(width, dtype=np.uint64) * np.uint64(7)
    out = ((zigzag[:, None] >> shifts) & np.uint64(0x7F)).astype(np.uint8)
    out[:, :-1] |= 0x80
    return out
