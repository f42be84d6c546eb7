"""`nova generate`: produce realistic synthetic card transactions (and a malformed mix) to Kafka.

With `--fraud-rate` the traffic is labelled: cards keep habits, named fraud scenarios are
injected, and the ground truth goes to `--labels-out` (and `--labels-topic`), never into the
events. `--out` writes the transactions to a Parquet file instead of Kafka.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape

from cli import _common
from pipelines.errors import UsageError

if TYPE_CHECKING:
    from rich.table import Table

    from pipelines.synth import GenerateReport
    from pipelines.synth.labelled import LabelledReport

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


def parse_label_delay(text: str) -> tuple[int, int]:
    """`D` (fixed) or `LO..HI` (uniform) durations → (lo_ms, hi_ms)."""
    from pipelines.instants import parse_duration_ms

    lo_text, sep, hi_text = text.partition("..")
    lo = parse_duration_ms(lo_text, option="--label-delay")
    hi = parse_duration_ms(hi_text, option="--label-delay") if sep else lo
    if hi < lo:
        raise UsageError(f"--label-delay {text!r}: the range's end is before its start", hint="e.g. 1d..10d")
    return lo, hi


def format_labelled(report: LabelledReport) -> Table:
    from rich.table import Table

    where = report.out or (report.kafka.topic if report.kafka is not None else "-")
    table = Table(title=f"generated into {escape(where)}", title_justify="left", show_header=False)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("transactions", f"{report.count:,}")
    if report.fraud_rate is not None:
        fraud = sum(s["transactions"] for s in report.scenarios.values())
        table.add_row("fraudulent", f"{fraud:,} ({fraud / max(report.count, 1):.2%})")
        for name, s in report.scenarios.items():
            if s["transactions"]:
                table.add_row(f"  {name}", f"{s['transactions']:,} in {s['episodes']:,} episode(s)")
    if report.kafka is not None:
        table.add_row("messages produced (acknowledged)", f"{report.kafka.produced:,}")
    table.add_row("labels file", escape(report.labels_out or "-"))
    if report.labels_topic is not None:
        table.add_row(f"labels produced to {escape(report.labels_topic)}", f"{report.labels_produced:,}")
        table.add_row("labels not known yet (file only)", f"{report.labels_pending:,}")
    table.add_row("first event time", _iso(report.first_event_ms))
    table.add_row("last event time", _iso(report.last_event_ms))
    table.add_row("seed", str(report.seed))
    table.add_row("elapsed", f"{report.elapsed_s:.2f} s (corpus built in {report.build_s:.2f} s)")
    table.add_row("events/s", f"{report.events_per_s:,.0f}")
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
    fraud_rate: float | None = typer.Option(
        None,
        "--fraud-rate",
        help="Labelled traffic: this fraction of the transactions is fraud (e.g. 0.01; 0: legit only). "
        "Needs --spread-days.",
        show_default=False,
    ),
    scenario: list[str] = typer.Option(
        [],
        "--scenario",
        metavar="NAME=WEIGHT",
        help="Weight of a fraud scenario (card_testing, takeover_burst, impossible_travel, amount_spike, "
        "compromised_merchant); repeatable; scenarios not named get 0. Default: all equally.",
    ),
    labels_out: Path | None = typer.Option(
        None,
        "--labels-out",
        help="Write the ground truth of every transaction to this Parquet file.",
        show_default=False,
    ),
    label_delay: str = typer.Option(
        "1d..10d",
        "--label-delay",
        metavar="D|LO..HI",
        help="When fraud becomes known after the transaction: a duration (7d) or a uniform range (1d..10d).",
    ),
    labels_topic: str | None = typer.Option(
        None,
        "--labels-topic",
        metavar="NAME",
        help="Also produce the fraud labels (Avro Label, Kafka timestamp = label time) to this topic.",
        show_default=False,
    ),
    labels_to_topic: bool = typer.Option(
        False,
        "--labels-to-topic",
        help="Also produce the fraud labels to the detector's topic (detection.labels_topic).",
    ),
    cards: int | None = typer.Option(
        None, "--cards", help="Cards of labelled traffic (default: one per ~60 transactions).", show_default=False
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        help="Write the transactions to this Parquet file (the contract's columns) instead of Kafka.",
        show_default=False,
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Produce realistic synthetic card transactions to Kafka (Avro, Confluent framing, key = card id).

    Merchants are Zipf-distributed, amounts log-normal per merchant category, channels and statuses
    realistic. `--malformed` interleaves an exact number of broken messages at seeded-random
    positions, for testing the dead-letter path; the summary's "valid events" is exactly what a
    correct ingest stores. Every message is acknowledged by Kafka or the command fails (exit 1).

    `--fraud-rate R` makes labelled traffic over `--spread-days`: every card keeps habits (home city,
    amounts, devices, cadence) and fraud episodes of the named scenarios are injected among them;
    the ground truth goes only to `--labels-out` / `--labels-topic`. `--out FILE.parquet` writes
    the transactions to a file (the input of `nova fraud evaluate`) instead of Kafka.

    Example: nova generate --count 100000 --rate 20000 --malformed truncated=10 --malformed rule_violation=5

    Example: nova generate -n 1500000 --spread-days 21 --fraud-rate 0.01 --out tx.parquet --labels-out labels.parquet
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

    if labels_to_topic and labels_topic is None:
        labels_topic = ""
    labelled = fraud_rate is not None or bool(scenario) or labels_out is not None or labels_topic is not None
    if labelled or out is not None:
        from pipelines.synth.fraud import FraudSpec, parse_scenarios
        from pipelines.synth.labelled import default_labels_topic, generate_labelled

        if count is None:
            raise UsageError("labelled traffic and --out need --count", hint="e.g. --count 1000000")
        spec = None
        if labelled:
            if fraud_rate is None:
                raise UsageError("--scenario and the labels options need --fraud-rate", hint="e.g. --fraud-rate 0.01")
            spec = FraudSpec(
                rate=fraud_rate, weights=parse_scenarios(scenario), label_delay_ms=parse_label_delay(label_delay)
            )
        if labels_topic is not None:
            labels_topic = labels_topic or default_labels_topic(settings)
            _common.kafka_name(labels_topic, option="--labels-topic")
        with _common.Progress("msgs") as bars:
            labelled_report = generate_labelled(
                settings=settings, count=count, seed=seed, fraud=spec, start_ms=start_ms, spread_days=spread_days,
                cards=cards, out=out, labels_out=labels_out, labels_topic=labels_topic, topic=topic, rate=rate,
                malformed=mix, on_progress=on_progress if out is None else None,
            )  # fmt: skip
        if json_out:
            _common.print_json(labelled_report.to_dict())
        else:
            _common.out.print(format_labelled(labelled_report))
        return
    with _common.Progress("msgs") as bars:
        report = generate(
            settings=settings, count=count, duration_s=duration, rate=rate, seed=seed, topic=topic,
            malformed=mix, start_ms=start_ms, spread_days=spread_days, on_progress=on_progress,
        )  # fmt: skip
    if json_out:
        _common.print_json(report.to_dict())
    else:
        _common.out.print(format_report(report))
