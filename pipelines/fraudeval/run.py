"""`evaluate`: a labelled corpus through the real path — Kafka, the ingest workers with detection, ClickHouse.

One run, in this order:

1. names of its own: topics `eval-<run>.transactions|dlq|labels|alerts`, consumer group
   `eval-<run>-ingest`, and a ClickHouse database `eval_<run>` (on the embedded store, a chdb path
   of its own under `<state dir>/fraudeval/<run>/`, since chdb serves one process per path) — a run
   never reads or writes production data; `nova provision`'s own code creates them;
2. the ingest workers start in this process's supervisor (`pipelines.ingest.run_ingest`) with
   detection on and `detection.record_scores` on, so every transaction's score is stored;
3. the corpus is produced in event-time order, each label just before the first transaction at
   or after its label time (`replay`), paced at `rate`;
4. once the group has committed everything (and the labels group too), the workers stop, and the
   figures (`metrics`) are computed from the alerts and scores the workers wrote;
5. the topics and the database are dropped (unless `keep`).

Label feedback trains the model as it would in production, where a scheduled `nova fraud train`
and a restart of the workers pick up what the chargebacks taught. At each boundary T of event
time that `retrain_plan` picks (UTC midnights: often while the labels are few, then at least
every `retrain_every_ms`, 7 days by default), steps 2–4 stop, `nova fraud train`'s code trains a
model on what the pipeline stored up to T (labels known by T only; the rows of the last label
delay left out, `training_label_delay`), and the workers restart with it for the rows from T on. Every row is
scored once, by the model of its time, so the whole corpus is judged: it is a prequential
evaluation (test on each period, then learn from it), the one used for streams. Until
RETRAIN_MIN_FRAUDS frauds are known the workers run on without a restart, so a short corpus is
one part, rules only.

With `train_days` instead, steps 2–4 run twice: the first days with the configured detector, one
model trained at the cutoff, then the held-out rest with it. The figures of each part are kept
apart: the held-out part is the one judged.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.errors import KafkaError, NovaError, UsageError
from pipelines.fraudeval.corpus import Corpus, unknown_merchants
from pipelines.fraudeval.metrics import DAY_MS, Figures, Outcomes, compute_figures
from pipelines.fraudeval.replay import label_feed, produce_corpus
from pipelines.fraudeval.train import ReplayCache, TrainReport

if TYPE_CHECKING:
    import pyarrow as pa

    from pipelines.clickhouse import Store
    from pipelines.config import Settings
    from pipelines.contracts.reference import ReferenceData
    from pipelines.ingest.models import IngestReport, WorkerStatus

OnProgress = Callable[[str, float, float | None], None]  # (stage, done, total)
CONTRACT_CHUNK_ROWS = 200_000  # rows checked against the contract at once (bounds the check's memory)
MAX_DEAD_LETTER_SHARE = 0.01  # of a corpus the contract may dead-letter before evaluate refuses it
ASSIGN_TIMEOUT_S = 600.0  # a restart rebuilds the detectors from the stored rows first
DRAIN_TIMEOUT_S = 600.0
SETTLE_S = 1.0  # after the last commit: alerts of the last batch are written before its offsets commit
DEFAULT_RETRAIN_MS = 7 * DAY_MS
RETRAIN_MIN_FRAUDS = 20  # known frauds in the training rows before a boundary trains a model
RETRAIN_GROWTH = 1.5  # ...and this many times those of the last model (or the schedule), see retrain_plan


@dataclass(frozen=True)
class EvalNames:
    run_id: str
    topic: str
    dlq_topic: str
    labels_topic: str
    alerts_topic: str
    group_id: str
    database: str
    run_dir: Path
    chdb_path: Path | None  # the embedded store of this run; None on a server

    @property
    def topics(self) -> list[str]:
        return [self.topic, self.dlq_topic, self.labels_topic, self.alerts_topic]


@dataclass
class PartResult:
    """One part of a run (the whole corpus, or the training days / the held-out rest)."""

    name: str
    rows: tuple[int, int]
    produced: int
    labels_fed: int
    produce_s: float
    drain_s: float
    barriers: int
    barrier_s: float  # of produce_s, the time spent waiting for the pipeline at step boundaries
    ingest: dict[str, Any]
    model: str | None  # the model artifact the workers used; None: rules only
    figures: Figures | None = None
    from_ms: int | None = None  # event time the part starts at (a retraining boundary); None: the corpus start


@dataclass
class EvaluationResult:
    run_id: str
    transactions_file: str
    labels_file: str
    corpus_rows: int
    corpus_frauds: int
    unmatched_labels: int
    label_delay_ms: int | None
    rate: float | None
    names: EvalNames
    parts: list[PartResult] = field(default_factory=list)
    figures: Figures | None = None  # the judged figures: the held-out part with train_days, else the whole run
    judged: str = "all"
    elapsed_s: float = 0.0
    kept: bool = False
    model_trained: str | None = None  # the last model trained in the run
    train_label_delay_ms: int | None = None  # the training rows stopped this long before the (last) cutoff
    retrain_every_ms: int | None = None
    models: list[dict[str, Any]] = field(default_factory=list)  # each model trained: cutoff, rows, frauds, …
    dead_lettered: dict[str, int] = field(default_factory=dict)  # rule → corpus rows the contract check refused

    def to_dict(self) -> dict[str, Any]:
        """The `--json` document: the judged figures' keys at the top, then the run and every part."""
        assert self.figures is not None
        out = self.figures.to_dict()
        out["run"] = {
            "run_id": self.run_id,
            "transactions_file": self.transactions_file,
            "labels_file": self.labels_file,
            "corpus_rows": self.corpus_rows,
            "corpus_frauds": self.corpus_frauds,
            "unmatched_labels": self.unmatched_labels,
            "dead_lettered": self.dead_lettered,
            "label_delay_ms": self.label_delay_ms,
            "rate": self.rate,
            "judged": self.judged,
            "elapsed_s": self.elapsed_s,
            "topic": self.names.topic,
            "database": self.names.database,
            "kept": self.kept,
            "model_trained": self.model_trained,
            "train_label_delay_ms": self.train_label_delay_ms,
            "retrain_every_ms": self.retrain_every_ms,
            "models": self.models,
        }
        out["splits"] = {
            p.name: {
                "rows": list(p.rows),
                "produced": p.produced,
                "labels_fed": p.labels_fed,
                "produce_s": p.produce_s,
                "drain_s": p.drain_s,
                "barriers": p.barriers,
                "barrier_s": p.barrier_s,
                "model": p.model,
                "from_ms": p.from_ms,
                "ingest": p.ingest,
                **(p.figures.to_dict() if p.figures is not None else {}),
            }
            for p in self.parts
        }
        return out


