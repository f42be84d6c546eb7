"""One run of a replay job: read, map, produce each batch with its checkpoint in one transaction.

Rows are mapped to the contract by configs/legacy/mapping.yaml, Confluent-framed with the
registered schema id and produced keyed by card_id, with their original event times. A row that
cannot be mapped is counted by reason and written to the reject file (JSON lines: reason, detail,
the original row). The transactional.id is derived from the job, so a restarted run fences a
zombie of an earlier one before it reads the job's checkpoint.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

from pipelines import kafka
from pipelines.contracts.codec import EncodeError, Encoder
from pipelines.contracts.registry import open_registry
from pipelines.dualrun.mapping import UNPLACEABLE_US, MappedRow, MapRow, Reject, Row, json_safe, load_mapping
from pipelines.dualrun.replay.checkpoint import CHECKPOINT_TOPIC, Checkpoint, Position, job_id, read_checkpoint
from pipelines.dualrun.replay.sources import (
    SORT_CHUNK_ROWS,
    FileRows,
    Key,
    OnProgress,
    PostgresRows,
    parse_source,
    utc_of,
)
from pipelines.errors import KafkaError, UsageError
from pipelines.kafka.transactional import TransactionalProducer, ensure_compacted_topic, open_transactional

if TYPE_CHECKING:
    from pipelines.config import Settings

DEFAULT_BATCH_ROWS = 20_000
MAX_BATCH_SECONDS = 1.0  # commit at least this often, so a crash loses little work
SAMPLES_PER_REASON = 3


@dataclass
class ReplayReport:
    """What a run did (`read`, `produced`, `rejected`) and the job's totals over all its runs."""

    job: str
    source: str
    topic: str
    since: datetime
    until: datetime
    schema_id: int
    resumed_from: Key | None
    read: int = 0  # rows of the range read by this run
    produced: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    samples: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    elapsed_s: float = 0.0
    complete: bool = False
    reject_file: str = ""
    planned: int | None = None
    job_read: int = 0  # the job's totals over all its runs
    job_produced: int = 0
    job_rejected: dict[str, int] = field(default_factory=dict)

    @property
    def rows_per_s(self) -> float:
        return self.read / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "job": self.job, "source": self.source, "topic": self.topic,
            "since": self.since.isoformat(), "until": self.until.isoformat(), "schema_id": self.schema_id,
            "resumed_from": None if self.resumed_from is None else {
                "utc": utc_of(self.resumed_from[0]).isoformat() if self.resumed_from[0] != UNPLACEABLE_US else None,
                "txn_ref": self.resumed_from[1]},
            "read": self.read, "produced": self.produced, "rejected": dict(self.rejected),
            "rejected_total": sum(self.rejected.values()), "samples": self.samples,
            "elapsed_s": round(self.elapsed_s, 3), "rows_per_s": round(self.rows_per_s, 1),
            "complete": self.complete, "reject_file": self.reject_file,
            "job_totals": {"read": self.job_read, "produced": self.job_produced, "rejected": self.job_rejected},
        }  # fmt: skip


class _Rejects:
    """The reject file: JSON lines, flushed per batch; its length is part of the checkpoint.

    A fresh run replaces the file; a resumed run continues it, cut back to `keep_bytes` first: lines
    written after the last committed checkpoint belong to a batch that was rolled back. The file is
    created only when there is something to write.
    """

    def __init__(self, path: Path, *, keep_bytes: int | None, append: bool = False) -> None:
        self.path = path
        self.fh: IO[bytes] | None = None
        if keep_bytes is None and not append:
            path.unlink(missing_ok=True)
        elif keep_bytes is not None and path.exists() and path.stat().st_size > keep_bytes:
            os.truncate(path, keep_bytes)
        self.size = path.stat().st_size if path.exists() else 0

    def write(self, *, reason: str, detail: str, row: Row) -> None:
        if self.fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fh = self.path.open("ab")
        line = {"reason": reason, "detail": detail, "row": json_safe(row)}
        self.fh.write(json.dumps(line, default=str).encode() + b"\n")

    def commit_point(self) -> int:
        """Flush, and return the length the checkpoint records (what a resumed run keeps)."""
        if self.fh is not None:
            self.fh.flush()
            self.size = self.fh.tell()
        return self.size

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()


