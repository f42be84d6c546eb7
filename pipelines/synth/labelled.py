"""`nova generate` with ground truth: a labelled corpus to Kafka or to a file, its labels to a file and a topic.

A labelled run needs card history, so its events are spread over a past window (the whole
corpus is made first, in event-time order, then produced or written). Without fraud options
and with `out`, the plain model's events go to a file instead of Kafka.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.errors import UsageError
from pipelines.synth.produce import GenerateReport, _event_window, generate

if TYPE_CHECKING:
    from pipelines.config import Settings
    from pipelines.synth.fraud import FraudSpec
    from pipelines.synth.model import TransactionChunk


def default_labels_topic(settings: Settings) -> str:
    """The labels topic the detector reads (detection.labels_topic), for `--labels-to-topic`."""
    return settings.detection.labels_topic


@dataclass
class LabelledReport:
    """What a labelled (or file) run made and where it went."""

    count: int
    seed: int
    fraud_rate: float | None
    scenarios: dict[str, dict[str, int]] = field(default_factory=dict)
    out: str | None = None
    labels_out: str | None = None
    labels_topic: str | None = None
    labels_produced: int = 0
    labels_pending: int = 0  # fraud labels whose label_time was still in the future: in the file only
    labels_cutoff_ms: int | None = None
    kafka: GenerateReport | None = None
    first_event_ms: int | None = None
    last_event_ms: int | None = None
    build_s: float = 0.0
    elapsed_s: float = 0.0

    @property
    def events_per_s(self) -> float:
        return self.count / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "seed": self.seed,
            "fraud_rate": self.fraud_rate,
            "fraud": sum(s["transactions"] for s in self.scenarios.values()),
            "scenarios": self.scenarios,
            "out": self.out,
            "labels_out": self.labels_out,
            "labels_topic": self.labels_topic,
            "labels_produced": self.labels_produced,
            "labels_pending": self.labels_pending,
            "kafka": self.kafka.to_dict() if self.kafka is not None else None,
            "first_event_ms": self.first_event_ms,
            "last_event_ms": self.last_event_ms,
            "build_s": round(self.build_s, 3),
            "elapsed_s": round(self.elapsed_s, 3),
            "events_per_s": round(self.events_per_s, 1),
        }


def generate_labelled(
    *,
    settings: Settings,
    count: int,
    seed: int = 0,
    fraud: FraudSpec | None,
    start_ms: int | None = None,
    spread_days: float | None = None,
    cards: int | None = None,
    out: Path | None = None,
    labels_out: Path | None = None,
    labels_topic: str | None = None,
    topic: str | None = None,
    rate: float | None = None,
    malformed: Mapping[str, int] | None = None,
    on_progress: Callable[[int, float], None] | None = None,
) -> LabelledReport:
    """A labelled corpus (`fraud` given) or the plain model's events (`fraud` None, `out` given).

    Transactions go to `out` (Parquet, the contract's columns) or else to Kafka (`topic`, paced
    by `rate`, with the `malformed` mix); ground truth to `labels_out` (``corpus.LABELS_SCHEMA``)
    and the fraud labels to `labels_topic`. Raises UsageError before anything is written when the
    options don't fit (fraud without a past window, labels without fraud, malformed into a file).
    """
    from pipelines.contracts.reference import load_reference
    from pipelines.synth.corpus import build_corpus, chunk_table, write_parquet

    if count < 1:
        raise UsageError(f"count must be at least 1, got {count}")
    if fraud is None and (labels_out is not None or labels_topic is not None):
        raise UsageError("labels need labelled traffic", hint="add --fraud-rate (0 for legit traffic only)")
    if out is not None and (sum((malformed or {}).values()) > 0 or rate is not None or topic is not None):
        raise UsageError(
            "--topic, --malformed and --rate apply to Kafka, not to --out", hint="drop them, or drop --out"
        )
    if fraud is not None and spread_days is None:
        raise UsageError(
            "labelled traffic needs card history: give --spread-days (events over the last N days)",
            hint="e.g. --spread-days 21 (an evaluation corpus: 1-2M events over 2-4 weeks)",
        )
    for path, option in ((out, "--out"), (labels_out, "--labels-out")):
        if path is not None and path.suffix.lower() != ".parquet":
            raise UsageError(f"{option} {str(path)!r} must be a .parquet file")
    rules = settings.pipeline.rules
    started = time.perf_counter()
    report = LabelledReport(count=count, seed=seed, fraud_rate=fraud.rate if fraud is not None else None)
    reference = load_reference(settings)
    window_start, spread_s = _event_window(settings=settings, start_ms=start_ms, spread_days=spread_days)

    if fraud is None:
        assert out is not None
        from pipelines.synth.model import TransactionGenerator

        gen = TransactionGenerator(
            seed=seed, merchants=reference.merchants, fx_rates=reference.fx_rates,
            currencies=[c for c in rules.currencies if c in reference.fx_rates], start_ms=window_start,
            spread_s=spread_s, min_amount_minor=rules.min_amount_minor, max_amount_minor=rules.max_amount_minor,
        )  # fmt: skip
        table = chunk_table(next(gen.chunks(count)))
        write_parquet(table, out)
        report.out = str(out)
        report.build_s = report.elapsed_s = time.perf_counter() - started
        _event_range(report, table["event_time"])
        return report

    assert window_start is not None and spread_s is not None
    corpus = build_corpus(
        reference=reference, rules=rules, seed=seed, count=count, start_ms=window_start, spread_s=spread_s,
        fraud=fraud, cards=cards,
    )  # fmt: skip
    report.build_s = time.perf_counter() - started
    report.scenarios = corpus.summary()
    labels = corpus.labels_table()
    if out is not None:
        table = corpus.transactions_table()
        write_parquet(table, out)
        report.out = str(out)
    else:

        def chunks(size: int) -> Iterator[TransactionChunk]:
            return corpus.chunks(size)

        report.kafka = generate(
            settings=settings, count=count, rate=rate, seed=seed, topic=topic, malformed=malformed,
            start_ms=window_start, spread_days=spread_days, on_progress=on_progress, chunks=chunks,
        )  # fmt: skip
    if labels_out is not None:
        write_parquet(labels, labels_out)
        report.labels_out = str(labels_out)
    if labels_topic is not None:
        from pipelines.synth.labels import produce_labels

        sent = produce_labels(settings=settings, labels=labels, topic=labels_topic)
        report.labels_produced, report.labels_pending, report.labels_cutoff_ms = (
            sent.produced,
            sent.pending,
            sent.cutoff_ms,
        )
        report.labels_topic = labels_topic
    times = corpus.chunk.column("event_time")
    report.first_event_ms, report.last_event_ms = int(times[0]), int(times[-1])
    report.elapsed_s = time.perf_counter() - started
    return report


def _event_range(report: LabelledReport, event_time: Any) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc

    ms = pc.cast(event_time, pa.int64())
    report.first_event_ms = pc.min(ms).as_py()
    report.last_event_ms = pc.max(ms).as_py()