def new_names(settings: Settings, run_id: str | None = None) -> EvalNames:
    run = run_id or secrets.token_hex(4)
    run_dir = settings.state_dir / "fraudeval" / run
    embedded = settings.clickhouse.url.startswith("chdb://")
    return EvalNames(
        run_id=run,
        topic=f"eval-{run}.transactions",
        dlq_topic=f"eval-{run}.dlq",
        labels_topic=f"eval-{run}.labels",
        alerts_topic=f"eval-{run}.alerts",
        group_id=f"eval-{run}-ingest",
        database=f"eval_{run}",
        run_dir=run_dir,
        chdb_path=run_dir / "chdb" if embedded else None,
    )


def eval_settings(settings: Settings, names: EvalNames, *, merchants: Path | None, model: Path | None) -> Settings:
    """The configuration of the run: the production one with every name replaced by the run's own."""
    es = settings.model_copy(deep=True)
    es.source, es.root = settings.source, settings.root
    es.pipeline.topic = names.topic
    es.pipeline.dlq_topic = names.dlq_topic
    es.pipeline.group_id = names.group_id
    if merchants is not None:
        es.pipeline.merchants = str(merchants.resolve())
    es.clickhouse.database = names.database
    if names.chdb_path is not None:
        es.clickhouse.url = f"chdb://{names.chdb_path}"
    es.detection.enabled = True
    es.detection.record_scores = True
    es.detection.labels_topic = names.labels_topic
    es.detection.alerts_topic = names.alerts_topic
    es.detection.model = str(model) if model is not None else None
    return es