def replay(
    *,
    settings: Settings,
    source: str,
    since: datetime,
    until: datetime,
    topic: str | None = None,
    rate: float | None = None,
    resume: bool = False,
    restart: bool = False,
    reject_file: Path | None = None,
    checkpoint_topic: str = CHECKPOINT_TOPIC,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    sort_chunk_rows: int = SORT_CHUNK_ROWS,
    on_progress: OnProgress | None = None,
    on_notice: Callable[[str], None] | None = None,
) -> ReplayReport:
    """Replay legacy rows of [since, until) into `topic` (default: the pipeline's), exactly once per job."""
    if until <= since:
        raise UsageError(f"--until ({until.isoformat()}) must be after --since ({since.isoformat()})")
    if rate is not None and not rate > 0:
        raise UsageError(f"--rate must be positive, got {rate:g}")
    if resume and restart:
        raise UsageError("pass --resume or --restart, not both")
    if batch_rows < 1:
        raise UsageError(f"batch size must be at least 1, got {batch_rows}")
    notice = on_notice or (lambda _m: None)
    topic = topic or settings.pipeline.topic
    mapping = load_mapping(settings=settings)
    src = parse_source(source, settings=settings, mapping=mapping)
    registry = open_registry(settings)
    schema_id, _version, schema = registry.latest(settings.pipeline.subject)
    mapping.check_contract(json.loads(schema.raw))
    encoder = Encoder(schema_id, schema.raw)  # logical types raw: event_time as epoch ms, uuid as text
    map_row = mapping.compile()

    kafka.check_reachable(settings)
    if topic not in kafka.describe_topics(settings, [topic]):
        raise KafkaError(
            f"topic '{topic}' does not exist on {settings.kafka.bootstrap_servers}",
            hint="create it with `nova provision --yes`, or pass --topic",
        )
    ensure_compacted_topic(settings, checkpoint_topic)
    job = job_id(source=src, since=since, until=until, topic=topic)
    rejects_path = reject_file or settings.state_dir / "replay" / f"{job}.rejects.jsonl"

    # The transactional.id is the job's: initialising it fences a zombie of an earlier run of the same
    # job and aborts its open transaction, so the checkpoint read next is final.
    producer = open_transactional(
        settings, transactional_id=f"nova-replay-{job}", owner=f"replay job {job}",
        retry_hint="re-run with --resume", **{"transaction.timeout.ms": 60_000, "linger.ms": 20},
    )  # fmt: skip
    previous = read_checkpoint(settings=settings, topic=checkpoint_topic, job=job)
    if previous is not None and not resume and not restart:
        state = "completed" if previous.complete else "was interrupted"
        raise UsageError(
            f"replay job {job} ({src.describe()} [{since.isoformat()}, {until.isoformat()}) → {topic}) {state} "
            f"after {previous.produced} produced row(s)",
            hint="pass --resume to continue after its checkpoint, or --restart to replay the whole range again "
            "(the pipeline would store the already-produced rows twice)",
        )
    if resume and previous is None:
        notice(f"no checkpoint for job {job}: starting from the beginning")
    cp = Checkpoint(job=job, source=src.describe(), since=since.isoformat(), until=until.isoformat(), topic=topic,
                    reject_file=str(rejects_path))  # fmt: skip
    continuing = resume and previous is not None
    same_reject_file = continuing and previous is not None and previous.reject_file == str(rejects_path)
    if continuing and previous is not None:
        cp = previous
        cp.reject_file = str(rejects_path)
    cp.runs += 1
    after = cp.after
    report = ReplayReport(job=job, source=src.describe(), topic=topic, since=since, until=until,
                          schema_id=schema_id, resumed_from=after, reject_file=str(rejects_path))  # fmt: skip
    if after is not None:
        notice(f"resuming job {job} after {cp.produced} produced row(s)")

    started = time.perf_counter()
    rejects = _Rejects(rejects_path, keep_bytes=cp.reject_offset if same_reject_file else None, append=continuing)
    with ExitStack() as stack:
        stack.callback(rejects.close)
        rows: Iterable[tuple[Key, Row]]
        if cp.complete:
            rows = ()
            report.planned = 0
        elif src.kind == "postgres":
            pg = PostgresRows(src, mapping, settings)
            report.planned = pg.count(since, until, after)
            rows = pg.rows(since, until, after)
        else:
            files = FileRows(src, mapping, chunk_rows=sort_chunk_rows)
            report.planned = files.prepare(since, until, after, stack=stack, on_progress=on_progress)
            rows = files.rows()
        if on_progress:
            on_progress("replay", 0, report.planned)
        _produce_all(producer=producer, rows=rows, map_row=map_row, encoder=encoder, topic=topic,
                     checkpoint_topic=checkpoint_topic, cp=cp, rejects=rejects, report=report, rate=rate,
                     batch_rows=batch_rows, on_progress=on_progress)  # fmt: skip
    report.elapsed_s = time.perf_counter() - started
    report.complete = True
    report.job_read, report.job_produced, report.job_rejected = cp.read, cp.produced, dict(cp.rejected)
    return report


