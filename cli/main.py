"""The `nova` command: assembles the command groups and turns NovaErrors into exit codes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from typer.core import TyperGroup

from cli import _common
from pipelines.errors import NovaError


class _NovaGroup(TyperGroup):
    """Root group: one place that maps expected errors to a red message and an exit code."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except NovaError as exc:
            # Messages quote user input (`--by 'day,[/x]'`): escaped, it prints as typed.
            _common.err.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False)
            if exc.hint:
                _common.err.print(f"[yellow]hint:[/] {escape(exc.hint)}", highlight=False)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            _common.err.print("[red]interrupted[/]")
            raise typer.Exit(130) from None


app = typer.Typer(
    name="nova",
    cls=_NovaGroup,
    help="Run the real-time card-transaction analytics pipeline: Kafka → stream workers → ClickHouse.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _root(
    config: Path | None = typer.Option(
        None, "--config", "-c", help="Config file (default: $NOVA_CONFIG or configs/nova.yaml).", show_default=False
    ),
) -> None:
    """nova — provision, ingest, verify and load-test the card-transaction pipeline.

    Example: nova stack up && nova provision --yes && nova ingest --until-caught-up
    """
    _common.state.config_path = config
    _common.state._settings = None


def _register() -> None:
    from cli import (
        corpus,
        dlq,
        fraud,
        generate,
        ingest,
        legacy,
        loadtest,
        parity,
        provision,
        query,
        replay,
        stack,
        status,
        tier_migrate,
    )

    app.add_typer(stack.app, name="stack")
    app.add_typer(provision.app)
    app.add_typer(query.app)
    app.add_typer(parity.app)
    app.add_typer(ingest.app)
    app.add_typer(status.app)
    app.add_typer(dlq.app, name="dlq")
    app.add_typer(generate.app)
    app.add_typer(legacy.app, name="legacy")
    app.add_typer(replay.app)
    app.add_typer(loadtest.app)
    app.add_typer(tier_migrate.app, name="tier-migrate")
    app.add_typer(fraud.app, name="fraud")
    app.add_typer(corpus.app, name="corpus")


_register()


def main() -> None:
    app()