def check_inputs(settings: Settings, corpus: Corpus, *, merchants: Path | None) -> dict[str, int]:
    """What the contract would dead-letter, refused before anything is created (UsageError, exit 2).

    Returns the rows the workers' contract check will dead-letter, by rule, when they are few
    (at most MAX_DEAD_LETTER_SHARE of the corpus: a simulator's 0.00 amount); more, and the run is
    refused, since its figures would measure the contract rather than the detector.
    """
    from pipelines.contracts.reference import load_reference

    checked = settings.model_copy(deep=True)
    if merchants is not None:
        checked.pipeline.merchants = str(merchants.resolve())
    reference = load_reference(checked)
    # The reference checks first, for their own message and fix; on a few rows only (at most
    # MAX_DEAD_LETTER_SHARE between them and the rest) the contract pass below counts them instead.
    table, limit = corpus.transactions, MAX_DEAD_LETTER_SHARE * len(corpus)
    unknown = unknown_merchants(table, reference.merchants)
    if unknown and settings.pipeline.rules.unknown_merchant == "dead_letter":
        rows = _rows_in(table, "merchant_id", unknown)
        if rows > limit:
            shown = ", ".join(map(repr, unknown[:3]))
            where = merchants or settings.resolve(settings.pipeline.merchants)
            raise UsageError(
                f"{len(unknown)} merchant(s) of the corpus (e.g. {shown}), in {rows:,} of its {len(corpus):,} "
                f"transactions, are not in the merchant dimension {where}; ingest would dead-letter those transactions",
                hint="pass --merchants FILE.csv (columns merchant_id,name,category,segment,country,currency) "
                "covering the corpus's merchants",
            )
    currencies = {str(c) for c in table["currency"].unique().to_pylist()}
    no_rate = sorted(currencies - set(reference.fx_rates))
    if no_rate and (rows := _rows_in(table, "currency", no_rate)) > limit:
        raise UsageError(
            f"{rows:,} of the corpus's {len(corpus):,} transactions have currencies without an FX rate in "
            f"{settings.pipeline.fx_rates}: {', '.join(no_rate)}",
            hint="add their rates to the FX file, or convert the corpus's amounts",
        )
    countries = {str(c) for c in table["country"].unique().to_pylist()}
    unknown_countries = sorted(countries - reference.countries)
    if unknown_countries and (rows := _rows_in(table, "country", unknown_countries)) > limit:
        raise UsageError(
            f"{rows:,} of the corpus's {len(corpus):,} transactions have countries that are not ISO 3166-1 alpha-2 "
            f"codes: {', '.join(unknown_countries[:5])}",
            hint="write country as a two-letter code (e.g. DE)",
        )
    return _check_contract(checked, corpus, reference)


def _rows_in(table: pa.Table, column: str, values: list[str]) -> int:
    """How many of `table`'s rows have one of `values` in `column`."""
    import pyarrow as pa
    import pyarrow.compute as pc

    return int(pc.sum(pc.is_in(table[column], value_set=pa.array(values, pa.string()))).as_py() or 0)


# Per broken rule, how to mend a corpus (the rest: configs/nova.yaml's pipeline.rules say what each checks).
_CONTRACT_FIXES = {
    "event_time_future": "the corpus runs past now: shift its event and label times into the past alike",
    "event_time_past": "shift the corpus's event and label times forward alike, or raise pipeline.rules.max_past_days",
    "transaction_id_uuid": "write transaction_id as a UUID (e.g. uuid5 of the corpus's own id, in both files)",
}


def _check_contract(settings: Settings, corpus: Corpus, reference: ReferenceData) -> dict[str, int]:
    """The workers' own contract check over the whole corpus, now: a row it breaks will be dead-lettered,
    never scored, and count as an unscored transaction (a missed fraud, if it is one) in every figure."""
    from collections import Counter

    from pipelines.contracts.rules import ReferenceSets, check_contract

    sets = ReferenceSets.from_reference(reference)
    now_ms = int(time.time() * 1000)
    broken: Counter[str] = Counter()
    example: dict[str, tuple[int, str]] = {}
    table = corpus.transactions
    for start in range(0, table.num_rows, CONTRACT_CHUNK_ROWS):
        verdict = check_contract(
            table.slice(start, CONTRACT_CHUNK_ROWS), rules=settings.pipeline.rules, sets=sets, now_ms=now_ms
        )
        for row, rule, detail in verdict.rejected:
            broken[rule] += 1
            example.setdefault(rule, (start + row, detail))
    if broken.total() <= MAX_DEAD_LETTER_SHARE * table.num_rows:
        return dict(broken.most_common())
    rules = ", ".join(
        f"{rule} {n:,} (e.g. row {example[rule][0] + 1:,} in event-time order: {example[rule][1]})"
        for rule, n in broken.most_common()
    )
    fixes = [_CONTRACT_FIXES[rule] for rule in broken if rule in _CONTRACT_FIXES]
    raise UsageError(
        f"{broken.total():,} of the corpus's {table.num_rows:,} transactions break the data contract and would be "
        f"dead-lettered, never scored (at most {MAX_DEAD_LETTER_SHARE:.0%} may): {rules}",
        hint="; ".join(fixes) or "fix those rows, or leave them out of both files (configs/nova.yaml pipeline.rules)",
    )