def _produce_all(
    *, producer: TransactionalProducer, rows: Iterable[tuple[Key, Row]], map_row: MapRow, encoder: Encoder,
    topic: str, checkpoint_topic: str, cp: Checkpoint, rejects: _Rejects, report: ReplayReport,
    rate: float | None, batch_rows: int, on_progress: OnProgress | None,
) -> None:  # fmt: skip
    """Read and map a batch (≤ batch_rows rows, ≤ MAX_BATCH_SECONDS), then produce it and its checkpoint
    in one transaction. The transaction is open only while producing, not while reading the source."""
    if rate is not None:
        batch_rows = max(1, min(batch_rows, int(rate * MAX_BATCH_SECONDS / 2) or 1))

    def reject(key: Key, row: Row, result: Reject) -> None:
        batch_rejects[result.reason] += 1
        rejects.write(reason=result.reason, detail=result.detail, row=row)
        samples = report.samples.setdefault(result.reason, [])
        if len(samples) < SAMPLES_PER_REASON:
            samples.append({"txn_ref": key[1], "detail": result.detail})

    started = time.perf_counter()
    read_this_run = 0
    it = iter(rows)
    job_key = cp.job.encode()
    exhausted = False
    previous_key = cp.after
    while not exhausted:
        batch_started = time.monotonic()
        n = 0
        last: Key | None = None
        batch_rejects: Counter[str] = Counter()
        records: list[dict[str, Any]] = []
        sources: list[tuple[Key, Row]] = []
        for key, row in it:
            result = map_row(row) if key != previous_key else _DUPLICATE
            previous_key = key
            if type(result) is MappedRow:
                records.append(result.record)
                sources.append((key, row))
            else:
                reject(key, row, cast(Reject, result))
            n += 1
            last = key
            if rate is not None:
                read_this_run += 1
                wait = read_this_run / rate - (time.perf_counter() - started)
                if wait > 0:
                    time.sleep(wait)
            if n >= batch_rows or (n % 256 == 0 and time.monotonic() - batch_started >= MAX_BATCH_SECONDS):
                break
        else:
            exhausted = True
        values = _encode_batch(encoder, records, sources, reject)
        with producer.transaction():
            produced = producer.send(topic, ((record["card_id"].encode(), value) for record, value in values))
            cp.read += n
            cp.produced += produced
            for reason, k in batch_rejects.items():
                cp.rejected[reason] = cp.rejected.get(reason, 0) + k
            if last is not None:
                cp.position = Position.of(last)
            cp.complete = exhausted
            cp.reject_offset = rejects.commit_point()
            producer.send(checkpoint_topic, [(job_key, cp.to_json())])
        report.read += n
        report.produced += produced
        report.rejected.update(batch_rejects)
        if on_progress:
            on_progress("replay", report.read, report.planned)


def _encode_batch(
    encoder: Encoder, records: list[dict[str, Any]], sources: list[tuple[Key, Row]],
    reject: Callable[[Key, Row, Reject], None],
) -> list[tuple[dict[str, Any], bytes]]:  # fmt: skip
    """(record, value) pairs; a record the schema refuses is rejected (encode_error), the rest kept."""
    try:
        return list(zip(records, encoder.encode_batch(records), strict=True))
    except EncodeError:
        pass
    out = []
    for record, (key, row) in zip(records, sources, strict=True):
        try:
            out.append((record, encoder.encode(record)))
        except EncodeError as exc:
            reject(key, row, Reject("encode_error", str(exc)))
    return out


_DUPLICATE = Reject("duplicate", "the same txn_ref at the same time again (overlapping exports?)")
