"""`nova ingest`: run the stream workers with a live status."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

import typer

from cli import _common

if TYPE_CHECKING:
    from rich.table import Table

    from pipelines.ingest.models import IngestReport, LatencySummary, WorkerStatus

app = typer.Typer()


def format_live(statuses: list[WorkerStatus], started: float) -> Table:
    from rich.table import Table

    elapsed = max(time.time() - started, 1e-6)
    events = sum(s.events for s in statuses)
    dlq = sum(sum(s.rejected.values()) for s in statuses)
    table = Table(
        title=f"nova ingest — {events:,} events, {events / elapsed:,.0f}/s, {dlq:,} dead-lettered", title_justify="left"
    )
    for col in ("worker", "state", "lag by partition", "lag", "last batch", "insert", "latency p50/p99 (run)", "note"):
        table.add_column(col)
    for s in statuses:
        lag = sum(v for v in s.lag.values() if v > 0) if s.lag else 0
        by_partition = " ".join(f"{p}:{'?' if s.lag.get(p, -1) < 0 else f'{s.lag[p]:,}'}" for p in s.assigned)
        lat = (
            f"{s.latency_p50_ms / 1000:.2f}s / {s.latency_p99_ms / 1000:.2f}s"
            if s.latency_p50_ms is not None and s.latency_p99_ms is not None
            else "-"
        )
        state = {"waiting": "[yellow]waiting[/]", "running": "[green]running[/]"}.get(s.state, s.state)
        table.add_row(
            s.worker.rsplit("-", 1)[-1],
            state,
            by_partition or "-",
            f"{lag:,}",
            f"{s.last_batch_rows:,}",
            f"{s.last_insert_s * 1000:.0f} ms",
            lat,
            s.reason,
        )
    return table


def _seconds(ms: float | None) -> str:
    return "-" if ms is None else f"{ms / 1000:.2f} s"


def _latency_rows(table: Table, title: str, summary: LatencySummary | None) -> None:
    if summary is None:
        return
    table.add_row(f"{title} ({summary.measures}, {summary.events:,} events)", "")
    for label, value in (("p50", summary.p50_ms), ("p99", summary.p99_ms), ("p99.9", summary.p999_ms)):
        table.add_row(f"  {label}", _seconds(value))
    table.add_row("  max", _seconds(summary.max_ms))


def format_report(report: IngestReport) -> Table:
    from rich.table import Table

    table = Table(title="ingest summary", title_justify="left", show_header=False)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("events inserted", f"{report.events:,}")
    table.add_row("dead-lettered", f"{sum(report.rejected.values()):,}")
    for reason, n in sorted(report.rejected.items()):
        table.add_row(f"  {reason}", f"{n:,}")
    table.add_row("batches", f"{report.batches:,}")
    table.add_row("elapsed", f"{report.elapsed_s:.1f} s")
    table.add_row("events/s achieved", f"{report.events_per_s:,.0f}")
    # The whole run, merged over every worker; a replay's event times make the first one large.
    _latency_rows(table, "end-to-end latency", report.latency_event)
    _latency_rows(table, "pipeline latency", report.latency_pipeline)
    if report.alerts:
        table.add_row("fraud alerts", f"{report.alerts:,}")
        _latency_rows(table, "alert latency", report.latency_alert)
        _latency_rows(table, "alert after insert", report.latency_alert_insert)
    if report.recovered_partitions:
        table.add_row("partitions recovered after a crash", f"{report.recovered_partitions}")
        table.add_row("events found already stored", f"{report.skipped_present:,}")
    if report.fenced_partitions:
        table.add_row("partitions fenced (claimed by a successor)", f"{report.fenced_partitions:,}")
        table.add_row("  rows left to the successor", f"{report.fenced_rows:,}")
    if report.duplicates_repaired:
        table.add_row("duplicate copies deleted", f"{report.duplicates_repaired:,}")
    return table


@app.command("ingest")
def ingest_cmd(
    workers: int = typer.Option(1, "--workers", "-w", help="Worker processes in the consumer group (server only)."),
    until_caught_up: bool = typer.Option(
        False, "--until-caught-up", help="Exit 0 once every partition's lag is zero (demo, tests, cron)."
    ),
    metrics_port: int | None = typer.Option(None, "--metrics-port", help="Serve Prometheus metrics on 127.0.0.1:PORT."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No live status; only the summary."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Consume transactions from Kafka into ClickHouse, exactly once, with a dead-letter topic.

    SIGTERM/SIGINT flush the current batch, commit and leave the group. If ClickHouse is
    unavailable the workers pause, retry with backoff and resume by themselves.

    Example: nova ingest --until-caught-up
    """
    from dataclasses import asdict

    from rich.live import Live

    from pipelines.ingest import check_workers, install_stop_handlers, run_ingest

    settings = _common.settings()
    check_workers(settings, workers)
    stop = threading.Event()
    install_stop_handlers(stop)
    metrics = None
    if metrics_port:
        from pipelines.ingest.metrics import Metrics

        metrics = Metrics(metrics_port)
    started = time.time()
    live = None if quiet or json_out else Live(console=_common.err, refresh_per_second=2, transient=True)

    def on_status(statuses: list[WorkerStatus]) -> None:
        if metrics:
            metrics.update(statuses)
        if live:
            live.update(format_live(statuses, started))

    if live:
        live.start()
    try:
        report = run_ingest(
            settings=settings, workers=workers, until_caught_up=until_caught_up, on_status=on_status, stop_event=stop
        )
    finally:
        if live:
            live.stop()
    if json_out:
        _common.print_json(asdict(report))
    else:
        _common.out.print(format_report(report))
