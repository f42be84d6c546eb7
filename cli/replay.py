"""`nova replay`: stream the legacy warehouse's rows (or its exports) into the pipeline, exactly once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from cli import _common

app = typer.Typer()


def format_report(report: Any) -> Any:
    from rich.console import Group
    from rich.table import Table

    summary = Table(title=f"replay job {report.job}", title_justify="left", show_header=False)
    summary.add_column("what", style="bold")
    summary.add_column("value", overflow="fold")
    summary.add_row("source", report.source)
    summary.add_row("range (UTC)", f"[{report.since.isoformat()}, {report.until.isoformat()})")
    summary.add_row("topic", f"{report.topic} (schema id {report.schema_id})")
    if report.resumed_from is not None:
        summary.add_row("resumed", f"after {report.resumed_from[1]}")
    summary.add_row("rows read", f"{report.read:,}")
    summary.add_row("produced", f"{report.produced:,}")
    summary.add_row("rejected", f"{sum(report.rejected.values()):,}")
    summary.add_row("elapsed", f"{report.elapsed_s:.1f} s ({report.rows_per_s:,.0f} rows/s)")
    if report.resumed_from is not None:
        rejected = sum(report.job_rejected.values())
        summary.add_row(
            "job totals", f"{report.job_read:,} read, {report.job_produced:,} produced, {rejected:,} rejected"
        )
    parts: list[Any] = [summary]
    if report.rejected:
        rejects = Table(title=f"rejected rows (all in {report.reject_file})", title_justify="left")
        for col in ("reason", "rows", "example"):
            rejects.add_column(col, overflow="fold")
        for reason, n in report.rejected.most_common():
            samples = report.samples.get(reason) or [{}]
            rejects.add_row(reason, f"{n:,}", f"{samples[0].get('txn_ref', '')}: {samples[0].get('detail', '')}")
        parts.append(rejects)
    return Group(*parts)


@app.command("replay")
def replay_cmd(
    source: str = typer.Option(
        ...,
        "--source",
        "-s",
        help="`legacy` (the configured warehouse), postgresql://…#schema.table, or a path/glob of CSV/Parquet exports.",
    ),
    since: str = typer.Option(..., "--since", help="Start of the range, inclusive (UTC date or ISO time)."),
    until: str = typer.Option(..., "--until", help="End of the range, exclusive (UTC date or ISO time)."),
    rate: float | None = typer.Option(None, "--rate", help="At most this many rows per second (default: no limit)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the same job after its last committed checkpoint."),
    restart: bool = typer.Option(
        False, "--restart", help="Ignore the job's checkpoint and replay the whole range again (re-sends rows)."
    ),
    reject_file: Path | None = typer.Option(
        None, "--reject-file", help="JSON lines of rejected rows (default .nova/replay/JOB.rejects.jsonl)."
    ),
    topic: str | None = typer.Option(None, "--topic", "-t", help="Target topic (default pipeline.topic)."),
    checkpoint_topic: str = typer.Option(
        "nova.replay.checkpoints", "--checkpoint-topic", help="Compacted topic of replay checkpoints."
    ),
    batch: int = typer.Option(20_000, "--batch", min=1, help="Rows per Kafka transaction (and checkpoint)."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Replay legacy card transactions of [--since, --until) into the pipeline's topic, exactly once.

    Rows are read in UTC event-time order, mapped to the Avro contract by configs/legacy/mapping.yaml
    (local time + zone → UTC, major units → minor units, codes → enums) and produced with their original
    event times, keyed by card id. Rows that cannot be mapped are counted by reason and written to the
    reject file. Each batch and its checkpoint commit in one Kafka transaction: after a crash,
    `--resume` continues without producing any row twice (consumers must read read_committed).

    Example: nova replay --source legacy --since 2024-05-01 --until 2024-05-08 --rate 20000
    """
    from pipelines.dualrun.replay import replay
    from pipelines.instants import parse_instant

    settings = _common.settings()
    with _Progress() as on_progress:
        report = replay(
            settings=settings, source=source, since=parse_instant(since, option="--since"),
            until=parse_instant(until, option="--until"), topic=topic, rate=rate, resume=resume, restart=restart,
            reject_file=reject_file, checkpoint_topic=checkpoint_topic, batch_rows=batch,
            on_progress=on_progress, on_notice=lambda m: _common.err.print(f"[yellow]{m}[/]"),
        )  # fmt: skip
    if json_out:
        _common.print_json(report.as_dict())
    else:
        _common.out.print(format_report(report))


class _Progress:
    """Two stages on stderr: sorting file exports (if any), then replaying rows with rows/s and ETA."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.tasks: dict[str, Any] = {}

    def __enter__(self):  # type: ignore[no-untyped-def]
        if not _common.err.is_terminal:
            return None
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            ProgressColumn,
            TaskProgressColumn,
            TextColumn,
            TimeRemainingColumn,
        )
        from rich.text import Text

        class RateColumn(ProgressColumn):
            def render(self, task: Any) -> Text:
                return Text(f"{task.speed or 0:>9,.0f} rows/s")

        self.bar = Progress(
            TextColumn("[bold]{task.description:>6}[/]"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
            RateColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=_common.err,
        )  # fmt: skip
        self.bar.start()
        return self._update

    def _update(self, stage: str, done: int, total: int | None) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.bar.add_task(stage, total=total)
        self.bar.update(self.tasks[stage], completed=done, total=total)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
