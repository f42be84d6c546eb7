"""`nova fraud train` and `nova fraud evaluate`: the model from labelled history, the detector measured."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from cli import _common

if TYPE_CHECKING:
    from rich.table import Table

    from pipelines.fraudeval.metrics import Figures
    from pipelines.fraudeval.run import EvaluationResult
    from pipelines.fraudeval.train import TrainReport


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{v * 100:.1f}%"


def _num(v: float | None, digits: int = 3) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def _ms(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:,.0f} ms" if v < 10_000 else f"{v / 1000:,.1f} s" if v < 3_600_000 else f"{v / 3_600_000:,.1f} h"


def format_figures(figures: Figures, *, title: str) -> Table:
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column("figure")
    table.add_column("value", justify="right")
    f = figures
    rows = [
        ("transactions", f"{f.transactions:,}"),
        ("frauds", f"{f.frauds:,}"),
        ("alerts", f"{f.alerts:,}"),
        ("recall", _pct(f.recall)),
        ("precision", _pct(f.precision)),
        ("recall within 10 s of produce", _pct(f.recall_within_10s)),
        ("average precision (score)", _num(f.average_precision)),
        ("ROC AUC (score)", _num(f.roc_auc)),
        (f"card precision@100 per day ({f.days} days)", _num(f.card_precision_at_100)),
        ("alert latency produce→alert p50", _ms(f.alert_latency_ms.p50)),
        ("alert latency produce→alert p99", _ms(f.alert_latency_ms.p99)),
        ("fraud episodes detected", f"{f.episodes_detected:,} of {f.episodes:,}"),
        ("delay to first alert p50", _ms(f.first_alert_delay_ms.p50)),
        ("delay to first alert p99", _ms(f.first_alert_delay_ms.p99)),
    ]
    if f.not_scored:
        rows.append(("not scored (dead-lettered)", f"{f.not_scored:,}"))
    for name, value in rows:
        table.add_row(name, value)
    return table


def format_scenarios(figures: Figures, *, title: str) -> Table:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for col in (
        "scenario",
        "frauds",
        "recall",
        "≤10 s",
        "alerts naming it",
        "precision",
        "rule named",
        "episodes",
        "first alert p50",
    ):
        table.add_column(col, justify="left" if col == "scenario" else "right")
    for name, s in figures.per_scenario.items():
        table.add_row(
            _common.cell(name),
            f"{s.frauds:,}",
            _pct(s.recall),
            _pct(s.recall_within_10s),
            f"{s.attributed_alerts:,}",
            _pct(s.precision),
            _pct(s.rule_named),
            f"{s.episodes_detected:,}/{s.episodes:,}",
            _ms(s.first_alert_delay_ms.p50),
        )
    return table


def _print_result(result: EvaluationResult) -> None:
    for part in result.parts:
        if part.figures is None:
            continue
        label = {"all": "whole corpus", "train": "training days (detector as configured)", "test": "held-out days"}
        model = f", model {Path(part.model).name}" if part.model else ", rules only"
        if part.name == "all" and len(result.parts) > 1:
            every_d = (result.retrain_every_ms or 0) / 86_400_000
            model = f", {len(result.models)} model(s) retrained every {every_d:g} d"
        elif part.from_ms is not None:
            model += f", from {_iso_ms(part.from_ms)}"
        title = f"nova fraud evaluate — {label.get(part.name, part.name)}{model}"
        _common.out.print(format_figures(part.figures, title=title))
        if part.figures.per_scenario:
            _common.out.print(format_scenarios(part.figures, title="per scenario"))
    _common.err.print(
        f"run {result.run_id}: {result.corpus_rows:,} transactions, judged on '{result.judged}', "
        f"{result.elapsed_s:.1f} s"
        + (f"; kept topic {result.names.topic}, database {result.names.database}" if result.kept else "")
    )


def _iso_ms(ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")


def evaluate_cmd(
    transactions: Path = typer.Option(
        ..., "--transactions", help="Corpus transactions: Parquet or CSV with the contract's columns."
    ),
    labels: Path = typer.Option(
        ..., "--labels", help="Ground truth: transaction_id, is_fraud, optionally scenario and label_time."
    ),
    merchants: Path | None = typer.Option(
        None, "--merchants", help="Merchant dimension CSV for a corpus whose merchants are not in configs/reference."
    ),
    label_delay: str | None = typer.Option(
        None,
        "--label-delay",
        help="Each fraud becomes known this long after its event time (e.g. 7d); else label_time.",
    ),
    rate: float | None = typer.Option(
        5000.0, "--rate", help="Transactions produced per second (the alert latencies are measured at this rate)."
    ),
    unpaced: bool = typer.Option(False, "--unpaced", help="Produce as fast as possible (latencies then grow)."),
    train_days: float | None = typer.Option(
        None, "--train-days", help="Train a model on the first D days (labels known by then), judge on the rest."
    ),
    retrain_every: str = typer.Option(
        "7d",
        "--retrain-every",
        help="Retrain the model on the labels known every D of event time, as a scheduled `nova fraud train` "
        "would (0: never; ignored with --train-days).",
    ),
    keep: bool = typer.Option(False, "--keep", help="Keep the run's topics and tables for inspection."),
    json_out: bool = typer.Option(False, "--json", help="Print the figures as JSON."),
    report: Path | None = typer.Option(None, "--report", help="Write a self-contained HTML report to FILE.html."),
) -> None:
    """Replay a labelled corpus through Kafka, the ingest workers' detector and ClickHouse, and measure it.

    The run uses topics, a consumer group and a database of its own (dropped afterwards unless
    --keep), feeds each label back at its label_time in event time, and computes recall,
    precision, recall within 10 s, average precision, ROC AUC, card precision@100 per day, alert
    latency and the delay to each fraud episode's first alert from the alerts and scores the
    workers wrote.

    Example: nova fraud evaluate --transactions tx.parquet --labels labels.parquet --report eval.html
    """
    from pipelines.fraudeval.corpus import load_corpus
    from pipelines.fraudeval.run import evaluate
    from pipelines.instants import parse_duration_ms

    settings = _common.settings()
    delay_ms = parse_duration_ms(label_delay, option="--label-delay") if label_delay is not None else None
    if merchants is not None and not merchants.is_file():
        from pipelines.errors import UsageError

        raise UsageError(f"--merchants {str(merchants)!r} does not exist", hint="pass the merchant dimension CSV")
    corpus = load_corpus(settings, transactions, labels)
    with _common.Progress("rows") as progress:
        result = evaluate(
            settings=settings,
            corpus=corpus,
            transactions_file=str(transactions),
            labels_file=str(labels),
            merchants=merchants,
            label_delay_ms=delay_ms,
            rate=None if unpaced else rate,
            train_days=train_days,
            retrain_every_ms=parse_duration_ms(retrain_every, option="--retrain-every"),
            keep=keep,
            on_progress=lambda stage, done, total: progress.update(stage, done, total),
        )
    if result.dead_lettered:
        broken = ", ".join(f"{rule} {n:,}" for rule, n in result.dead_lettered.items())
        _common.err.print(
            _common.cell(
                f"warning: {sum(result.dead_lettered.values()):,} of the corpus's transactions break the data "
                f"contract ({broken}): dead-lettered, they count as unscored "
                "(`--keep` keeps them on the run's dead-letter topic)"
            )
        )
    if report is not None:
        from pipelines.fraudeval.report import render_report

        report.write_text(render_report(result))
        _common.err.print(_common.cell(f"report written to {report}"))
    if json_out:
        _common.print_json(result.to_dict())
    else:
        _print_result(result)


def format_train(report: TrainReport) -> Table:
    from rich.table import Table

    table = Table(title="nova fraud train", title_justify="left", show_header=False)
    table.add_column("item")
    table.add_column("value", justify="right")
    rows: list[tuple[str, Any]] = [
        ("artifact", report.out),
        ("model version", report.version),
        ("transactions read", f"{report.rows_read:,}"),
        ("training rows", f"{report.rows_trained:,}"),
        ("frauds among them (labels known by the cutoff)", f"{report.frauds:,}"),
        ("cutoff (event and label time)", report.until),
    ]
    v = report.validation or {}
    if "ap_model" in v:
        rows.append(
            (
                f"validation: latest {v['rows']:,} rows, {v['frauds']:,} frauds (AP)",
                f"rules {v['ap_rules']:.3f} · model {v['ap_model']:.3f} · both {v['ap_rules_and_model']:.3f}",
            )
        )
    rows.append(("scores by", "the model alone" if report.rules_weight == 0 else "the rules and the model"))
    if report.alert_threshold is not None:
        recall, precision = v.get("recall_model"), v.get("precision_model")
        rows.append(
            (
                "alerts at (the model's probability)",
                f"{report.alert_threshold:.4f}"
                + (f" · validation recall {recall:.1%}" if recall is not None else "")
                + (f", precision {precision:.1%}" if precision is not None else ""),
            )
        )
    rows.append(("elapsed", f"{report.elapsed_s:.1f} s"))
    for name, value in rows:
        table.add_row(name, _common.cell(value))
    return table


def train_cmd(
    since: str | None = typer.Option(None, "--since", help="Train on this much history before the cutoff (e.g. 30d)."),
    until: str | None = typer.Option(
        None, "--until", help="The training cutoff (a date or ISO instant; default now): labels known by then."
    ),
    label_delay: str | None = typer.Option(
        None,
        "--label-delay",
        help="Leave out the last D before the cutoff (labels not known yet), e.g. 7d.",
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Artifact file (default: detection.model, else .nova/fraud-model.bin)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Train the fraud model from labelled history in ClickHouse (transactions ⋈ fraud_labels).

    Replays the stored transactions through the detector in partition/offset order to compute
    the features it sees live, labels them with the fraud labels known by the cutoff, trains,
    and writes the versioned artifact the ingest workers load (detection.model).

    Example: nova fraud train --since 30d --out models/fraud.bin
    """
    from dataclasses import asdict

    from pipelines.fraudeval.train import train
    from pipelines.instants import epoch_ms, parse_duration_ms, parse_instant

    settings = _common.settings()
    until_ms = epoch_ms(parse_instant(until, option="--until")) if until is not None else None
    since_ms = parse_duration_ms(since, option="--since") if since is not None else None
    delay_ms = parse_duration_ms(label_delay, option="--label-delay") if label_delay is not None else None
    if out is None:
        configured = settings.detection.model
        out = settings.resolve(configured) if configured else settings.state_dir / "fraud-model.bin"
    with _common.Progress("rows") as progress:
        report = train(
            settings=settings,
            until_ms=until_ms,
            history_ms=since_ms,
            label_delay_ms=delay_ms,
            out=out,
            on_progress=lambda stage, done, total: progress.update(stage, done, total),
        )
    if json_out:
        _common.print_json(asdict(report))
    else:
        _common.out.print(format_train(report))
