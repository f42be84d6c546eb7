"""`nova loadtest`: Locust at k× peak against the running pipeline, judged against `slo:`."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape

from cli import _common
from pipelines.errors import UsageError

if TYPE_CHECKING:
    from rich.console import RenderableType
    from rich.table import Table

    from pipelines.config import Settings, SloSettings
    from pipelines.loadtest.plan import LoadPlan
    from pipelines.loadtest.results import RunResult
    from pipelines.loadtest.run import LoadtestOutcome
    from pipelines.loadtest.verdict import Verdict

app = typer.Typer()

_MARK = {True: "[green]held[/]", False: "[bold red]broke[/]", None: "[dim]not measured[/]"}


def _ms(value: dict[str, float] | None, key: str, *, seconds: bool = False) -> str:
    if not value:
        return "-"
    v = value[key]
    return f"{v / 1000:.2f} s" if seconds else f"{v:,.0f} ms"


def format_live(live: dict[str, Any], slo: SloSettings) -> RenderableType:
    """The live view: phase, rate, lag, the current step's latest percentiles and SLO status."""
    from rich.table import Table

    phase = live["phase"]
    title = f"nova loadtest — {phase}"
    if live.get("step"):
        title += f" · {escape(live['step'])}"
    title += f" · {live['elapsed_s']:.0f}/{live['duration_s']:.0f} s"
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("SLO")
    target = live["target_rate"]
    achieved = live["achieved_rate"]
    ratio_ok = None if not target else achieved >= slo.min_achieved_ratio * target
    table.add_row("send rate (last second)", f"{achieved:,.0f}/s of {target:,.0f}/s", _MARK[ratio_ok])
    table.add_row("sent / failed", f"{live['sent']:,} / {live['failed']:,}", "")
    table.add_row("behind schedule", f"{live['behind']:,}", "")
    table.add_row("ingest lag", "-" if live["lag"] is None else f"{live['lag']:,}", "")
    q = live.get("queryable")
    q_ok = None if not q else q["p99_ms"] <= slo.insight_latency_p99_s * 1000
    table.add_row(
        "produce→queryable p50 / p99",
        f"{_ms(q, 'p50_ms', seconds=True)} / {_ms(q, 'p99_ms', seconds=True)}",
        _MARK[q_ok],
    )
    a = live.get("ack")
    table.add_row("produce→ack p50 / p99", f"{_ms(a, 'p50_ms')} / {_ms(a, 'p99_ms')}", "")
    p95 = live.get("query_p95_ms")
    table.add_row(
        "query p95",
        "-" if p95 is None else f"{p95:,.0f} ms ({live['queries']:,} queries)",
        _MARK[None if p95 is None else p95 <= slo.query_p95_ms],
    )
    if live.get("stopped_early"):
        table.add_row("stopped", escape(live["stopped_early"]), "")
    return table


def format_verdict(verdict: Verdict, result: RunResult) -> Table:
    """One table: every step's checks, the whole run, completeness."""
    from rich.table import Table

    table = Table(title=f"nova loadtest {result.plan.run_id} — {escape(verdict.summary)}", title_justify="left")
    for column in ("step", "check", "allowed", "measured", "result", "note"):
        table.add_column(column, justify="right" if column in ("allowed", "measured") else "left")
    for v in [*verdict.steps, verdict.overall]:
        label = escape(v.label) + ("" if v.status == "ran" else f" [dim]({v.status})[/]")
        if not v.checks:
            table.add_row(label, "[dim]not run[/]", "", "", "", "")
        for i, c in enumerate(v.checks):
            table.add_row(label if i == 0 else "", c.name, c.limit, escape(c.measured), _MARK[c.ok], escape(c.note))
        table.add_section()
    for i, c in enumerate(verdict.completeness):
        table.add_row(
            "completeness" if i == 0 else "", c.name, c.limit, escape(c.measured), _MARK[c.ok], escape(c.note)
        )
    return table


def _status_line(live: dict[str, Any]) -> str:
    q = live.get("queryable")
    return (
        f"{live['phase']} {live['elapsed_s']:.0f}/{live['duration_s']:.0f}s "
        f"rate {live['achieved_rate']:,.0f}/{live['target_rate']:,.0f}/s sent {live['sent']:,} "
        f"lag {live['lag'] if live['lag'] is not None else '-'} "
        f"queryable p99 {_ms(q, 'p99_ms', seconds=True)}"
    )


