"""`nova stack`: the local Kafka, PostgreSQL and clickhouse-server, started and stopped by pid."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from cli._common import cell, err, out, print_json, settings
from pipelines.errors import UsageError

if TYPE_CHECKING:
    from pipelines.stack import ServiceStatus

app = typer.Typer(
    name="stack",
    help="The local stack (Kafka in KRaft mode, PostgreSQL, optional clickhouse-server) under .nova/.",
    no_args_is_help=True,
)

_STATE_STYLE = {
    "healthy": "green",
    "unhealthy": "bold red",
    "stopped": "yellow",
    "embedded": "cyan",
    "external": "cyan",
}


def _short(path: Path | None, root: Path | None) -> str:
    if path is None:
        return "-"
    if root is not None and path.is_relative_to(root):
        return str(path.relative_to(root))
    return str(path)


def format_status_table(rows: Sequence[ServiceStatus], *, root: Path | None = None) -> Table:
    """service | state | pid | address | data dir | detail (paths under `root` shown relative to it)."""
    table = Table(show_edge=False, pad_edge=False)
    for column in ("service", "state", "pid", "address", "data dir", "detail"):
        table.add_column(column, overflow="fold", no_wrap=column in ("service", "state", "pid"))
    for row in rows:
        style = _STATE_STYLE.get(row.state, "")
        if row.state == "stopped" and not row.expected:
            style = "dim"
        detail = row.detail.replace(str(row.data_dir), _short(row.data_dir, root)) if row.data_dir else row.detail
        table.add_row(
            cell(row.name),
            Text(row.state, style=style),
            str(row.pid) if row.pid is not None else "-",
            cell(row.address),
            cell(_short(row.data_dir, root)),
            cell(detail),
        )
    return table


@contextmanager
def _progress(first: str) -> Iterator[Callable[[str], None]]:
    """A spinner on stderr; without a terminal (CI logs) each step is printed on its own line."""
    if err.is_terminal:
        with err.status(first) as status:
            yield lambda message: status.update(escape(message))
    else:
        yield lambda message: err.print(f"[dim]{escape(message)}[/]")


def _optional_services(names: Sequence[str], option: str) -> set[str]:
    from pipelines.stack import OPTIONAL_SERVICES

    unknown = sorted(set(names) - set(OPTIONAL_SERVICES))
    if unknown:
        raise UsageError(
            f"{option} {unknown[0]!r}: not an optional service", hint=f"choose {', '.join(OPTIONAL_SERVICES)}"
        )
    return set(names)


@app.command()
def up(
    with_: list[str] = typer.Option(
        [],
        "--with",
        metavar="SERVICE",
        help="Also start an optional service (clickhouse-server, seaweedfs, clickhouse-cluster), and remember it.",
    ),
    without: list[str] = typer.Option(
        [], "--without", metavar="SERVICE", help="Stop an optional service and forget an earlier --with."
    ),
) -> None:
    """Start the stack and return when every service is healthy; idempotent (running services are kept).

    The first run fetches Kafka's jars with Maven and initialises data; later runs take seconds.

    Example: nova stack up --with clickhouse-server
    """
    from pipelines.stack import stack_up

    wanted, unwanted = _optional_services(with_, "--with"), _optional_services(without, "--without")
    if wanted & unwanted:
        raise UsageError(f"both --with and --without {sorted(wanted & unwanted)[0]}", hint="pick one")

    def choice(service: str) -> bool | None:
        return True if service in wanted else False if service in unwanted else None

    started = time.monotonic()
    with _progress("starting the stack…") as progress:
        rows = stack_up(
            settings=settings(),
            with_clickhouse_server=choice("clickhouse-server"),
            with_seaweedfs=choice("seaweedfs"),
            with_clickhouse_cluster=choice("clickhouse-cluster"),
            progress=progress,
        )
    out.print(format_status_table(rows, root=settings().root))
    err.print(f"[green]stack up[/] in {time.monotonic() - started:.1f}s")


@app.command()
def down() -> None:
    """Stop every stack service by pid (SIGTERM, SIGKILL after a timeout); data is kept.

    Example: nova stack down
    """
    from pipelines.stack import stack_down

    started = time.monotonic()
    with _progress("stopping the stack…") as progress:
        rows = stack_down(settings=settings(), progress=progress)
    out.print(format_status_table(rows, root=settings().root))
    kept = escape(str(settings().state_dir))
    err.print(f"[green]stack down[/] in {time.monotonic() - started:.1f}s; data kept in {kept}")


@app.command()
def status(json_: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """Show each service: state (healthy / unhealthy / stopped), pid, address, data dir.

    Exits 1 when a service the stack should run (kafka, postgres, and clickhouse-server or the
    clickhouse-cluster hosts once requested with --with) is not healthy, so scripts can wait on it.
    Each cluster host's detail shows its replica lag (system.replicas: absolute_delay, queue_size).

    Example: nova stack status --json
    """
    from pipelines.stack import stack_status

    rows = stack_status(settings=settings())
    if json_:
        print_json([row.to_dict() for row in rows])
    else:
        out.print(format_status_table(rows, root=settings().root))
    failing = [row for row in rows if not row.ok]
    if failing:
        names = ", ".join(f"{row.name} ({row.state})" for row in failing)
        err.print(f"[red]not healthy:[/] {escape(names)}; start with nova stack up, or see nova stack logs SERVICE")
        raise typer.Exit(1)


@app.command()
def logs(
    service: str = typer.Argument(
        ..., help="kafka, postgres, clickhouse-server, seaweedfs, zookeeper or a cluster host (clickhouse-s1r1…)."
    ),
    lines: int = typer.Option(50, "--lines", "-n", min=0, help="How many lines from the end."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines (Ctrl-C to stop)."),
) -> None:
    """Print the end of a service's log, optionally following it.

    Example: nova stack logs kafka -n 100 -f
    """
    from pipelines.stack import follow_log, read_log_tail, service_log

    path = service_log(settings=settings(), service=service)
    err.print(f"[dim]{escape(str(path))}[/]")
    _print_lines(read_log_tail(path, lines=lines))
    if follow:
        try:
            for line in follow_log(path):
                _print_lines([line])
        except KeyboardInterrupt:
            raise typer.Exit(0) from None


def _print_lines(lines: Sequence[Any]) -> None:
    for line in lines:
        out.print(line, markup=False, highlight=False)
