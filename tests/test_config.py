"""Configuration loading: typed models, env overrides, and errors that name file, key and fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.config import load_settings
from pipelines.errors import ConfigError
from tests.conftest import REPO, run_nova


def test_default_config_loads_with_typed_values() -> None:
    settings = load_settings(REPO / "configs" / "nova.yaml", environ={})
    assert settings.kafka.bootstrap_servers == "127.0.0.1:19092"
    assert settings.pipeline.batch_max_rows == 100_000
    assert settings.root == REPO
    assert settings.state_dir == REPO / ".nova"
    assert settings.kafka.client_config()["bootstrap.servers"] == "127.0.0.1:19092"


def test_env_overrides_nested_keys_with_types() -> None:
    settings = load_settings(
        REPO / "configs" / "nova.yaml",
        environ={"NOVA_PIPELINE__BATCH_MAX_ROWS": "500", "NOVA_KAFKA__CLIENT__linger.ms": "5", "NOVA_CONFIG": "x"},
    )
    assert settings.pipeline.batch_max_rows == 500
    assert settings.kafka.client == {"linger.ms": 5}


def test_sasl_settings_reach_librdkafka() -> None:
    settings = load_settings(
        REPO / "configs" / "nova.yaml",
        environ={
            "NOVA_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
            "NOVA_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
            "NOVA_KAFKA__SASL_USERNAME": "svc",
            "NOVA_KAFKA__SASL_PASSWORD": "s3cret",
        },
    )
    conf = settings.kafka.client_config()
    assert conf["security.protocol"] == "SASL_SSL"
    assert conf["sasl.mechanism"] == "SCRAM-SHA-512"
    assert (conf["sasl.username"], conf["sasl.password"]) == ("svc", "s3cret")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("kafka: [unclosed\n", "invalid YAML"),
        ("kafka:\n  bootstrap_server: x:1\n", "unknown key 'kafka.bootstrap_server'"),
        ("pipeline:\n  batch_max_rows: lots\n", "key 'pipeline.batch_max_rows'"),
        ("clickhouse:\n  url: mysql://x\n", "key 'clickhouse.url'"),
        ("pipeline:\n  table: x; DROP DATABASE nova\n", "key 'pipeline.table': 'x; DROP DATABASE nova' is not a plain"),
        ("pipeline:\n  topic: ..\n", "key 'pipeline.topic': '..' is not a valid Kafka name"),
        ("- a\n- b\n", "top level must be a mapping"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "nova.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    assert expected in str(info.value)
    assert str(path) in str(info.value)
    assert info.value.exit_code == 2


def test_bad_env_override_is_named() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(REPO / "configs" / "nova.yaml", environ={"NOVA_STACK__KAFKA_PORT": "ninety"})
    assert "environment NOVA_STACK__KAFKA_PORT" in str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "absent.yaml", environ={})


@pytest.mark.parametrize("command", [["provision", "--dry-run"], ["query", "SELECT 1"], ["stack", "up"]])
def test_cli_bad_config_exits_2_before_touching_anything(tmp_path: Path, command: list[str]) -> None:
    path = tmp_path / "configs" / "nova.yaml"
    path.parent.mkdir()
    path.write_text("stack:\n  state_dir: here\n  kafka_port: not-a-port\n")
    result = run_nova("--config", str(path), *command, expect=2)
    assert "stack.kafka_port" in result.stderr
    assert str(path) in result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "here").exists(), "nothing may be created for a bad config"
