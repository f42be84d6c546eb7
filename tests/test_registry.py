"""Schema registry: the file registry on temp copies of configs/schemas, the http one's URL handling
and error translation (no registry server runs here; connection refused is tested for real)."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest
import yaml

from pipelines.config import SchemaRegistrySettings, Settings
from pipelines.contracts.registry import (
    FileRegistry,
    HttpRegistry,
    SchemaNotFoundError,
    open_registry,
    split_registry_url,
    translate_registry_error,
)
from pipelines.errors import ConfigError, NovaError, RegistryError, SchemaCompatibilityError

PROJECT = Path(__file__).resolve().parent.parent
SCHEMAS = PROJECT / "configs" / "schemas"
SUBJECT = "transactions-value"


@pytest.fixture
def schema_dir(tmp_path: Path) -> Path:
    """A private copy of configs/schemas with the transactions subject only: tests never touch the committed one."""
    directory = Path(shutil.copytree(SCHEMAS, tmp_path / "schemas"))
    pinned = yaml.safe_load((directory / "registry.yaml").read_text())
    (directory / "registry.yaml").write_text(yaml.safe_dump({"subjects": {SUBJECT: pinned["subjects"][SUBJECT]}}))
    return directory


@pytest.fixture
def v1_text() -> str:
    return (SCHEMAS / "transaction-v1.avsc").read_text()


def variant(v1_text: str, change) -> str:
    schema = json.loads(v1_text)
    change(schema)
    return json.dumps(schema, indent=2)


def add_optional_field(schema: dict) -> None:
    schema["fields"].append({"name": "risk_score", "type": ["null", "double"], "default": None})


def amount_as_string(schema: dict) -> None:
    next(f for f in schema["fields"] if f["name"] == "amount_minor")["type"] = "string"


def drop_merchant(schema: dict) -> None:
    schema["fields"] = [f for f in schema["fields"] if f["name"] != "merchant_id"]


def add_required_field(schema: dict) -> None:
    schema["fields"].append({"name": "risk_score", "type": "double"})


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the committed registry (read only) --------------------------------------------------------


def test_committed_registry_pins_transactions_v1():
    settings = Settings()
    settings.root = PROJECT
    registry = open_registry(settings)
    assert isinstance(registry, FileRegistry)
    assert registry.directory == SCHEMAS
    assert registry.subjects() == [SUBJECT, "transactions.alerts-value", "transactions.labels-value"]
    assert registry.versions(SUBJECT) == [1]
    latest = registry.latest(SUBJECT)
    assert (latest.id, latest.version) == (1, 1)
    assert latest.schema.raw == (SCHEMAS / "transaction-v1.avsc").read_text()
    assert latest.schema.parsed["name"] == "com.novapay.payments.CardTransaction"
    assert registry.get_schema(1) is registry.get_schema(1)  # cached


def test_file_url_is_relative_to_project_root(tmp_path: Path, schema_dir: Path):
    settings = Settings(schema_registry=SchemaRegistrySettings(url="file://schemas"))
    settings.root = tmp_path
    registry = open_registry(settings)
    assert isinstance(registry, FileRegistry)
    assert registry.directory == schema_dir


def test_missing_directory_is_a_config_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="does not exist"):
        FileRegistry(tmp_path / "nope")


def test_unknown_id_and_subject(schema_dir: Path):
    registry = FileRegistry(schema_dir)
    with pytest.raises(SchemaNotFoundError, match="no schema with id 42"):
        registry.get_schema(42)
    with pytest.raises(SchemaNotFoundError, match="subject 'nope-value'"):
        registry.latest("nope-value")
    assert issubclass(SchemaNotFoundError, RegistryError)


# --- register: idempotence, new versions, refusals ----------------------------------------------


def test_register_identical_schema_is_idempotent(schema_dir: Path, v1_text: str):
    registry = FileRegistry(schema_dir)
    before = snapshot(schema_dir)
    reformatted = json.dumps(json.loads(v1_text), indent=None, sort_keys=True)  # same schema, other text
    full_name = json.loads(v1_text)
    full_name["name"] = f"{full_name.pop('namespace')}.{full_name['name']}"  # same name, spelled out
    assert registry.plan_register(SUBJECT, reformatted).action == "unchanged"
    assert registry.register(SUBJECT, v1_text) == 1
    assert registry.register(SUBJECT, reformatted) == 1
    assert registry.register(SUBJECT, json.dumps(full_name)) == 1
    assert snapshot(schema_dir) == before


def test_compatible_new_version_gets_next_id_and_file(schema_dir: Path, v1_text: str):
    registry = FileRegistry(schema_dir)
    v2 = variant(v1_text, add_optional_field)
    plan = registry.plan_register(SUBJECT, v2)
    assert (plan.action, plan.id, plan.version, plan.compatible, plan.file) == (
        "new version",
        2,
        2,
        True,
        "transaction-v2.avsc",
    )
    assert registry.check(SUBJECT, v2) == (True, [])
    assert registry.register(SUBJECT, v2) == 2

    assert (schema_dir / "transaction-v2.avsc").read_text().strip() == v2.strip()
    doc = yaml.safe_load((schema_dir / "registry.yaml").read_text())
    assert doc == {
        "subjects": {
            SUBJECT: [
                {"version": 1, "id": 1, "file": "transaction-v1.avsc"},
                {"version": 2, "id": 2, "file": "transaction-v2.avsc"},
            ]
        }
    }
    reopened = FileRegistry(schema_dir)
    assert reopened.versions(SUBJECT) == [1, 2]
    assert reopened.latest(SUBJECT)[:2] == (2, 2)
    assert "risk_score" in [f["name"] for f in reopened.get_schema(2).parsed["fields"]]
    # Idempotent for every version, not only the latest.
    before = snapshot(schema_dir)
    assert reopened.register(SUBJECT, v2) == 2
    assert reopened.register(SUBJECT, v1_text) == 1
    assert reopened.plan_register(SUBJECT, v1_text).action == "unchanged"
    assert snapshot(schema_dir) == before


def test_incompatible_type_change_is_refused_with_reason(schema_dir: Path, v1_text: str):
    registry = FileRegistry(schema_dir, compatibility="BACKWARD")
    before = snapshot(schema_dir)
    bad = variant(v1_text, amount_as_string)
    plan = registry.plan_register(SUBJECT, bad)
    assert plan.action == "new version" and not plan.compatible
    with pytest.raises(SchemaCompatibilityError) as info:
        registry.register(SUBJECT, bad)
    text = str(info.value)
    assert "subject 'transactions-value'" in text
    assert "not BACKWARD compatible with version 1 (id 1)" in text
    assert "field 'amount_minor'" in text and "string can't read version 1's long" in text
    assert "type_mismatch" in text
    assert info.value.hint and "new subject" in info.value.hint  # the fix
    assert snapshot(schema_dir) == before  # registry.yaml untouched, no new .avsc


def test_backward_refuses_a_new_field_without_default(schema_dir: Path, v1_text: str):
    registry = FileRegistry(schema_dir, compatibility="BACKWARD")
    ok, messages = registry.check(SUBJECT, variant(v1_text, add_required_field))
    assert not ok
    assert messages == [
        "field 'risk_score': the new schema has it without a default, and version 1 doesn't write it "
        "[reader_field_missing_default_value]"
    ]


def test_removing_a_field_without_default_depends_on_the_level(schema_dir: Path, v1_text: str):
    removed = variant(v1_text, drop_merchant)
    # BACKWARD: the new schema simply ignores merchant_id in old data.
    assert FileRegistry(schema_dir, compatibility="BACKWARD").check(SUBJECT, removed) == (True, [])
    for level in ("FORWARD", "FULL"):
        registry = FileRegistry(schema_dir, compatibility=level)
        before = snapshot(schema_dir)
        with pytest.raises(SchemaCompatibilityError, match=r"field 'merchant_id': version 1 has it without a default"):
            registry.register(SUBJECT, removed)
        assert snapshot(schema_dir) == before


def test_none_level_accepts_anything(schema_dir: Path, v1_text: str):
    registry = FileRegistry(schema_dir, compatibility="NONE")
    assert registry.register(SUBJECT, variant(v1_text, amount_as_string)) == 2


def test_transitive_checks_every_version(schema_dir: Path, v1_text: str):
    # v2 drops merchant_id (fine BACKWARD); v3 re-adds it as a long: readable from v2, not from v1.
    registry = FileRegistry(schema_dir, compatibility="BACKWARD")
    registry.register(SUBJECT, variant(v1_text, drop_merchant))

    def readd_as_long(schema: dict) -> None:
        drop_merchant(schema)
        schema["fields"].append({"name": "merchant_id", "type": "long", "default": 0})

    v3 = variant(v1_text, readd_as_long)
    assert registry.check(SUBJECT, v3) == (True, [])
    registry.set_compatibility("BACKWARD_TRANSITIVE")
    ok, messages = registry.check(SUBJECT, v3)
    assert not ok and "version 1's string" in messages[0]


def test_ids_are_global_across_subjects(schema_dir: Path, v1_text: str):
    registry = FileRegistry(schema_dir)
    other = json.dumps({"type": "record", "name": "Alert", "fields": [{"name": "id", "type": "string"}]})
    plan = registry.plan_register("alerts-value", other)
    assert (plan.action, plan.id, plan.version, plan.file) == ("create", 2, 1, "alerts-value-v1.avsc")
    assert registry.register("alerts-value", other) == 2
    assert registry.register(SUBJECT, variant(v1_text, add_optional_field)) == 3
    # The same schema under a new subject keeps its id (as in Confluent's registry).
    assert registry.register("transactions-copy-value", v1_text) == 1
    assert FileRegistry(schema_dir).subjects() == ["alerts-value", "transactions-copy-value", SUBJECT]


def test_other_instances_see_new_versions(schema_dir: Path, v1_text: str):
    worker = FileRegistry(schema_dir)
    FileRegistry(schema_dir).register(SUBJECT, variant(v1_text, add_optional_field))
    assert worker.get_schema(2).parsed["name"] == "com.novapay.payments.CardTransaction"
    assert worker.versions(SUBJECT) == [1, 2]


def test_register_recovers_from_an_orphan_schema_file(schema_dir: Path, v1_text: str):
    v2 = variant(v1_text, add_optional_field)
    (schema_dir / "transaction-v2.avsc").write_text(v2)  # as if a crash hit before registry.yaml
    assert FileRegistry(schema_dir).register(SUBJECT, v2) == 2
    (schema_dir / "transaction-v3.avsc").write_text(v1_text)  # someone else's different schema

    def another(schema: dict) -> None:
        add_optional_field(schema)
        schema["fields"].append({"name": "tier", "type": "int", "default": 0})

    with pytest.raises(RegistryError, match=r"transaction-v3.avsc exists and holds a different schema"):
        FileRegistry(schema_dir).register(SUBJECT, variant(v1_text, another))


def test_invalid_schema_text_is_refused(schema_dir: Path):
    registry = FileRegistry(schema_dir)
    with pytest.raises(RegistryError, match="not valid JSON"):
        registry.register(SUBJECT, "{nope")
    with pytest.raises(RegistryError, match="not a valid Avro schema"):
        registry.register(
            SUBJECT, json.dumps({"type": "record", "name": "X", "fields": [{"name": "a", "type": "nah"}]})
        )


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (
            "subjects:\n  transactions-value:\n  - {version: one, id: 1, file: transaction-v1.avsc}\n",
            r"'subjects.transactions-value\[0\].version' must be a positive integer",
        ),
        (
            "subjects:\n  transactions-value:\n  - {version: 1, id: 1, file: missing.avsc}\n",
            r"'subjects.transactions-value\[0\].file' names .*missing.avsc",
        ),
        (
            "subjects:\n  a-value:\n  - {version: 1, id: 1, file: transaction-v1.avsc}\n"
            "  b-value:\n  - {version: 1, id: 1, file: other.avsc}\n",
            r"'subjects.b-value\[0\].id' 1 is already the id of a different schema",
        ),
        (
            "subjects:\n  transactions-value:\n  - {version: 2, id: 1, file: transaction-v1.avsc}\n"
            "  - {version: 1, id: 2, file: other.avsc}\n",
            r"versions must be listed in increasing order",
        ),
        (
            "subjects:\n  transactions-value:\n  - {version: 1, id: 1, file: transaction-v1.avsc, extra: 1}\n",
            r"unknown key",
        ),
        ("subjects: [\n", r"invalid YAML"),
    ],
)
def test_malformed_registry_yaml_names_file_and_key(schema_dir: Path, content: str, match: str):
    (schema_dir / "other.avsc").write_text(
        json.dumps({"type": "record", "name": "Other", "fields": [{"name": "x", "type": "long"}]})
    )
    (schema_dir / "registry.yaml").write_text(content)
    with pytest.raises(ConfigError, match=match) as info:
        FileRegistry(schema_dir)
    assert "registry.yaml" in str(info.value)


def test_empty_directory_is_an_empty_registry(tmp_path: Path, v1_text: str):
    registry = FileRegistry(tmp_path)
    assert registry.subjects() == []
    assert registry.plan_register(SUBJECT, v1_text).action == "create"
    assert registry.register(SUBJECT, v1_text) == 1
    assert (tmp_path / "transactions-value-v1.avsc").exists()
    assert FileRegistry(tmp_path).latest(SUBJECT)[:2] == (1, 1)


# --- http registry: URL handling and error translation ----------------------------------------


def test_http_url_parsing():
    assert split_registry_url("https://registry.example:8081/") == ("https://registry.example:8081", None)
    assert split_registry_url("http://u%40x:p%3Aw@host:8081/sr/") == ("http://host:8081/sr", "u@x:p:w")
    assert split_registry_url("http://u:p@host", "svc:secret") == ("http://host", "svc:secret")
    for bad in ("http://", "ftp://host", "http://host:notaport"):
        with pytest.raises(ConfigError):
            split_registry_url(bad)
    with pytest.raises(ConfigError, match="user:password"):
        split_registry_url("http://host", "nocolon")


def test_open_registry_picks_http_by_url():
    settings = Settings(
        schema_registry=SchemaRegistrySettings(url="https://u:p@registry.example:8081/", basic_auth=None)
    )
    registry = open_registry(settings)
    assert isinstance(registry, HttpRegistry)
    assert registry.url == "https://registry.example:8081"
    registry.close()


def test_http_connection_refused_is_a_registry_error():
    url = f"http://127.0.0.1:{closed_port()}"
    registry = HttpRegistry(url, max_retries=0, timeout_s=2)
    for call in (
        registry.subjects,
        lambda: registry.get_schema(1),
        lambda: registry.latest(SUBJECT),
        lambda: registry.register(SUBJECT, (SCHEMAS / "transaction-v1.avsc").read_text()),
        lambda: registry.plan_register(SUBJECT, (SCHEMAS / "transaction-v1.avsc").read_text()),
    ):
        with pytest.raises(RegistryError) as info:
            call()
        assert not isinstance(info.value, SchemaCompatibilityError | SchemaNotFoundError)
        assert f"cannot reach schema registry {url}" in str(info.value)
        assert "is it running" in str(info.value)


def test_http_error_translation():
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    def tr(status: int, code: int, text: str = "x") -> NovaError:
        return translate_registry_error(
            SchemaRegistryError(status, code, text), url="http://sr", what="do it", subject="s-value", schema_id=7
        )

    assert isinstance(tr(404, 40401), SchemaNotFoundError) and "subject 's-value' not found" in str(tr(404, 40401))
    assert isinstance(tr(404, 40403), SchemaNotFoundError) and "schema id 7 not found" in str(tr(404, 40403))
    conflict = tr(409, 409, "Schema being registered is incompatible with an earlier schema")
    assert isinstance(conflict, SchemaCompatibilityError) and "incompatible with an earlier schema" in str(conflict)
    assert "basic_auth" in str(tr(401, 40101))
    assert "rejected the schema as invalid" in str(tr(422, 42201))
    server = tr(500, 50001, "boom")
    assert type(server) is RegistryError and "HTTP 500" in str(server)
