"""`nova dlq`: inspect the dead-letter topic, export it for repair, re-publish fixed events."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from cli import _common

app = typer.Typer(help="Inspect and repair the dead-letter topic.", no_args_is_help=True)


@app.command("show")
def show_cmd(
    samples: int = typer.Option(3, "--samples", "-n", help="Sample messages per reason."),
    reason: str | None = typer.Option(None, "--reason", help="Only this reason."),
    json_out: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Counts of dead-lettered events by reason and rule, with samples.

    Example: nova dlq show --samples 5
    """
    from dataclasses import asdict

    from rich.table import Table

    from pipelines.ops.dlq import summarize

    summary = summarize(settings=_common.settings(), samples=samples, reason=reason)
    if json_out:
        _common.print_json(asdict(summary))
        return
    cell = _common.cell
    counts = Table(title=f"dead letters in {escape(summary.topic)}: {summary.unique:,}", title_justify="left")
    counts.add_column("reason")
    counts.add_column("events", justify="right")
    for r, n in sorted(summary.by_reason.items(), key=lambda kv: -kv[1]):
        counts.add_row(cell(r), f"{n:,}")
    for rule, n in sorted(summary.by_rule.items(), key=lambda kv: -kv[1]):
        counts.add_row(cell(f"  rule {rule}"), f"{n:,}")
    _common.out.print(counts)
    if summary.samples:
        sample = Table(title="samples", title_justify="left")
        for col in ("reason", "source", "detail"):
            sample.add_column(col, overflow="fold")
        for s in summary.samples:
            source = f"{s['source_topic']}/{s['source_partition']}@{s['source_offset']}"
            sample.add_row(cell(s["reason"]), cell(source), cell(s["detail"]))
        _common.out.print(sample)


@app.command("export")
def export_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="JSON-lines file to write."),
    reason: str | None = typer.Option(None, "--reason", help="Only this reason."),
) -> None:
    """Write dead letters as JSON lines; decodable ones carry a `record` you can fix.

    Example: nova dlq export --reason rule_violation --out rejects.jsonl
    """
    from pipelines.ops.dlq import export

    n = export(settings=_common.settings(), out=out, reason=reason)
    _common.err.print(f"exported {n:,} dead letter(s) to {escape(str(out))}")


@app.command("republish")
def republish_cmd(
    file: Path | None = typer.Option(None, "--file", "-f", help="Edited export whose `record`s to publish."),
    original: bool = typer.Option(False, "--original", help="Re-send the original bytes (the cause was fixed)."),
    reason: str | None = typer.Option(None, "--reason", help="With --original: only this reason."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Don't ask for confirmation."),
) -> None:
    """Re-publish fixed events to the pipeline topic (each tagged with where it came from).

    Example: nova dlq republish -f fix.jsonl   (after `nova dlq export -o fix.jsonl` and editing it)
    """
    from pipelines.ops.dlq import republish

    settings = _common.settings()
    _common.confirm_or_abort(f"re-publish dead letters to '{settings.pipeline.topic}'?", yes=yes)
    n = republish(settings=settings, file=file, reason=reason, original=original)
    _common.err.print(f"[green]re-published[/] {n:,} event(s) to {escape(settings.pipeline.topic)}")
