"""`nova fraud`: the stream detector's alerts, its model, and how well it does on labelled traffic."""

from __future__ import annotations

import typer

from cli.fraud_alerts import alerts_cmd
from cli.fraud_eval import evaluate_cmd, train_cmd

app = typer.Typer(help="Fraud detection: recent alerts, train the model, evaluate on labelled traffic.")
app.command("alerts")(alerts_cmd)
app.command("train")(train_cmd)
app.command("evaluate")(evaluate_cmd)
