"""CPU cost of the ingest worker's decode + transform: the dict path against the columnar fast path.

    python bench/bench_fastdecode.py [--events 200000] [--batch 10000] [--reps 5] [--chdb] [--write-docs]

The values come from the generator (`open_message_stream`, no Kafka) with a small malformed mix
of every kind, cut into chunks of --batch as a consumer hands them over. Per chunk:

- dict path: `Decoder.decode_batch` → `transform` (what the worker did before the fast path, and
  what `FastDecoder` still does for a writer schema it can't read column-wise);
- fast path: `FastDecoder.decode` → `transform_table` (pipelines/contracts/columnar.py, what
  `Worker._process` does);
- with --chdb, for comparison, ClickHouse's own Avro reader through chdb: the chunk's bodies
  (the clean ones only: it has no per-message error isolation) framed as one in-memory Avro
  object container with a `_seq` field appended per record, written to a scratch file and read
  back as Arrow with `file(…, 'Avro')` in a `:memory:` session; decode only, no transform.

Figures are CPU seconds per million events of this process (getrusage: user + system, every
thread, so chdb's query threads count), best and median of --reps rounds run round-robin; the
machine is shared, so wall time would mislead. Both paths' results are checked equal first.
Not a test: numbers depend on the machine (record runs in docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import fastavro  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from pipelines.config import load_settings  # noqa: E402
from pipelines.contracts.codec import Decoder, raw_logical_schema  # noqa: E402
from pipelines.contracts.columnar import FastDecoder  # noqa: E402
from pipelines.contracts.reference import load_reference  # noqa: E402
from pipelines.contracts.registry import open_registry  # noqa: E402
from pipelines.ingest.transform import (  # noqa: E402
    Enricher,
    transform,
    transform_table,
)
from pipelines.synth import MALFORMED_KINDS, open_message_stream  # noqa: E402

Stages = dict[str, float]


def avro_long(n: int) -> bytes:
    """``n`` as Avro writes a long (zigzag varint), by fastavro: the container's counts and `_seq`."""
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, "long", n)
    return buf.getvalue()


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def make_values(settings: Any, events: int, seed: int) -> list[bytes]:
    each = max(1, events // 20_000)  # ~0.025% of each malformed kind
    stream = open_message_stream(
        settings=settings, seed=seed, count=events, malformed={kind: each for kind in MALFORMED_KINDS}
    )
    values: list[bytes] = []
    while not stream.done:
        values += stream.next_batch()[1]
    return values


def check_equal(chunks: list[list[bytes]], slow: Decoder, fast: FastDecoder, kw: dict[str, Any]) -> None:
    for chunk in chunks:
        records, errors = slow.decode_batch(chunk)
        failed = {i for i, _ in errors}
        positions = [i for i in range(len(chunk)) if i not in failed]
        table, got_positions, rejects = fast.decode(chunk)
        assert [(i, r) for i, r, _ in rejects] == [(i, e.reason) for i, e in errors], "rejects differ"
        assert got_positions.tolist() == positions, "positions differ"
        a = transform(records, positions, **kw)
        b = transform_table(table, got_positions, **kw)
        assert a.rejected == b.rejected and a.rows_index.tolist() == b.rows_index.tolist(), "rule rejects differ"
        assert (a.table is None and b.table is None) or (a.table is not None and a.table.equals(b.table)), (
            "tables differ"
        )


class ChdbContainer:
    """The chdb route: one Avro object container per chunk, decoded by ClickHouse (happy path only)."""

    SYNC = b"nova-fastdecode!"

    def __init__(self, writer_json: Any, scratch: Path) -> None:
        from chdb.state import sqlitelike

        schema = raw_logical_schema(writer_json)  # uuid as a plain string, event_time as a long
        schema["fields"].append({"name": "_seq", "type": "long"})
        meta = {"avro.schema": json.dumps(schema).encode(), "avro.codec": b"null"}
        header = bytearray(b"Obj\x01") + avro_long(len(meta))
        for key, value in meta.items():
            header += avro_long(len(key)) + key.encode() + avro_long(len(value)) + value
        self.header = bytes(header + b"\x00" + self.SYNC)
        self.seq = [avro_long(i) for i in range(100_000)]
        self.path = scratch / "chunk.avro"
        self.conn = sqlitelike.connect(f":memory:?user_files_path={scratch}&tmp_path={scratch / 'tmp'}")
        self.columns = (
            "transaction_id, event_time, card_id, account_id, merchant_id, merchant_category, amount_minor, "
            "currency, country, toString(channel) AS channel, toString(status) AS status, device_id, ip_address, "
            "latitude, longitude, _seq"
        )

    def decode(self, values: list[bytes]) -> tuple[pa.Table, np.ndarray]:
        seq = self.seq
        body = b"".join([v[5:] + seq[i] for i, v in enumerate(values)])
        self.path.write_bytes(b"".join((self.header, avro_long(len(values)), avro_long(len(body)), body, self.SYNC)))
        table = self.conn.query(f"SELECT {self.columns} FROM file('{self.path}', 'Avro')", "ArrowTable")
        positions = table["_seq"].to_numpy()
        table = table.drop_columns(["_seq"])
        i = table.column_names.index("event_time")
        table = table.set_column(i, "event_time", table["event_time"].cast(pa.timestamp("ms", tz="UTC")))
        return table, positions

    def close(self) -> None:
        self.conn.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=10_000, help="messages per polled chunk (the worker asks 10k)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--chdb", action="store_true", help="also time ClickHouse's Avro reader through chdb")
    ap.add_argument("--write-docs", action="store_true", help="record the figures in docs/BENCHMARKS.md")
    args = ap.parse_args()

    settings = load_settings(ROOT / "configs" / "nova.yaml", environ={})
    registry = open_registry(settings)
    enricher = Enricher(load_reference(settings))
    values = make_values(settings, args.events, args.seed)
    n = len(values)
    chunks = [values[s : s + args.batch] for s in range(0, n, args.batch)]
    now_ms = int(time.time() * 1000)
    kw: dict[str, Any] = {"rules": settings.pipeline.rules, "enricher": enricher, "now_ms": now_ms}
    slow, fast = Decoder(registry), FastDecoder(registry)
    check_equal(chunks, slow, fast, kw)

    def dict_path() -> Stages:
        t = {"decode": 0.0, "transform": 0.0}
        for chunk in chunks:
            c0 = cpu_s()
            records, errors = slow.decode_batch(chunk)
            failed = {i for i, _ in errors}
            positions = [i for i in range(len(chunk)) if i not in failed] if errors else list(range(len(chunk)))
            c1 = cpu_s()
            transform(records, positions, **kw)
            t["decode"] += c1 - c0
            t["transform"] += cpu_s() - c1
        return t

    def fast_path() -> Stages:
        t = {"decode": 0.0, "transform": 0.0}
        for chunk in chunks:
            c0 = cpu_s()
            table, positions, _ = fast.decode(chunk)
            c1 = cpu_s()
            transform_table(table, positions, **kw)
            t["decode"] += c1 - c0
            t["transform"] += cpu_s() - c1
        return t

    variants: dict[str, Callable[[], Stages]] = {
        "dict path: decode_batch + transform": dict_path,
        "fast path: FastDecoder + transform_table": fast_path,
    }
    scratch: Path | None = None
    container: ChdbContainer | None = None
    if args.chdb:
        import chdb

        scratch = Path(tempfile.mkdtemp(prefix="nova-bench-chdb-"))
        (scratch / "tmp").mkdir()
        writer = json.loads(registry.get_schema(1).raw)
        container = ChdbContainer(writer, scratch)
        clean = [[chunk[i] for i in fast.decode(chunk)[1].tolist()] for chunk in chunks]
        got, _ = container.decode(clean[0])
        want, _, _ = fast.decode(clean[0])
        got = got.set_column(0, "transaction_id", got["transaction_id"].cast(pa.string()))
        assert got.cast(want.schema).equals(want), "chdb decoded something else"

        def chdb_path() -> Stages:
            assert container is not None
            t = {"decode": 0.0, "transform": 0.0}
            for chunk in clean:
                c0 = cpu_s()
                container.decode(chunk)
                t["decode"] += cpu_s() - c0
            return t

        variants[f"chdb {chdb.__version__} Avro reader (clean chunks, decode only)"] = chdb_path

    results: dict[str, list[Stages]] = {name: [] for name in variants}
    try:
        for _ in range(args.reps):
            for name, fn in variants.items():
                gc.collect()
                results[name].append(fn())
    finally:
        if container is not None:
            container.close()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)

    bad = n - sum(len(fast.decode(c)[1]) for c in chunks)
    print(
        f"# {platform.processor() or platform.machine()} · {platform.python_implementation()} "
        f"{platform.python_version()} · numpy {np.__version__} · pyarrow {pa.__version__} · "
        f"fastavro {fastavro.__version__}"
    )
    setup = (
        f"{n} events (~{sum(map(len, values)) / n:.0f} B each, {bad} undecodable), chunks of {args.batch}, "
        f"{args.reps} rounds"
    )
    print(f"# {setup}; CPU-s per million events (getrusage, all threads): best / median")
    print(f"{'variant':58s} {'decode':>13s} {'transform':>13s} {'total':>13s}")
    per_m = 1e6 / n
    table: dict[str, list[str]] = {}
    for name, runs in results.items():
        cols = []
        for stage in ("decode", "transform", None):
            xs = [(r[stage] if stage else r["decode"] + r["transform"]) * per_m for r in runs]
            cols.append(f"{min(xs):5.2f} / {statistics.median(xs):5.2f}")
        table[name] = cols
        print(f"{name:58s} {cols[0]:>13s} {cols[1]:>13s} {cols[2]:>13s}")
    if args.write_docs:
        command = f"python bench/bench_fastdecode.py --events {args.events} --batch {args.batch} --reps {args.reps}"
        write_docs(table, setup, command + (" --chdb" if args.chdb else ""))


def write_docs(table: dict[str, list[str]], setup: str, command: str) -> None:
    from _docs import machine, write_section

    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} with `{command}` on {machine()}; {setup}. "
        "CPU-seconds per million events (getrusage: user + system, all threads), best / median.",
        "",
        "| variant | decode | transform | total |",
        "|---|---:|---:|---:|",
        *(f"| {name} | {' | '.join(c.strip() for c in cols)} |" for name, cols in table.items()),
    ]
    write_section("fastdecode", "\n".join(lines), title="Ingest decode + transform (`bench/bench_fastdecode.py`)")


if __name__ == "__main__":
    main()
