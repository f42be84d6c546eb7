"""`nova provision` on the real Kafka and both ClickHouse backends: plan, idempotence, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipelines import kafka
from pipelines.config import load_settings
from tests.conftest import run_nova, unique
from tests.pipeline_env import SERVER_URL

pytestmark = pytest.mark.integration


@pytest.fixture(params=["embedded", pytest.param("server", marks=pytest.mark.server)])
def proj(request: pytest.FixtureRequest, project: Path):  # type: ignore[no-untyped-def]
    name = unique("prov")
    env = {
        "NOVA_PIPELINE__TOPIC": f"{name}.tx",
        "NOVA_PIPELINE__DLQ_TOPIC": f"{name}.dlq",
        "NOVA_DETECTION__LABELS_TOPIC": f"{name}.labels",
        "NOVA_DETECTION__ALERTS_TOPIC": f"{name}.alerts",
        "NOVA_CLICKHOUSE__DATABASE": name,
        "NOVA_CLICKHOUSE__URL": f"chdb://{project / 'chdb'}" if request.param == "embedded" else SERVER_URL,
    }
    config = project / "configs" / "nova.yaml"
    yield config, env
    settings = load_settings(config, environ=env)
    try:
        topics = [env[k] for k in env if k.endswith("_TOPIC")]
        kafka.delete_topics(settings, topics, missing_ok=True)
    finally:
        if request.param == "server":
            run_nova("--config", str(config), "query", f"DROP DATABASE IF EXISTS {name}", env=env, expect=None)


def _plan(config: Path, env: dict[str, str], *extra: str, expect: int = 0) -> list[dict]:
    result = run_nova("--config", str(config), "provision", "--json", *extra, env=env, expect=expect)
    return json.loads(result.stdout)


def _edit(path: Path, change) -> None:  # type: ignore[no-untyped-def]
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def test_second_run_reports_everything_unchanged(proj) -> None:  # type: ignore[no-untyped-def]
    config, env = proj
    first = _plan(config, env, "--yes")
    assert {i["action"] for i in first} >= {"create"}
    kinds = [i["kind"] for i in first]
    # topics: transactions, dlq, labels, alerts; one schema subject each but the dlq's
    assert kinds.count("topic") == 4 and kinds.count("schema") == 3
    second = _plan(config, env, "--yes")
    assert [i["action"] for i in second] == ["unchanged"] * len(second)
    settings = load_settings(config, environ=env)
    topics = kafka.describe_topics(settings, [env["NOVA_PIPELINE__TOPIC"]])
    assert topics[env["NOVA_PIPELINE__TOPIC"]].partitions == 6
    assert topics[env["NOVA_PIPELINE__TOPIC"]].config["retention.ms"] == "604800000"


def test_dry_run_changes_nothing(proj) -> None:  # type: ignore[no-untyped-def]
    config, env = proj
    plan = _plan(config, env, "--dry-run")
    assert all(i["action"] == "create" for i in plan if i["kind"] != "schema")
    again = _plan(config, env, "--dry-run")
    assert again == plan
    assert kafka.describe_topics(load_settings(config, environ=env), [env["NOVA_PIPELINE__TOPIC"]]) == {}


def test_fewer_partitions_is_refused_and_nothing_changes(proj) -> None:  # type: ignore[no-untyped-def]
    config, env = proj
    _plan(config, env, "--yes")
    topics_yaml = config.parent / "topics.yaml"
    tables_yaml = config.parent / "clickhouse" / "tables.yaml"

    def shrink(data: dict) -> None:
        data["topics"][0]["partitions"] = 3

    def add_column(data: dict) -> None:
        data["tables"][0]["columns"].append(["note", "Nullable(String)"])

    _edit(topics_yaml, shrink)
    _edit(tables_yaml, add_column)
    result = run_nova("--config", str(config), "provision", "--yes", env=env, expect=1)
    assert "has 6 partitions; topics.yaml asks for 3" in result.stderr
    assert "partitions can't shrink" in result.stderr
    assert "nothing was changed" in result.stderr
    settings = load_settings(config, environ=env)
    assert kafka.describe_topics(settings, [env["NOVA_PIPELINE__TOPIC"]])[env["NOVA_PIPELINE__TOPIC"]].partitions == 6
    columns = run_nova(
        "--config",
        str(config),
        "query",
        "--format",
        "json",
        f"SELECT name FROM system.columns WHERE database = '{env['NOVA_CLICKHOUSE__DATABASE']}' "
        "AND table = 'transactions' AND name = 'note'",
        env=env,
    )
    assert json.loads(columns.stdout) == [], "the refused plan must not have added the column"


def test_growing_partitions_and_adding_a_column_are_applied(proj) -> None:  # type: ignore[no-untyped-def]
    config, env = proj
    _plan(config, env, "--yes")

    def grow(data: dict) -> None:
        data["topics"][0]["partitions"] = 8
        data["topics"][0]["config"]["retention.ms"] = 1209600000

    def add_column(data: dict) -> None:
        data["tables"][0]["columns"].append(["note", "Nullable(String)"])

    _edit(config.parent / "topics.yaml", grow)
    _edit(config.parent / "clickhouse" / "tables.yaml", add_column)
    plan = {(i["kind"], i["name"]): i for i in _plan(config, env, "--yes")}
    assert plan[("topic", env["NOVA_PIPELINE__TOPIC"])]["action"] == "change"
    assert plan[("table", "transactions")]["action"] == "change"
    settings = load_settings(config, environ=env)
    state = kafka.describe_topics(settings, [env["NOVA_PIPELINE__TOPIC"]])[env["NOVA_PIPELINE__TOPIC"]]
    assert state.partitions == 8
    assert state.config["retention.ms"] == "1209600000"
    assert all(i["action"] == "unchanged" for i in _plan(config, env))


def test_lowering_retention_needs_allow_data_loss(proj) -> None:  # type: ignore[no-untyped-def]
    config, env = proj
    _plan(config, env, "--yes")

    def lower(data: dict) -> None:
        data["topics"][0]["config"]["retention.ms"] = 3600000

    _edit(config.parent / "topics.yaml", lower)
    result = run_nova("--config", str(config), "provision", "--yes", env=env, expect=1)
    assert "--allow-data-loss" in result.stderr
    plan = {(i["kind"], i["name"]): i for i in _plan(config, env, "--yes", "--allow-data-loss")}
    assert plan[("topic", env["NOVA_PIPELINE__TOPIC"])]["action"] == "change"
    state = kafka.describe_topics(load_settings(config, environ=env), [env["NOVA_PIPELINE__TOPIC"]])
    assert state[env["NOVA_PIPELINE__TOPIC"]].config["retention.ms"] == "3600000"


def test_provision_without_confirmation_refuses_in_scripts(proj) -> None:  # type: ignore[no-untyped-def]
    config, env = proj
    result = run_nova("--config", str(config), "provision", env=env, expect=2)
    assert "--yes" in result.stderr


def test_a_change_failing_while_applying_says_how_far_provision_got() -> None:
    from pipelines.errors import StoreError
    from pipelines.ops.provision import Plan, PlanItem, apply_plan

    applied: list[str] = []

    def fail() -> None:
        raise StoreError("Code: 241. Memory limit exceeded", hint="give the server more memory")

    plan = Plan(
        [
            PlanItem("topic", "t", "create", apply=lambda: applied.append("t")),
            PlanItem("table", "x", "unchanged"),
            PlanItem("view", "v", "create", apply=fail),
            PlanItem("view", "w", "create", apply=lambda: applied.append("w")),
        ]
    )
    with pytest.raises(StoreError) as info:
        apply_plan(plan)
    assert applied == ["t"]
    assert info.value.message.startswith("view 'v': Code: 241. Memory limit exceeded\n")
    assert "provision stopped after 1 of 3 change(s)" in info.value.message
    assert (
        info.value.hint
        == "give the server more memory; then re-run nova provision: it is idempotent and finishes the rest"
    )
