"""`nova provision` moves an installation from the risk_score ≥ 0.8 alerts view to the detector's alerts table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipelines import kafka
from pipelines.config import load_settings
from tests.conftest import run_nova, unique
from tests.pipeline_env import SERVER_URL

pytestmark = pytest.mark.integration

OLD_ALERTS = {
    "name": "alerts",
    "comment": "Transactions the scoring stage flagged (risk_score ≥ 0.8), fed by a materialized view.",
    "engine": "MergeTree",
    "partition_by": "toYYYYMMDD(event_time)",
    "order_by": ["event_time", "card_id"],
    "columns": [
        ["event_time", "DateTime64(3, 'UTC')"],
        ["transaction_id", "String"],
        ["card_id", "String"],
        ["merchant_id", "LowCardinality(String)"],
        ["amount_reporting_minor", "Int64"],
        ["risk_score", "Float32"],
        ["alerted_at", "DateTime64(3, 'UTC')"],
    ],
}
OLD_VIEW = {
    "name": "alerts_mv",
    "to": "alerts",
    "select": "SELECT event_time, transaction_id, card_id, merchant_id, amount_reporting_minor, risk_score, "
    "_ingested_at AS alerted_at FROM {database}.{table} WHERE risk_score >= 0.8",
}


def _old_layout(spec: dict[str, Any]) -> dict[str, Any]:
    """tables.yaml as it was before the stream detector: alerts a MergeTree fed by alerts_mv."""
    keep = {"alerts", "fraud_labels", "fraud_scores", "detect_state"}
    tables = [t for t in spec["tables"] if t["name"] not in keep]
    return {"tables": [*tables, OLD_ALERTS], "views": [*spec["views"], OLD_VIEW]}


@pytest.mark.parametrize("backend", ["embedded", pytest.param("server", marks=[pytest.mark.server, pytest.mark.long])])
def test_old_alerts_table_and_view_are_replaced_with_their_rows_kept(project: Path, backend: str) -> None:
    name = unique("prov_alerts")
    env = {
        "NOVA_PIPELINE__TOPIC": f"{name}.tx",
        "NOVA_PIPELINE__DLQ_TOPIC": f"{name}.dlq",
        "NOVA_DETECTION__LABELS_TOPIC": f"{name}.labels",
        "NOVA_DETECTION__ALERTS_TOPIC": f"{name}.alerts",
        "NOVA_CLICKHOUSE__DATABASE": name,
        "NOVA_CLICKHOUSE__URL": f"chdb://{project / 'chdb'}" if backend == "embedded" else SERVER_URL,
    }
    config = project / "configs" / "nova.yaml"
    spec_path = project / "configs" / "clickhouse" / "tables.yaml"
    current = spec_path.read_text()
    try:
        spec_path.write_text(yaml.safe_dump(_old_layout(yaml.safe_load(current)), sort_keys=False))
        run_nova("--config", str(config), "provision", "--yes", env=env)
        run_nova(
            "--config", str(config), "query",
            f"INSERT INTO {name}.alerts (event_time, transaction_id, card_id, risk_score, alerted_at) "
            "SELECT toDateTime('2026-01-01 00:00:00'), 'old-alert', 'c1', 0.9, toDateTime('2026-01-01 00:00:01')",
            env=env,
        )  # fmt: skip
        spec_path.write_text(current)
        plan = json.loads(run_nova("--config", str(config), "provision", "--json", "--yes", env=env).stdout)
        by_name = {(i["kind"], i["name"]): i for i in plan}
        assert by_name[("view", "alerts_mv")]["action"] == "change"
        assert by_name[("table", "alerts")]["action"] == "change"
        assert "alerts_risk_score_v1" in by_name[("table", "alerts")]["detail"]
        rows = json.loads(
            run_nova(
                "--config", str(config), "query", "--format", "json",
                f"SELECT name, engine, (SELECT count() FROM {name}.alerts_risk_score_v1) AS old_rows, "
                f"(SELECT count() FROM {name}.alerts) AS new_rows FROM system.tables "
                f"WHERE database = '{name}' AND name IN ('alerts', 'alerts_mv', 'alerts_risk_score_v1') ORDER BY name",
                env=env,
            ).stdout
        )  # fmt: skip
        assert [(r["name"], r["engine"]) for r in rows] == [
            ("alerts", "ReplacingMergeTree"),
            ("alerts_risk_score_v1", "MergeTree"),
        ]
        assert (int(rows[0]["old_rows"]), int(rows[0]["new_rows"])) == (1, 0)
        again = json.loads(run_nova("--config", str(config), "provision", "--json", "--yes", env=env).stdout)
        assert {i["action"] for i in again} == {"unchanged"}
    finally:
        settings = load_settings(config, environ=env)
        kafka.delete_topics(settings, [v for k, v in env.items() if k.endswith("_TOPIC")], missing_ok=True)
        if backend == "server":
            run_nova("--config", str(config), "query", f"DROP DATABASE IF EXISTS {name}", env=env, expect=None)