def evaluate(
    *,
    settings: Settings,
    corpus: Corpus,
    transactions_file: str,
    labels_file: str,
    merchants: Path | None = None,
    label_delay_ms: int | None = None,
    rate: float | None = None,
    train_days: float | None = None,
    retrain_every_ms: int | None = DEFAULT_RETRAIN_MS,
    keep: bool = False,
    run_id: str | None = None,
    on_progress: OnProgress | None = None,
) -> EvaluationResult:
    """Replay `corpus` through the pipeline and measure the detector; see the module docstring.

    `retrain_every_ms` None or 0: no retraining (the configured detector throughout); ignored with
    `train_days`, which trains once.
    """
    if rate is not None and rate <= 0:
        raise UsageError(f"--rate {rate:g}: must be positive")
    if retrain_every_ms is not None and retrain_every_ms < 0:
        raise UsageError(f"--retrain-every {retrain_every_ms} ms: must not be negative")
    if label_delay_ms is None and not (corpus.label_time_ms >= 0).any() and corpus.is_fraud.any():
        raise UsageError(
            f"labels file {labels_file!r} has no label_time, so the pipeline would never learn of a fraud",
            hint="pass --label-delay D (e.g. 7d: each fraud becomes known D after its event time)",
        )
    split = _split(corpus, train_days)
    dead_lettered = check_inputs(settings, corpus, merchants=merchants)
    _check_kafka(settings)
    names = new_names(settings, run_id)
    names.run_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    result = EvaluationResult(
        run_id=names.run_id,
        transactions_file=transactions_file,
        labels_file=labels_file,
        corpus_rows=len(corpus),
        corpus_frauds=int(corpus.is_fraud.sum()),
        unmatched_labels=corpus.unmatched_labels,
        label_delay_ms=label_delay_ms,
        rate=rate,
        names=names,
        kept=keep,
        dead_lettered=dead_lettered,
    )
    feed_rows, feed_at = label_feed(corpus, label_delay_ms=label_delay_ms)
    es = eval_settings(settings, names, merchants=merchants, model=_configured_model(settings))
    try:
        _provision(es)
        _warm_up(es, corpus)
        if split is None:
            every = retrain_every_ms or None
            result.retrain_every_ms = every
            plan = retrain_plan(corpus, every, label_delay_ms) if every else []
            replayed = ReplayCache()  # each retraining replays only the rows stored since the last
            starts = [(0, None), *[(row, cutoff) for row, cutoff, _ in plan]]
            for k, (first, cutoff) in enumerate(starts):
                if cutoff is not None:
                    delay = plan[k - 1][2]
                    model_path = names.run_dir / f"model-{k}.bin"
                    if on_progress:
                        on_progress("train model", k - 1, len(plan))
                    report = _train(es, cutoff_ms=cutoff, label_delay_ms=delay, out=model_path, cache=replayed)
                    result.models.append(
                        {
                            "cutoff_ms": cutoff,
                            "label_delay_ms": delay,
                            "rows": report.rows_trained,
                            "frauds": report.frauds,
                            "version": report.version,
                            "rules_weight": report.rules_weight,
                            "alert_threshold": report.alert_threshold,
                            "rows_replayed": report.rows_replayed,
                            "path": str(model_path),
                        }
                    )
                    result.model_trained, result.train_label_delay_ms = str(model_path), delay
                    es = eval_settings(settings, names, merchants=merchants, model=model_path)
                last, until = starts[k + 1] if k + 1 < len(starts) else (len(corpus), None)
                name = "all" if len(starts) == 1 else f"part {k + 1}"
                part = _run_part(
                    es, names, corpus, name, (first, last), feed_rows, feed_at, rate, on_progress,
                    instants=(cutoff, until),
                )  # fmt: skip
                part.from_ms = cutoff
                result.parts.append(part)
            judge_whole = len(starts) > 1
        else:
            first, cutoff_ms = split
            train = _run_part(
                es, names, corpus, "train", (0, first), feed_rows, feed_at, rate, on_progress,
                instants=(None, cutoff_ms),
            )  # fmt: skip
            result.parts.append(train)
            model_path = names.run_dir / "model.bin"
            if on_progress:
                on_progress("train model", 0, 1)
            result.train_label_delay_ms = training_label_delay(corpus, cutoff_ms, label_delay_ms)
            _train(es, cutoff_ms=cutoff_ms, label_delay_ms=result.train_label_delay_ms, out=model_path)
            if on_progress:
                on_progress("train model", 1, 1)
            result.model_trained = str(model_path)
            es = eval_settings(settings, names, merchants=merchants, model=model_path)
            test = _run_part(
                es, names, corpus, "test", (first, len(corpus)), feed_rows, feed_at, rate, on_progress,
                instants=(cutoff_ms, None),
            )  # fmt: skip
            result.parts.append(test)
            judge_whole = False
        outcomes = _read_outcomes(es, names, corpus)
        for part in result.parts:
            mask = np.zeros(len(corpus), dtype=bool)
            mask[part.rows[0] : part.rows[1]] = True
            part.figures = compute_figures(outcomes.subset(mask))
        if judge_whole:  # retrained parts: every row was scored once, by the model of its time
            whole = PartResult(
                name="all", rows=(0, len(corpus)), produced=sum(p.produced for p in result.parts),
                labels_fed=sum(p.labels_fed for p in result.parts), produce_s=sum(p.produce_s for p in result.parts),
                drain_s=sum(p.drain_s for p in result.parts), barriers=sum(p.barriers for p in result.parts),
                barrier_s=sum(p.barrier_s for p in result.parts), ingest={}, model=result.model_trained,
                figures=compute_figures(outcomes),
            )  # fmt: skip
            result.parts.insert(0, whole)
            result.figures, result.judged = whole.figures, "all"
        else:
            judged = result.parts[-1]
            result.figures, result.judged = judged.figures, judged.name
    finally:
        if not keep:
            _cleanup(es, names)
    result.elapsed_s = time.monotonic() - started
    return result