def _ingest_command(settings_source: Path, workers: int) -> list[str]:
    return [
        sys.executable, "-c", "from cli.main import main; main()",
        "--config", str(settings_source), "ingest", "--json", "--workers", str(workers),
    ]  # fmt: skip


@app.command("loadtest")
def loadtest_cmd(
    rate: float | None = typer.Option(
        None, "--rate", "-r", help="Target messages/s (instead of a multiple of peak).", show_default=False
    ),
    peak_multiplier: float | None = typer.Option(
        None,
        "--peak-multiplier",
        "-k",
        help="Target = peak_events_per_second × K (default: loadtest.peak_multiplier).",
        show_default=False,
    ),
    duration: str | None = typer.Option(
        None,
        "--duration",
        "-d",
        help="Length of the run: 30s, 5m, 1h (default: loadtest.duration_s).",
        show_default=False,
    ),
    profile: str | None = typer.Option(
        None,
        "--profile",
        "-p",
        help="steady | step | spike | find-max (default: loadtest.profile).",
        show_default=False,
    ),
    users: int | None = typer.Option(
        None,
        "--users",
        "-u",
        help="Analyst users running the dashboard queries (default: loadtest.analysts).",
        show_default=False,
    ),
    processes: int | None = typer.Option(
        None,
        "--processes",
        help="Locust worker processes here, one producer each (default: loadtest.processes).",
        show_default=False,
    ),
    queries: bool = typer.Option(
        True, "--queries/--no-queries", help="Run the dashboard queries under load (server backend)."
    ),
    with_ingest: bool = typer.Option(
        True,
        "--with-ingest/--no-with-ingest",
        help="Start `nova ingest` workers for the run, or test ones already running.",
    ),
    report: Path | None = typer.Option(
        None, "--report", help="Write the HTML report to FILE.html.", show_default=False
    ),
    csv_prefix: Path | None = typer.Option(
        None,
        "--csv",
        help="Write PREFIX_timeline.csv, PREFIX_steps.csv and Locust's PREFIX_stats.csv.",
        show_default=False,
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the verdict and the figures as JSON (for CI)."),
    master: bool = typer.Option(
        False, "--master", help="Be Locust's master: wait for --expect-workers workers from other machines."
    ),
    expect_workers: int = typer.Option(
        1, "--expect-workers", help="With --master: worker processes to wait for (one producer each)."
    ),
    worker: bool = typer.Option(
        False, "--worker", help="Be a Locust worker of a `nova loadtest --master` on --master-host."
    ),
    master_host: str | None = typer.Option(
        None, "--master-host", help="With --worker: the master's host.", show_default=False
    ),
    master_port: int = typer.Option(5557, "--master-port", help="Locust's master port (bind port with --master)."),
    prefill_rows: int = typer.Option(
        0, "--prefill-rows", help="First fill the table with N synthetic rows (INSERT … SELECT in ClickHouse)."
    ),
) -> None:
    """Load-test the running pipeline with Locust at k× peak and judge it against `slo:`.

    Producers send Confluent-framed Avro transactions on a rate schedule (steady, step, spike or
    find-max) with the intended send time as event time and Kafka timestamp, so latency is measured
    without coordinated omission; analysts run the dashboard queries (server backend). Measured:
    target vs achieved rate, produce→ack and produce→queryable percentiles (p50/p95/p99/p99.9/max,
    per step and overall), query latency, lag; then every acknowledged event is checked to be in
    ClickHouse exactly once. Exit 0 when every SLO held, 1 when one broke, 2 on bad arguments.

    Example: nova loadtest --profile step --peak-multiplier 3 --duration 3m --report loadtest.html
    """
    from pipelines.loadtest.plan import build_plan, parse_duration
    from pipelines.loadtest.queries import analysts_unavailable

    settings = _common.settings()
    lt = settings.loadtest
    if worker:
        if master or not master_host:
            raise UsageError(
                "--worker needs --master-host HOST (and no --master)", hint="e.g. --worker --master-host 10.0.0.5"
            )
        from pipelines.loadtest.run import run_worker

        raise typer.Exit(
            run_worker(settings=settings, master_host=master_host, master_port=master_port, processes=processes or 1)
        )
    if master_host:
        raise UsageError("--master-host is for --worker", hint="a master binds --master-port on every interface")
    if master and expect_workers < 1:
        raise UsageError(f"--expect-workers must be at least 1, got {expect_workers}")
    n_processes = processes if processes is not None else lt.processes
    if n_processes < 1:
        raise UsageError(f"--processes must be at least 1, got {n_processes}")
    note = analysts_unavailable(settings)
    plan = build_plan(
        settings,
        profile=profile,
        rate=rate,
        peak_multiplier=peak_multiplier,
        duration_s=parse_duration(duration) if duration is not None else None,
        producers=expect_workers if master else n_processes,
        analysts=0 if note else users,
        queries=queries,
    )
    if with_ingest and lt.ingest_workers > 1 and settings.clickhouse.url.startswith("chdb://"):
        raise UsageError(
            f"loadtest.ingest_workers is {lt.ingest_workers}, but the embedded store serves one process",
            hint="set loadtest.ingest_workers to 1, or point clickhouse.url at a server",
        )
    if prefill_rows < 0:
        raise UsageError(f"--prefill-rows must be 0 or more, got {prefill_rows}")
    outcome = _run(
        settings,
        plan,
        n_processes,
        with_ingest,
        csv_prefix,
        master,
        expect_workers,
        master_port,
        json_out,
        prefill_rows,
    )
    from pipelines.loadtest.report import render_report, summary_dict, write_csv

    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(render_report(outcome.result, outcome.verdict, ingest_latency=outcome.ingest_latency))
        _common.err.print(f"report: {escape(str(report))}")
    if csv_prefix is not None:
        for path in write_csv(outcome.result, csv_prefix):
            _common.err.print(f"csv: {escape(str(path))}")
    if json_out:
        data = summary_dict(outcome.result, outcome.verdict, out_dir=outcome.out_dir)
        data["ingest_event_latency_ms"] = outcome.ingest_latency
        _common.print_json(data)
    else:
        _common.out.print(format_verdict(outcome.verdict, outcome.result))
        for notice in outcome.verdict.notices:
            _common.err.print(f"[yellow]notice:[/] {escape(notice)}")
        _common.err.print(f"[dim]run files: {escape(str(outcome.out_dir))}[/]")
    raise typer.Exit(outcome.verdict.exit_code)


def _run(
    settings: Settings,
    plan: LoadPlan,
    processes: int,
    with_ingest: bool,
    csv_prefix: Path | None,
    master: bool,
    expect_workers: int,
    master_port: int,
    quiet: bool,
    prefill_rows: int = 0,
) -> LoadtestOutcome:
    from rich.live import Live

    from pipelines.loadtest.run import Distributed, run_loadtest

    interactive = _common.err.is_terminal and not quiet
    live = Live(console=_common.err, refresh_per_second=2, transient=True) if interactive else None
    last_line = [0.0]

    def on_live(snapshot: dict[str, Any]) -> None:
        if live is not None:
            live.update(format_live(snapshot, settings.slo))
        elif not quiet and time.monotonic() - last_line[0] >= 5:
            last_line[0] = time.monotonic()
            _common.err.print(_status_line(snapshot), highlight=False)

    _common.err.print(
        f"load test {plan.run_id}: {plan.profile} to {plan.target_rate:,.0f}/s for {plan.duration_s:g}s, "
        f"{plan.producers} producer(s), {plan.analysts} analyst(s)"
        + (", starting `nova ingest`" if with_ingest else ""),
        highlight=False,
    )
    if live is not None:
        live.start()
    # SIGTERM (cron's timeout, systemd, kill) as Ctrl-C: the run's `finally` stops the ingest and
    # Locust it started (their own sessions, so no signal reaches them otherwise) instead of orphaning them.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return run_loadtest(
            settings=settings,
            plan=plan,
            processes=processes,
            with_ingest=with_ingest,
            ingest_command=_ingest_command(settings.source, settings.loadtest.ingest_workers),
            csv_prefix=csv_prefix,
            distributed=Distributed(expect_workers, master_port) if master else None,
            prefill_rows=prefill_rows,
            on_live=on_live,
        )
    finally:
        if live is not None:
            live.stop()
