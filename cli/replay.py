"""`nova replay`: stream the legacy warehouse's rows (or its exports) into the pipeline, exactly once."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape

from cli import _common

if TYPE_CHECKING:
    from rich.console import Group, RenderableType

    from pipelines.dualrun.replay import ReplayReport

app = typer.Typer()


def format_report(report: ReplayReport) -> Group:
    from rich.console import Group
    from rich.table import Table

    cell = _common.cell
    summary = Table(title=f"replay job {escape(report.job)}", title_justify="left", show_header=False)
    summary.add_column("what", style="bold")
    summary.add_column("value", overflow="fold")
    summary.add_row("source", cell(report.source))
    summary.add_row("range (UTC)", cell(f"[{report.since.isoformat()}, {report.until.isoformat()})"))
    summary.add_row("topic", cell(f"{report.topic} (schema id {report.schema_id})"))
    if report.resumed_from is not None:
        summary.add_row("resumed", cell(f"after {report.resumed_from[1]}"))
    summary.add_row("rows read", f"{report.read:,}")
    summary.add_row("produced", f"{report.produced:,}")
    summary.add_row("rejected", f"{sum(report.rejected.values()):,}")
    summary.add_row("elapsed", f"{report.elapsed_s:.1f} s ({report.rows_per_s:,.0f} rows/s)")
    if report.resumed_from is not None:
        rejected = sum(report.job_rejected.values())
        summary.add_row(
            "job totals", f"{report.job_read:,} read, {report.job_produced:,} produced, {rejected:,} rejected"
        )
    parts: list[RenderableType] = [summary]
    if report.rejected:
        rejects = Table(title=f"rejected rows (all in {escape(str(report.reject_file))})", title_justify="left")
        for col in ("reason", "rows", "example"):
            rejects.add_column(col, overflow="fold")
        for reason, n in report.rejected.most_common():
            samples = report.samples.get(reason) or [{}]
            example = f"{samples[0].get('txn_ref', '')}: {samples[0].get('detail', '')}"
            rejects.add_row(cell(reason), f"{n:,}", cell(example))
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

    if topic is not None:
        _common.kafka_name(topic, option="--topic")
    _common.kafka_name(checkpoint_topic, option="--checkpoint-topic")
    settings = _common.settings()
    # Two stages: sorting file exports (if any), then replaying rows.
    with _common.Progress("rows") as bars:
        report = replay(
            settings=settings, source=source, since=parse_instant(since, option="--since"),
            until=parse_instant(until, option="--until"), topic=topic, rate=rate, resume=resume, restart=restart,
            reject_file=reject_file, checkpoint_topic=checkpoint_topic, batch_rows=batch,
            on_progress=bars.update, on_notice=lambda m: _common.err.print(f"[yellow]{escape(m)}[/]"),
        )  # fmt: skip
    if json_out:
        _common.print_json(report.as_dict())
    else:
        _common.out.print(format_report(report))
