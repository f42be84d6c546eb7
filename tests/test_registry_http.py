"""HttpRegistry against a real Confluent-compatible registry server: Apicurio Registry's ``ccompat`` API.

Karapace (the first choice: Aiven's Confluent-compatible registry) is not on PyPI, and Confluent's own
Schema Registry is not on Maven Central; Apicurio Registry is (``io.apicurio:apicurio-registry-app``,
a self-contained Quarkus runner with in-memory H2 storage, Java 17). The fixture fetches it once with
Maven into ~/.cache/nova (the way the stack fetches Kafka's jars), starts it on a free loopback port
and stops it after the module. Its default compatibility is NONE; the fixture sets BACKWARD, which is
Confluent's default.

The same behaviour as tests/test_registry.py's file registry: idempotent register with one global id,
lookups, a compatible v2, a refused incompatible change, plan_register, the Decoder on the id the
server assigned, and `nova provision` registering the pinned contract into the http registry.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines import kafka
from pipelines.config import load_settings
from pipelines.contracts.codec import Decoder, Encoder
from pipelines.contracts.registry import HttpRegistry, SchemaNotFoundError
from pipelines.errors import SchemaCompatibilityError
from tests.conftest import run_nova, unique
from tests.test_avro_codec import transaction

pytestmark = pytest.mark.integration

APICURIO_VERSION = "3.0.9"  # the last line that runs on Java 17 (3.1+ needs Java 21, not in Debian 12)
ARTIFACT = f"io.apicurio:apicurio-registry-app:{APICURIO_VERSION}:tar.gz:all"
RUNNER = f"apicurio-registry-app-{APICURIO_VERSION}-runner.jar"
API = "/apis/ccompat/v7"  # the Confluent-compatible API
START_TIMEOUT_S = 60
PROJECT = Path(__file__).resolve().parent.parent
V1 = (PROJECT / "configs" / "schemas" / "transaction-v1.avsc").read_text()


def _cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "nova" / f"apicurio-{APICURIO_VERSION}"


def _install() -> Path:
    """The runner jar, fetched from Maven Central and unpacked on first use (then reused)."""
    from pipelines.stack import _proc

    home = _cache_dir()
    jar = home / RUNNER
    if jar.exists():
        return jar
    home.parent.mkdir(parents=True, exist_ok=True)
    with _proc.file_lock(home.parent / f"apicurio-{APICURIO_VERSION}.lock"):
        if jar.exists():  # installed by whoever held the lock
            return jar
        log = home.parent / "apicurio-install.log"
        _proc.ensure_apt_packages(
            "java", shutil.which("java") is not None, ["openjdk-17-jre-headless"], log=log, progress=None
        )
        _proc.ensure_apt_packages("maven", shutil.which("mvn") is not None, ["maven"], log=log, progress=None)
        with tempfile.TemporaryDirectory(dir=home.parent) as tmp:
            with open(log, "ab") as fh:
                result = subprocess.run(
                    ["mvn", "-B", "-q", "dependency:copy", f"-Dartifact={ARTIFACT}", f"-DoutputDirectory={tmp}"],
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    check=False,
                )
            archives = list(Path(tmp).glob("*.tar.gz"))
            if result.returncode != 0 or not archives:
                pytest.fail(f"Maven could not fetch {ARTIFACT}; see {log}")
            staging = Path(tmp) / "unpacked"
            with tarfile.open(archives[0]) as tar:
                tar.extractall(staging, filter="data")
            if not (staging / RUNNER).exists():
                pytest.fail(f"{archives[0].name} has no {RUNNER}")
            shutil.rmtree(home, ignore_errors=True)
            staging.rename(home)  # atomic: the install is complete or absent
    return jar


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/subjects", timeout=1) as resp:
            return resp.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def registry_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    jar = _install()
    port = _free_port()
    log_path = tmp_path_factory.mktemp("apicurio") / "server.log"
    url = f"http://127.0.0.1:{port}{API}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                "java",
                "-Xmx512m",
                "-XX:TieredStopAtLevel=1",  # starts faster; plenty for a test
                f"-Dquarkus.http.port={port}",
                "-Dquarkus.http.host=127.0.0.1",
                "-jar",
                str(jar),
            ],
            cwd=jar.parent,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _answers(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
                pytest.fail(f"Apicurio Registry did not answer on {url} (exit {proc.poll()}):\n{tail}")
            time.sleep(0.2)
        with HttpRegistry(url) as admin:
            admin.set_compatibility("BACKWARD")  # Confluent's default; Apicurio's is NONE
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def registry(registry_url: str) -> Iterator[HttpRegistry]:
    with HttpRegistry(registry_url, max_retries=0, timeout_s=5) as reg:
        yield reg  # type: ignore[misc]


@pytest.fixture
def subject() -> str:
    """A subject of its own per test (the server lives for the module)."""
    return unique("tx").replace("_", "-") + "-value"


def variant(change) -> str:  # type: ignore[no-untyped-def]
    schema = json.loads(V1)
    change(schema)
    return json.dumps(schema, indent=2)


def add_optional_field(schema: dict) -> None:
    schema["fields"].append({"name": "risk_score", "type": ["null", "double"], "default": None})


def add_required_field(schema: dict) -> None:
    schema["fields"].append({"name": "risk_score", "type": "double"})


def amount_as_string(schema: dict) -> None:
    next(f for f in schema["fields"] if f["name"] == "amount_minor")["type"] = "string"


# --- the registry API ---------------------------------------------------------------------------


def test_register_is_idempotent_with_one_global_id(registry: HttpRegistry, subject: str):
    plan = registry.plan_register(subject, V1)
    assert (plan.action, plan.version, plan.compatible) == ("create", 1, True)
    schema_id = registry.register(subject, V1)
    reformatted = json.dumps(json.loads(V1), indent=None, sort_keys=True)  # same schema, other text
    assert registry.register(subject, reformatted) == schema_id
    assert registry.register(subject, V1) == schema_id
    assert registry.versions(subject) == [1]
    plan = registry.plan_register(subject, reformatted)
    assert (plan.action, plan.id, plan.version) == ("unchanged", schema_id, 1)
    # The same schema under another subject keeps its id (as in Confluent's registry).
    assert registry.register(subject.replace("-value", "-copy-value"), V1) == schema_id


def test_lookups(registry: HttpRegistry, subject: str):
    schema_id = registry.register(subject, V1)
    assert subject in registry.subjects()
    assert registry.subjects() == sorted(registry.subjects())
    latest = registry.latest(subject)
    assert (latest.id, latest.version) == (schema_id, 1)
    assert latest.schema.parsed["name"] == "com.novapay.payments.CardTransaction"
    schema = registry.get_schema(schema_id)
    assert json.loads(schema.raw)["name"] in ("CardTransaction", "com.novapay.payments.CardTransaction")
    assert registry.get_schema(schema_id) is schema  # cached
    with pytest.raises(SchemaNotFoundError, match="schema id 987654 not found"):
        registry.get_schema(987654)
    with pytest.raises(SchemaNotFoundError, match="subject 'nope-value' not found"):
        registry.latest("nope-value")
    with pytest.raises(SchemaNotFoundError, match="subject 'nope-value' not found"):
        registry.versions("nope-value")


def test_compatible_v2_is_a_new_version(registry: HttpRegistry, subject: str):
    v1_id = registry.register(subject, V1)
    v2 = variant(add_optional_field)
    assert registry.check(subject, v2) == (True, [])
    plan = registry.plan_register(subject, v2)
    assert (plan.action, plan.id, plan.version, plan.compatible) == ("new version", None, 2, True)
    v2_id = registry.register(subject, v2)
    assert v2_id != v1_id
    assert registry.versions(subject) == [1, 2]
    assert registry.latest(subject)[:2] == (v2_id, 2)
    assert "risk_score" in [f["name"] for f in registry.get_schema(v2_id).parsed["fields"]]
    # Idempotent for every version, not only the latest.
    assert registry.register(subject, V1) == v1_id
    assert registry.plan_register(subject, V1).action == "unchanged"
    assert registry.versions(subject) == [1, 2]


def test_incompatible_change_is_refused_naming_the_subject(registry: HttpRegistry, subject: str):
    registry.register(subject, V1)
    assert registry.compatibility(subject) == "BACKWARD"
    bad = variant(amount_as_string)
    plan = registry.plan_register(subject, bad)
    assert plan.action == "new version" and not plan.compatible
    assert any("amount_minor" in m for m in plan.messages), plan.messages
    ok, messages = registry.check(subject, bad)
    assert not ok and "field 'amount_minor'" in messages[0]
    with pytest.raises(SchemaCompatibilityError) as info:
        registry.register(subject, bad)
    text = str(info.value)
    assert f"subject '{subject}'" in text and "incompatible" in text
    assert "field 'amount_minor'" in text and "string can't read version 1's long" in text
    assert registry.versions(subject) == [1]
    # A subject's own level wins over the default: a new field without a default is refused
    # BACKWARD (the new schema can't read old data) and accepted FORWARD (old readers skip it).
    # (Not NONE: Apicurio stores a subject's NONE as "no rule of its own", so the default applies.)
    required = variant(add_required_field)
    assert not registry.check(subject, required)[0]
    registry.set_compatibility("FORWARD", subject)
    assert registry.compatibility(subject) == "FORWARD"
    assert registry.compatibility() == "BACKWARD"
    assert registry.check(subject, required) == (True, [])
    registry.register(subject, required)
    assert registry.versions(subject) == [1, 2]


def test_decoder_reads_a_message_with_the_server_assigned_id(registry: HttpRegistry, subject: str):
    registry.register(subject, V1)
    v2_id = registry.register(subject, variant(add_optional_field))
    latest = registry.latest(subject)
    assert latest.id == v2_id
    value = Encoder(latest.id, latest.schema.raw).encode(transaction(7, risk_score=0.5))
    assert int.from_bytes(value[1:5], "big") == v2_id
    with HttpRegistry(registry.url) as fresh:  # nothing cached
        record = Decoder(fresh).decode(value)
    assert record["risk_score"] == 0.5
    assert record["card_id"] == "card_000007"


# --- nova provision into the http registry ------------------------------------------------------


def test_provision_registers_the_pinned_contract(registry_url: str, project: Path):
    name = unique("provhttp")
    env = {
        "NOVA_SCHEMA_REGISTRY__URL": registry_url,
        "NOVA_PIPELINE__TOPIC": f"{name}.tx",
        "NOVA_PIPELINE__DLQ_TOPIC": f"{name}.dlq",
        "NOVA_DETECTION__LABELS_TOPIC": f"{name}.labels",
        "NOVA_DETECTION__ALERTS_TOPIC": f"{name}.alerts",
        "NOVA_CLICKHOUSE__DATABASE": name,
        "NOVA_CLICKHOUSE__URL": f"chdb://{project / 'chdb'}",
    }
    config = project / "configs" / "nova.yaml"

    def schema_items(*extra: str) -> list[dict]:
        out = run_nova("--config", str(config), "provision", "--json", *extra, env=env).stdout
        return [i for i in json.loads(out) if i["kind"] == "schema"]

    try:
        pinned = ["transactions-value", "transactions.alerts-value", "transactions.labels-value"]
        planned = schema_items("--dry-run")
        assert [(i["name"], i["action"]) for i in planned] == [(s, "create") for s in pinned]
        with HttpRegistry(registry_url) as reg, pytest.raises(SchemaNotFoundError):
            reg.latest("transactions-value")  # a dry run registers nothing
        applied = schema_items("--yes")
        assert [(i["name"], i["action"]) for i in applied] == [(s, "create") for s in pinned]
        with HttpRegistry(registry_url) as reg:
            assert [reg.versions(s) for s in pinned] == [[1], [1], [1]]
        for extra in ("--dry-run", "--yes"):
            again = schema_items(extra)
            assert [(i["name"], i["action"]) for i in again] == [(s, "unchanged") for s in pinned]
    finally:
        settings = load_settings(config, environ=env)
        kafka.delete_topics(settings, [env[k] for k in env if k.endswith("_TOPIC")], missing_ok=True)