def training_label_delay(corpus: Corpus, cutoff_ms: int, label_delay_ms: int | None) -> int | None:
    """How far before the cutoff the training rows stop: their frauds may not be reported yet.

    `--label-delay` when given; otherwise the longest delay (label_time − event time) among the fraud
    labels known by the cutoff, which is what an operator could know then. Without it the rows of the
    last days train as legitimate although some are frauds whose chargebacks are still to come
    (synccfd, labels 7 days late: model AP 0.58 on the held-out days, against 0.74 leaving them out).
    """
    if label_delay_ms is not None:
        return label_delay_ms
    known = corpus.is_fraud & (corpus.label_time_ms >= 0) & (corpus.label_time_ms <= cutoff_ms)
    if not known.any():
        return None
    return int(np.max(corpus.label_time_ms[known] - corpus.event_time_ms[known]))


def retrain_plan(corpus: Corpus, every_ms: int, label_delay_ms: int | None) -> list[tuple[int, int, int | None]]:
    """(first row from T on, T, training label delay) of each boundary T where a model is trained.

    Candidate boundaries are the UTC midnights of the corpus (or every `every_ms`, if shorter). The
    frauds a model learns from at T are those known by T among the rows up to T minus the training
    label delay; T trains a model when they are at least RETRAIN_MIN_FRAUDS and either no model
    exists yet, they have grown RETRAIN_GROWTH-fold since the last model, or `every_ms` has passed
    since it: often while the labelled history is young, then on the schedule. Measured on synccfd
    (60 days, labels 7 days late): 12 models this way give AP 0.669 on the whole corpus, daily
    retraining (52) 0.678, weekly (7) 0.628. Everything here is the corpus's own facts, known
    before the run.
    """
    t = corpus.event_time_ms
    if not len(t):
        return []
    if label_delay_ms is not None:
        known_at = np.where(corpus.is_fraud, t + label_delay_ms, -1)
    else:
        known_at = np.where(corpus.is_fraud, corpus.label_time_ms, -1)
    step = min(every_ms, DAY_MS)
    plan: list[tuple[int, int, int | None]] = []
    last_at, last_frauds = None, 0
    cutoff = int(t[0] // DAY_MS * DAY_MS) + step
    while cutoff <= int(t[-1]):
        delay = training_label_delay(corpus, cutoff, label_delay_ms)
        if delay is not None:
            frauds = int(((known_at >= 0) & (known_at <= cutoff) & (t <= cutoff - delay)).sum())
            due = last_at is None or frauds >= RETRAIN_GROWTH * last_frauds or cutoff - last_at >= every_ms
            first = int(np.searchsorted(t, cutoff, side="left"))
            if due and frauds >= RETRAIN_MIN_FRAUDS and 0 < first < len(t) and (not plan or first > plan[-1][0]):
                plan.append((first, cutoff, delay))
                last_at, last_frauds = cutoff, frauds
        cutoff += step
    return plan


def _check_kafka(settings: Settings) -> None:
    from pipelines import kafka

    kafka.check_reachable(settings)


def _configured_model(settings: Settings) -> Path | None:
    model = settings.detection.model
    return settings.resolve(model) if model else None


def _split(corpus: Corpus, train_days: float | None) -> tuple[int, int] | None:
    """(first row of the held-out part, the cutoff in epoch ms): `train_days` UTC days after the first day began."""
    if train_days is None:
        return None
    if train_days <= 0:
        raise UsageError(f"--train-days {train_days:g}: must be positive")
    t = corpus.event_time_ms
    cutoff = int(t[0] // DAY_MS * DAY_MS + train_days * DAY_MS)
    split = int(np.searchsorted(t, cutoff, side="left"))
    if split == 0 or split >= len(t):
        days = (int(t[-1]) - int(t[0])) / DAY_MS
        raise UsageError(
            f"--train-days {train_days:g} leaves no transactions on one side: the corpus spans {days:.1f} days",
            hint="pick a number of days inside the corpus's span",
        )
    return split, cutoff


def _provision(es: Settings) -> None:
    """`nova provision --yes` for the run's own names: its database, topics and tables."""
    from pipelines.clickhouse import open_store
    from pipelines.ops.provision import provision

    with open_store(es) as store:
        store.ensure_database()
        provision(settings=es, store=store, dry_run=False)


def _warm_up(es: Settings, corpus: Corpus) -> None:
    """Score a few corpus rows here first, so the detector's compiled kernels are in numba's disk cache.

    The workers then load them instead of compiling during their first batch: seconds of alert
    latency that live traffic, with long-running workers, never sees.
    """
    from pipelines.detect.config import load_detection_config
    from pipelines.detect.engine import Detector
    from pipelines.detect.model import FraudModel

    config = load_detection_config(es.resolve(es.detection.config))
    model = FraudModel.load(es.resolve(es.detection.model)) if es.detection.model else None
    sample = corpus.transactions.slice(0, 64)
    amounts = sample["amount_minor"]  # the worker's Enricher converts; the warm-up only needs the types
    Detector(config, model).process(sample.append_column("amount_reporting_minor", amounts), emit=True)


def _run_part(
    es: Settings,
    names: EvalNames,
    corpus: Corpus,
    name: str,
    rows: tuple[int, int],
    feed_rows: np.ndarray,
    feed_at: np.ndarray,
    rate: float | None,
    on_progress: OnProgress | None,
    *,
    instants: tuple[int | None, int | None] = (None, None),
) -> PartResult:
    """Start the workers, produce the part's rows, wait until everything is committed, stop them.

    `instants`: the event times the part starts and ends at, where models are trained (None: the
    corpus's start or end); the labels known by the end instant are fed within the part.
    """
    from pipelines.ingest import run_ingest
    from pipelines.kafka.offsets import OffsetWatcher

    stop = threading.Event()
    outcome: dict[str, Any] = {}
    owned: set[int] = set()  # partitions the workers report as theirs: assigned, detector state restored

    def on_status(statuses: list[WorkerStatus]) -> None:
        owned.clear()
        for status in statuses:
            if status.state == "running":
                owned.update(status.assigned)

    def ingest() -> None:
        try:
            outcome["report"] = run_ingest(settings=es, workers=1, stop_event=stop, on_status=on_status)
        except BaseException as exc:  # handed to the main thread, which raises it
            outcome["error"] = exc
            stop.set()

    thread = threading.Thread(target=ingest, name="fraudeval-ingest", daemon=True)
    thread.start()
    watcher = OffsetWatcher(es, group_id=names.group_id, topic=names.topic)
    labels_watcher = OffsetWatcher(es, group_id=f"{names.group_id}-labels", topic=names.labels_topic)
    total = rows[1] - rows[0]
    try:
        _wait_assigned(watcher, owned, stop, outcome)
        stage = f"{name}: produce"

        def produced(n: int, _labels: int) -> None:
            if on_progress:
                on_progress(stage, n, total)

        def barrier() -> None:  # see replay: the merchant risk of the next step reads a complete past
            _wait_drained([watcher, labels_watcher], stop, outcome, on_progress=None, stage=stage, poll_s=0.02)

        sent = produce_corpus(
            settings=es,
            corpus=corpus,
            rows=rows,
            feed_rows=feed_rows,
            feed_at_ms=feed_at,
            labels_topic=names.labels_topic,
            rate=rate,
            on_produced=produced,
            barrier=barrier,
            step_ms=int(es.detection.merchant_risk_step_s * 1000),
            from_ms=instants[0],
            until_ms=instants[1],
        )
        drain_started = time.monotonic()
        _wait_drained([watcher, labels_watcher], stop, outcome, on_progress=on_progress, stage=f"{name}: ingest")
        drain_s = time.monotonic() - drain_started
        time.sleep(SETTLE_S)
    finally:
        stop.set()
        thread.join(60)
        watcher.close()
        labels_watcher.close()
    if "error" in outcome:
        raise outcome["error"]
    report: IngestReport | None = outcome.get("report")
    return PartResult(
        name=name,
        rows=rows,
        produced=sent.transactions,
        labels_fed=sent.labels,
        produce_s=sent.elapsed_s,
        drain_s=drain_s,
        barriers=sent.barriers,
        barrier_s=sent.barrier_s,
        ingest=_ingest_summary(report),
        model=es.detection.model,
    )


def _ingest_summary(report: IngestReport | None) -> dict[str, Any]:
    if report is None:
        return {}
    return {
        "events": report.events,
        "rejected": dict(report.rejected),
        "batches": report.batches,
        "elapsed_s": report.elapsed_s,
        "latency_p50_ms": report.latency_p50_ms,
        "latency_p99_ms": report.latency_p99_ms,
    }


def _wait_assigned(watcher: Any, owned: set[int], stop: threading.Event, outcome: dict[str, Any]) -> None:
    """Until the workers own every partition, their detectors restored (a restart rebuilds state from the
    stored rows first): produced earlier, the first events would wait for that, and the alert latency
    would measure the start-up, not the detector."""
    deadline = time.monotonic() + ASSIGN_TIMEOUT_S
    wanted = set(watcher.partitions)
    while time.monotonic() < deadline:
        if "error" in outcome:
            raise outcome["error"]
        with contextlib.suppress(KafkaError):
            if set(owned) >= wanted and watcher.group_state().assigned >= wanted:
                return
        stop.wait(0.2)
    raise NovaError(
        f"the evaluation's ingest workers did not take the partitions of '{watcher.topic}' "
        f"(and restore their detectors) within {ASSIGN_TIMEOUT_S:.0f}s",
        hint="check Kafka (`nova stack status`) and the ingest errors above",
    )


def _wait_drained(
    watchers: list[Any],
    stop: threading.Event,
    outcome: dict[str, Any],
    *,
    on_progress: OnProgress | None,
    stage: str,
    poll_s: float = 0.25,
) -> None:
    """Until every watched group has committed up to its topic's end offsets."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    ends = [w.end_offsets() for w in watchers]
    total = sum(sum(e.values()) for e in ends)
    while True:
        if "error" in outcome:
            raise outcome["error"]
        done = 0
        behind = False
        for w, end in zip(watchers, ends, strict=True):
            committed = w.committed()
            for p, e in end.items():
                c = max(committed.get(p, 0), 0)
                done += min(c, e)
                behind = behind or c < e
        if on_progress:
            on_progress(stage, done, total)
        if not behind:
            return
        if time.monotonic() > deadline:
            raise NovaError(
                f"the evaluation's ingest did not catch up within {DRAIN_TIMEOUT_S:.0f}s "
                f"({done:,} of {total:,} offsets committed)",
                hint="see the ingest errors above; re-run with --keep to inspect the run's topics and tables",
            )
        stop.wait(poll_s)


def _read_outcomes(es: Settings, names: EvalNames, corpus: Corpus) -> Outcomes:
    """Every corpus transaction's score and alert, from the tables the workers wrote."""
    from pipelines.clickhouse import open_store
    from pipelines.detect.alerts import ALERTS_TABLE, SCORES_TABLE

    with open_store(es) as store:
        scores = _fetch(store, f"SELECT transaction_id, score FROM {{db}}.{SCORES_TABLE}", names)
        alerts = _fetch(
            store, f"SELECT transaction_id, rules, alerted_at, produced_at FROM {{db}}.{ALERTS_TABLE}", names
        )
    ids = corpus.transactions["transaction_id"].to_pylist()
    position = {t: i for i, t in enumerate(ids)}
    n = len(ids)
    score = np.full(n, np.nan)
    for tid, s in scores:
        i = position.get(tid)
        if i is not None:
            score[i] = s if np.isnan(score[i]) else max(score[i], s)
    alerted = np.zeros(n, dtype=bool)
    latency = np.full(n, np.nan)
    rules: list[tuple[str, ...]] = [()] * n
    # a batch re-processed after a crash writes its rows again: the first alert of a transaction counts
    for tid, fired, alerted_at, produced_at in alerts:
        i = position.get(tid)
        if i is None:
            continue
        ms = (_epoch_ms(alerted_at) - _epoch_ms(produced_at)) if produced_at is not None else np.nan
        if not alerted[i] or ms < latency[i]:
            latency[i] = ms
            rules[i] = tuple(fired)
        alerted[i] = True
    return Outcomes(
        transaction_id=np.array(ids, dtype=object),
        card_id=np.array(corpus.transactions["card_id"].to_pylist(), dtype=object),
        event_time_ms=corpus.event_time_ms,
        is_fraud=corpus.is_fraud,
        scenario=corpus.scenario,
        score=score,
        alerted=alerted,
        latency_ms=latency,
        rules=rules,
    )


def _epoch_ms(value: Any) -> float:
    """A DateTime64 as the driver returns it (an aware or naive-UTC datetime) → epoch ms."""
    from datetime import UTC, datetime

    if isinstance(value, datetime):
        moment = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return moment.timestamp() * 1000.0
    return float(value)


def _fetch(store: Store, sql: str, names: EvalNames) -> list[tuple[Any, ...]]:
    from pipelines.clickhouse.sql import quote_identifier

    return store.query_rows(sql.replace("{db}", quote_identifier(names.database)))


def _train(
    es: Settings, *, cutoff_ms: int, label_delay_ms: int | None, out: Path, cache: ReplayCache | None = None
) -> TrainReport:
    from pipelines.fraudeval.train import train

    return train(settings=es, until_ms=cutoff_ms, label_delay_ms=label_delay_ms, out=out, cache=cache)


def _cleanup(es: Settings, names: EvalNames) -> None:
    """Drop what the run created; a failure here must not hide the run's own outcome."""
    from pipelines import kafka

    with contextlib.suppress(Exception):  # a broker gone by now: the eval-<run>.* topics stay behind
        kafka.delete_topics(es, names.topics, missing_ok=True)
    if names.chdb_path is not None:
        shutil.rmtree(names.chdb_path, ignore_errors=True)
    else:
        from pipelines.clickhouse import open_store
        from pipelines.clickhouse.sql import quote_identifier

        with contextlib.suppress(NovaError), open_store(es) as store:
            store.execute(f"DROP DATABASE IF EXISTS {quote_identifier(names.database)}")
    with contextlib.suppress(OSError):  # not empty: a model trained by the run stays there
        names.run_dir.rmdir()
