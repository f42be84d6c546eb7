"""`nova generate`: produce realistic synthetic card transactions (and a malformed mix) to Kafka."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

import typer
from rich.markup import escape

from cli import _common
from pipelines.errors import UsageError

if TYPE_CHECKING:
    from rich.table import Table

    from pipelines.synth import GenerateReport

app = typer.Typer()

_KINDS = ("bad_magic_byte", "unknown_schema_id", "truncated", "wrong_type", "rule_violation")


def parse_malformed(items: list[str]) -> dict[str, int]:
    """`KIND=N` options → {kind: n}; a kind given twice adds up."""
    mix: dict[str, int] = {}
    for item in items:
        kind, sep, number = item.partition("=")
        kind = kind.strip().replace("-", "_")
        if not sep or kind not in _KINDS:
            raise UsageError(f"--malformed {item!r}: expected KIND=N with KIND one of {', '.join(_KINDS)}")
        try:
            n = int(number)
        except ValueError:
            raise UsageError(f"--malformed {item!r}: {number!r} is not a whole number") from None
        if n < 0:
            raise UsageError(f"--malformed {item!r}: the count can't be negative")
        mix[kind] = mix.get(kind, 0) + n
    return mix


def _iso(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def format_report(report: GenerateReport) -> Table:
    from rich.table import Table

    table = Table(title=f"generated into {escape(report.topic)}", title_justify="left", show_header=False)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("messages produced (acknowledged)", f"{report.produced:,}")
    table.add_row("valid events", f"{report.valid:,}")
    malformed = sum(report.malformed.values())
    table.add_row("malformed", f"{malformed:,}")
    for kind, n in report.malformed.items():
        if n:
            table.add_row(f"  {kind}", f"{n:,}")
    table.add_row("first event time", _iso(report.first_event_ms))
    table.add_row("last event time", _iso(report.last_event_ms))
    table.add_row("schema id", str(report.schema_id))
    table.add_row("seed", str(report.seed))
    table.add_row("elapsed", f"{report.elapsed_s:.2f} s")
    table.add_row("messages/s", f"{report.events_per_s:,.0f}")
    return table


@app.command("generate")
def generate_cmd(
    count: int | None = typer.Option(None, "--count", "-n", help="Valid events to produce.", show_default=False),
    duration: float | None = typer.Option(
        None, "--duration", help="Produce for this many seconds instead of a count.", show_default=False
    ),
    rate: float | None = typer.Option(
        None,
        "--rate",
        help="At most this many messages per second (default: as fast as possible).",
        show_default=False,
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed gives the same events and ids."),
    topic: str | None = typer.Option(
        None, "--topic", help="Topic to produce to (default: pipeline.topic).", show_default=False
    ),
    malformed: list[str] = typer.Option(
        [],
        "--malformed",
        metavar="KIND=N",
        help=f"Also produce N malformed messages of KIND ({', '.join(_KINDS)}); repeatable.",
    ),
    start: str | None = typer.Option(
        None,
        "--start",
        metavar="ISO-DATE",
        help="Spread event times from this UTC date (needs --spread-days).",
        show_default=False,
    ),
    spread_days: float | None = typer.Option(
        None,
        "--spread-days",
        help="Spread event times over this many days (alone: the last N days).",
        show_default=False,
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Produce realistic synthetic card transactions to Kafka (Avro, Confluent framing, key = card id).

    Merchants are Zipf-distributed, amounts log-normal per merchant category, channels and statuses
    realistic. `--malformed` interleaves an exact number of broken messages at seeded-random
    positions, for testing the dead-letter path; the summary's "valid events" is exactly what a
    correct ingest stores. Every message is acknowledged by Kafka or the command fails (exit 1).

    Example: nova generate --count 100000 --rate 20000 --malformed truncated=10 --malformed rule_violation=5
    """
    from pipelines.instants import epoch_ms, parse_instant
    from pipelines.synth import generate

    if (count is None) == (duration is None):
        raise UsageError("give exactly one of --count or --duration", hint="e.g. nova generate --count 10000")
    if start is not None and spread_days is None:
        raise UsageError("--start needs --spread-days", hint="e.g. --start 2024-05-01 --spread-days 7")
    start_ms = epoch_ms(parse_instant(start, option="--start")) if start is not None else None
    mix = parse_malformed(malformed)
    if topic is not None:
        _common.kafka_name(topic, option="--topic")
    settings = _common.settings()
    total = None if count is None else count + sum(mix.values())

    def on_progress(produced: int, elapsed: float) -> None:
        # By count the bar measures messages; by duration it measures seconds (and counts messages).
        done = produced if total is not None else min(elapsed, duration or elapsed)
        bars.update("generate", done, total if total is not None else duration, count=produced)

    with _common.Progress("msgs") as bars:
        report = generate(
            settings=settings, count=count, duration_s=duration, rate=rate, seed=seed, topic=topic,
            malformed=mix, start_ms=start_ms, spread_days=spread_days, on_progress=on_progress,
        )  # fmt: skip
    if json_out:
        _common.print_json(report.to_dict())
    else:
        _common.out.print(format_report(report))
