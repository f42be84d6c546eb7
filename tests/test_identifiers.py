"""Names from config and specs: checked on load (exit 2), quoted wherever SQL is rendered, and checked
before `nova provision` changes anything."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipelines import kafka
from pipelines.clickhouse import Capabilities, ddl
from pipelines.clickhouse.sql import quote_identifier
from pipelines.config import load_settings
from pipelines.contracts.specs import TableSpec, ViewSpec, load_tables
from pipelines.errors import ConfigError
from tests.conftest import REPO, run_nova, unique

NOVA_YAML = REPO / "configs" / "nova.yaml"


@pytest.mark.parametrize(
    ("variable", "value", "rule"),
    [
        ("NOVA_PIPELINE__TABLE", "x; DROP DATABASE nova", "^[A-Za-z_][A-Za-z0-9_]*$"),
        ("NOVA_PIPELINE__TABLE", "1st", "^[A-Za-z_][A-Za-z0-9_]*$"),
        ("NOVA_PIPELINE__TABLE", "t" * 64, "at most 63"),
        ("NOVA_CLICKHOUSE__DATABASE", "nova`; DROP TABLE x; --", "^[A-Za-z_][A-Za-z0-9_]*$"),
        ("NOVA_LEGACY__SCHEMA", "legacy-2", "^[A-Za-z_][A-Za-z0-9_]*$"),
        ("NOVA_PIPELINE__TOPIC", "card transactions", "^[a-zA-Z0-9._-]+$"),
        ("NOVA_PIPELINE__TOPIC", "..", "must not be '.' or '..'"),
        ("NOVA_PIPELINE__DLQ_TOPIC", "x" * 250, "at most 249"),
        ("NOVA_PIPELINE__GROUP_ID", "ingest/1", "^[a-zA-Z0-9._-]+$"),
        ("NOVA_PIPELINE__SUBJECT", "transactions value", "^[a-zA-Z0-9._:-]+$"),
    ],
)
def test_bad_names_are_refused_on_load_naming_key_and_rule(variable: str, value: str, rule: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(NOVA_YAML, environ={variable: value})
    key = variable.removeprefix("NOVA_").replace("__", ".").lower()
    message = str(info.value)
    assert f"environment {variable}: key '{key}'" in message
    assert repr(value) in message and rule in message
    assert info.value.exit_code == 2


def test_names_in_the_file_are_checked_too(tmp_path: Path) -> None:
    path = tmp_path / "nova.yaml"
    path.write_text("clickhouse:\n  database: my-db\n")
    with pytest.raises(ConfigError, match=r"nova.yaml: key 'clickhouse.database': 'my-db' is not a plain SQL"):
        load_settings(path, environ={})


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("NOVA_PIPELINE__TABLE", "_tx_2024"),
        ("NOVA_CLICKHOUSE__DATABASE", "Nova_Test"),
        ("NOVA_PIPELINE__TOPIC", "payments.card-tx_v2"),
        ("NOVA_PIPELINE__GROUP_ID", "nova-ingest.eu"),
        ("NOVA_PIPELINE__SUBJECT", "com.novapay:CardTransaction-value"),
    ],
)
def test_ordinary_names_pass(variable: str, value: str) -> None:
    load_settings(NOVA_YAML, environ={variable: value})


def test_quote_identifier_escapes_backslash_and_backtick() -> None:
    assert quote_identifier("a`b\\c") == "`a\\`b\\\\c`"


def test_ddl_quotes_every_identifier_with_the_one_quoter() -> None:
    caps = Capabilities.from_version("26.9.2.1")
    columns = [("c`1", "String"), ("day", "Date")]
    spec = TableSpec(name="t`x", order_by=["day", "cityHash64(`c\\`1`)"], columns=columns, comment="it's")
    sql = ddl.render_create_table(spec, "d`b", caps)
    assert "CREATE TABLE IF NOT EXISTS `d\\`b`.`t\\`x` (\n  `c\\`1` String,\n  `day` Date\n)" in sql
    assert "ORDER BY (`day`, cityHash64(`c\\`1`))" in sql  # a column is quoted, an expression is as written
    assert "COMMENT 'it\\'s'" in sql
    assert ddl.render_add_column("t`x", "d`b", "n`2", "String", "c`1") == (
        "ALTER TABLE `d\\`b`.`t\\`x` ADD COLUMN `n\\`2` String AFTER `c\\`1`"
    )
    view = ViewSpec(name="v`1", to="t`x", select="SELECT 1")
    assert ddl.render_create_view(view, "d`b").startswith(
        "CREATE MATERIALIZED VIEW IF NOT EXISTS `d\\`b`.`v\\`1` TO `d\\`b`.`t\\`x` AS "
    )
    assert ddl.render_create_database("d`b") == "CREATE DATABASE IF NOT EXISTS `d\\`b`"


def test_view_selects_get_quoted_names() -> None:
    names = {"table": "tx", "database": "db", "topic": "t", "dlq_topic": "d"}
    quoted = {**names, "table": "`tx`", "database": "`db`"}
    tables = load_tables(REPO / "configs" / "clickhouse" / "tables.yaml", names=names, sql_names=quoted)
    view = next(v for v in tables.views if v.to == "tx_by_merchant_minute")
    assert "FROM `db`.`tx` GROUP BY" in view.select
    assert view.name == "tx_by_merchant_minute_mv"  # object names stay plain (quoted when rendered)


@pytest.fixture
def proj(project: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    name = unique("ident")
    env = {
        "NOVA_PIPELINE__TOPIC": f"{name}.tx",
        "NOVA_PIPELINE__DLQ_TOPIC": f"{name}.dlq",
        "NOVA_CLICKHOUSE__DATABASE": name,
        "NOVA_CLICKHOUSE__URL": f"chdb://{project / 'chdb'}",
    }
    config = project / "configs" / "nova.yaml"
    yield config, env
    settings = load_settings(config, environ=env)
    kafka.delete_topics(settings, [env["NOVA_PIPELINE__TOPIC"], env["NOVA_PIPELINE__DLQ_TOPIC"]], missing_ok=True)


def _nothing_provisioned(config: Path, env: dict[str, str]) -> None:
    settings = load_settings(config, environ=env)
    topics = [env["NOVA_PIPELINE__TOPIC"], env["NOVA_PIPELINE__DLQ_TOPIC"]]
    assert kafka.describe_topics(settings, topics) == {}, "no topic may be created"
    databases = run_nova("--config", str(config), "query", "--format", "json", "SHOW DATABASES", env=env)
    assert env["NOVA_CLICKHOUSE__DATABASE"] not in {row["name"] for row in json.loads(databases.stdout)}


@pytest.mark.integration
def test_an_injected_table_name_stops_provision_before_anything_is_created(proj: tuple[Path, dict[str, str]]) -> None:
    config, env = proj
    bad = {**env, "NOVA_PIPELINE__TABLE": "x; DROP DATABASE nova"}
    result = run_nova("--config", str(config), "provision", "--yes", env=bad, expect=2)
    assert "environment NOVA_PIPELINE__TABLE: key 'pipeline.table': 'x; DROP DATABASE nova'" in result.stderr
    assert "^[A-Za-z_][A-Za-z0-9_]*$" in result.stderr
    _nothing_provisioned(config, env)


def _edit_tables(config: Path, change: Callable[[dict[str, Any]], None]) -> None:
    path = config.parent / "clickhouse" / "tables.yaml"
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.mark.integration
def test_a_view_that_does_not_parse_is_refused_before_the_first_change(proj: tuple[Path, dict[str, str]]) -> None:
    config, env = proj

    def break_view(data: dict[str, Any]) -> None:
        data["views"][0]["select"] += "; DROP DATABASE nova"

    _edit_tables(config, break_view)
    result = run_nova("--config", str(config), "provision", "--yes", env=env, expect=1)
    assert "provision refused, nothing was changed" in result.stderr
    assert "view 'transactions_by_merchant_minute_mv'" in result.stderr
    assert "does not parse" in result.stderr
    _nothing_provisioned(config, env)


@pytest.mark.integration
def test_a_view_into_a_missing_table_is_refused(proj: tuple[Path, dict[str, str]]) -> None:
    config, env = proj

    def retarget(data: dict[str, Any]) -> None:
        data["views"][0]["to"] = "no_such_table"

    _edit_tables(config, retarget)
    result = run_nova("--config", str(config), "provision", "--yes", env=env, expect=1)
    assert "writes to table 'no_such_table', which is neither in tables.yaml nor in database" in result.stderr
    _nothing_provisioned(config, env)


@pytest.mark.integration
@pytest.mark.parametrize(
    ("where", "name"),
    [("tables.2.name", "al-erts"), ("tables.0.columns.1", "event time"), ("views.0.name", "x;y")],
)
def test_a_bad_name_in_a_spec_exits_2_naming_file_and_key(
    proj: tuple[Path, dict[str, str]], where: str, name: str
) -> None:
    config, env = proj

    def rename(data: dict[str, Any]) -> None:
        section, index, key, *rest = where.split(".")
        node = data[section][int(index)][key]
        if rest:
            node[int(rest[0])][0] = name
        else:
            data[section][int(index)][key] = name

    _edit_tables(config, rename)
    result = run_nova("--config", str(config), "provision", "--dry-run", env=env, expect=2)
    assert f"tables.yaml: key '{where}': {name!r} is not a plain SQL identifier" in result.stderr
