"""Typed, validated configuration: `configs/nova.yaml` plus `NOVA_…` environment overrides.

Every section is a pydantic model with descriptions and sane defaults. Loading never
touches a service: a bad file raises `ConfigError` (exit 2) naming the file, the key
and the fix before anything is started or changed.

Environment overrides use `NOVA_<SECTION>__<KEY>` (double underscore between levels),
e.g. `NOVA_KAFKA__BOOTSTRAP_SERVERS=broker:9092` or `NOVA_CLICKHOUSE__URL=clickhouse://…`.
Values are parsed as YAML scalars, so `NOVA_PIPELINE__BATCH_MAX_ROWS=1000` is an int.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipelines.errors import ConfigError

ENV_PREFIX = "NOVA_"
# Variables with the prefix that are not overrides of a key.
_ENV_RESERVED = {"NOVA_CONFIG", "NOVA_HOME"}
PACKAGE_ROOT = Path(__file__).resolve().parent.parent

# Names that end up inside SQL or Kafka requests are checked on load, so a bad one is a config
# error (exit 2) before anything is created, never a statement that fails half-way through
# `nova provision`. SQL still quotes every identifier; the rules keep names portable too.
_SQL_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# PostgreSQL truncates identifiers at 63 bytes, and ClickHouse refuses table names a little over
# 200 characters (fewer in a long-named database): 63 leaves room for the suffixes of the tables
# derived from pipeline.table (`_by_merchant_minute_mv`).
SQL_IDENTIFIER_MAX: Final = 63
_KAFKA_NAME: Final = re.compile(r"[a-zA-Z0-9._-]+")
KAFKA_NAME_MAX: Final = 249  # Kafka's own limit: a partition's directory is `<topic>-<partition>`
_SUBJECT_NAME: Final = re.compile(r"[a-zA-Z0-9._:-]+")
SUBJECT_NAME_MAX: Final = 255


def check_identifier(name: str, *, max_length: int = SQL_IDENTIFIER_MAX) -> str:
    """`name` if it is a plain SQL identifier (ClickHouse database/table, PostgreSQL schema); else ValueError."""
    if not _SQL_IDENTIFIER.fullmatch(name):
        raise ValueError(
            f"{name!r} is not a plain SQL identifier: it must match ^[A-Za-z_][A-Za-z0-9_]*$ "
            "(a letter or _, then letters, digits or _)"
        )
    if len(name) > max_length:
        raise ValueError(f"{name!r} is {len(name)} characters long; SQL identifiers here have at most {max_length}")
    return name


def check_kafka_name(name: str) -> str:
    """`name` if Kafka accepts it as a topic (or consumer group) name; else ValueError."""
    if not _KAFKA_NAME.fullmatch(name) or name in (".", ".."):
        raise ValueError(
            f"{name!r} is not a valid Kafka name: it must match ^[a-zA-Z0-9._-]+$ and must not be '.' or '..'"
        )
    if len(name) > KAFKA_NAME_MAX:
        raise ValueError(f"{name!r} is {len(name)} characters long; Kafka allows at most {KAFKA_NAME_MAX}")
    return name


def check_subject(name: str) -> str:
    """`name` if it is a portable schema-registry subject (it goes into registry URLs and files); else ValueError."""
    if not _SUBJECT_NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a valid schema-registry subject: it must match ^[a-zA-Z0-9._:-]+$")
    if len(name) > SUBJECT_NAME_MAX:
        raise ValueError(f"{name!r} is {len(name)} characters long; subjects have at most {SUBJECT_NAME_MAX}")
    return name


Identifier = Annotated[str, AfterValidator(check_identifier)]
KafkaName = Annotated[str, AfterValidator(check_kafka_name)]
Subject = Annotated[str, AfterValidator(check_subject)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class KafkaSettings(_Section):
    bootstrap_servers: str = Field("127.0.0.1:19092", description="Comma-separated host:port list of brokers.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="librdkafka security.protocol."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = Field(
        None, description="SASL mechanism when security_protocol is SASL_*."
    )
    sasl_username: str | None = Field(None, description="SASL username.")
    sasl_password: str | None = Field(None, description="SASL password (prefer NOVA_KAFKA__SASL_PASSWORD).")
    ssl_ca_location: str | None = Field(None, description="CA bundle for SSL/SASL_SSL.")
    client: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="Extra librdkafka settings passed to every client as-is."
    )

    def client_config(self) -> dict[str, Any]:
        """The librdkafka configuration shared by producers, consumers and the admin client."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username is not None:
            conf["sasl.username"] = self.sasl_username
        if self.sasl_password is not None:
            conf["sasl.password"] = self.sasl_password
        if self.ssl_ca_location:
            conf["ssl.ca.location"] = self.ssl_ca_location
        conf.update(self.client)
        return conf


class SchemaRegistrySettings(_Section):
    url: str = Field(
        "file://configs/schemas",
        description="file://DIR (ids pinned in DIR/registry.yaml) or http(s):// Confluent-compatible registry.",
    )
    basic_auth: str | None = Field(None, description="user:password for an http(s) registry.")
    compatibility: Literal["BACKWARD", "FORWARD", "FULL", "NONE"] = Field(
        "BACKWARD", description="Compatibility a new version must have with the latest one."
    )

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, v: str) -> str:
        if not v.startswith(("file://", "http://", "https://")):
            raise ValueError("must start with file://, http:// or https://")
        return v


_REPLICA_PATH_PLACEHOLDERS: Final = frozenset({"shard", "database", "table"})


class ClusterSettings(_Section):
    """A ClickHouse cluster (`<remote_servers>` on every host): how nova shards and replicates on it.

    Tables become `<name><local_suffix>` (Replicated*MergeTree on every host, `ON CLUSTER`) behind a
    `Distributed` table of the plain name, so every query nova runs reads the whole cluster.
    """

    name: Identifier = Field(..., description="Cluster name in the servers' <remote_servers> (system.clusters).")
    shard_key: Literal["_partition"] = Field(
        "_partition",
        description=(
            "Sharding key of the Distributed tables and of nova's own writes: the Kafka partition, so each "
            "partition's rows and ingest state live on one shard and fencing holds per shard."
        ),
    )
    replica_path: str = Field(
        "/clickhouse/tables/{shard}/{database}/{table}",
        description="ZooKeeper path of each replicated table: {shard} the server macro, {database}/{table} nova's.",
    )
    replica_name: str = Field("{replica}", description="Replica name of the replicated tables (the server's macro).")
    local_suffix: str = Field("_local", description="Suffix of the shard-local tables behind each Distributed table.")
    max_replica_delay_s: float = Field(
        10.0, ge=0, description="A replica further behind than this (system.replicas.absolute_delay) stops provision."
    )

    @field_validator("replica_path")
    @classmethod
    def _replica_path(cls, v: str) -> str:
        found = set(re.findall(r"\{([^{}]*)\}", v))
        unknown = sorted(found - _REPLICA_PATH_PLACEHOLDERS)
        if unknown:
            raise ValueError(f"{v!r} has unknown placeholder {{{unknown[0]}}}: use {{shard}}, {{database}}, {{table}}")
        missing = sorted({"shard", "table"} - found)
        if missing:
            raise ValueError(
                f"{v!r} lacks {{{missing[0]}}}: without it two shards (or two tables) would share one replication log"
            )
        if not v.startswith("/") or "'" in v or "\\" in v:
            raise ValueError(f"{v!r} must be an absolute ZooKeeper path (starting with /, no quotes or backslashes)")
        return v

    @field_validator("replica_name")
    @classmethod
    def _replica_name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.{}-]+", v) or "{replica}" not in v:
            raise ValueError(f"{v!r} must contain the {{replica}} macro (letters, digits, _ . - around it)")
        return v

    @field_validator("local_suffix")
    @classmethod
    def _local_suffix(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_]{1,20}", v):
            raise ValueError(f"{v!r} must be 1 to 20 letters, digits or _ (it extends table names)")
        return v


class ClickHouseSettings(_Section):
    url: str = Field(
        "chdb://.nova/chdb",
        description=(
            "chdb://PATH (embedded, one process) or clickhouse://user:pass@host:port/db (native protocol); "
            "with a cluster, clickhouse://user:pass@host1:port1,host2:port2/db lists the hosts tried first."
        ),
    )
    database: Identifier = Field(
        "nova", description="Database holding nova's tables (wins over a database in the URL)."
    )
    connect_timeout_s: float = Field(5.0, gt=0, description="Connect timeout for the native protocol.")
    cluster: ClusterSettings | None = Field(
        None, description="A ClickHouse cluster to shard and replicate on; null (default): one server or chdb."
    )

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, v: str) -> str:
        if not v.startswith(("chdb://", "clickhouse://")):
            raise ValueError("must start with chdb:// or clickhouse://")
        return v

    @model_validator(mode="after")
    def _cluster_needs_server(self) -> ClickHouseSettings:
        if self.cluster is not None and not self.url.startswith("clickhouse://"):
            raise ValueError(
                f"clickhouse.cluster needs a server URL (clickhouse://…), not {self.url!r}: chdb is one process"
            )
        return self


class LegacySettings(_Section):
    dsn: str = Field(
        "postgresql://nova@127.0.0.1:15432/legacy",
        description="libpq DSN of the legacy batch warehouse (PostgreSQL).",
    )
    schema_name: Identifier = Field("legacy", alias="schema", description="Schema of the legacy tables.")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class RulesSettings(_Section):
    """The data contract's settings: what `pipelines/contracts/rules.py` lets into the transactions table."""

    min_amount_minor: int = Field(1, description="Smallest valid amount in minor units (amount > 0).")
    max_amount_minor: int = Field(10**11, description="Largest valid amount in minor units.")
    currencies: list[str] = Field(
        default_factory=lambda: ["EUR", "USD", "GBP", "CHF", "SEK", "PLN", "JPY"],
        description="ISO 4217 currencies accepted; one without a rate in pipeline.fx_rates is refused too.",
    )
    max_future_s: int = Field(300, ge=0, description="Reject events whose time is further ahead than this.")
    max_past_days: int = Field(3650, ge=1, description="Reject events older than this.")
    countries: str = Field(
        "configs/reference/countries.csv",
        description="ISO 3166-1 alpha-2 codes the country field may hold (CSV with columns country,name).",
    )
    unknown_merchant: Literal["dead_letter", "flag"] = Field(
        "dead_letter",
        description=(
            "An event whose merchant_id is not in pipeline.merchants: dead_letter it (rule known_merchant), "
            "or flag it: keep it, with 'known_merchant' in its contract_flags column."
        ),
    )


class PipelineSettings(_Section):
    topic: KafkaName = Field("transactions", description="Topic of card transactions.")
    dlq_topic: KafkaName = Field("transactions.dlq", description="Dead-letter topic for undecodable/invalid events.")
    subject: Subject = Field("transactions-value", description="Schema-registry subject of the topic's values.")
    group_id: KafkaName = Field("nova-ingest", description="Consumer group of the ingest workers.")
    table: Identifier = Field("transactions", description="ClickHouse table of ingested transactions.")
    batch_max_rows: int = Field(100_000, ge=1, description="Insert when a batch reaches this many rows…")
    batch_max_seconds: float = Field(
        1.0,
        gt=0,
        description=(
            "…or when its oldest row has waited this long since it was consumed (latency budget); "
            "a batch is also inserted as soon as a fetch finds nothing more to read."
        ),
    )
    overlap_insert: bool = Field(
        False, description="Run a batch's insert on a thread while the next batch is consumed and decoded."
    )
    session_timeout_ms: int = Field(
        10_000, ge=1000, description="Consumer-group session timeout: how soon a dead worker's partitions move."
    )
    reporting_currency: str = Field("EUR", description="Currency of amount_reporting.")
    merchants: str = Field("configs/reference/merchants.csv", description="Merchant dimension (CSV).")
    fx_rates: str = Field("configs/reference/fx_rates.csv", description="FX rates to the reporting currency (CSV).")
    rules: RulesSettings = Field(default_factory=RulesSettings, description="Business validation rules.")  # type: ignore[arg-type]


class SloSettings(_Section):
    """What `nova loadtest` holds the pipeline to; every step of a run is judged against each."""

    insight_latency_p99_s: float = Field(
        5.0, gt=0, description="Produce→queryable latency p99: intended send (= event) time to visible in a SELECT."
    )
    query_p95_ms: float = Field(1000.0, gt=0, description="Dashboard query latency p95 under ingest load.")
    max_error_rate: float = Field(
        0.001, ge=0, le=1, description="Largest tolerated share of failed sends, and of failed queries."
    )
    min_achieved_ratio: float = Field(
        0.95, gt=0, le=1, description="Achieved send rate / target below this: the run is generator-bound (a failure)."
    )


# The last hour's top merchants come from the per-minute rollup (a scan of the day's rows of the
# main table, which is not in time order, took 0.7-1.6 s at 2x peak); their names from the main
# table, read only for those ten merchants and only from the newest of their last minutes on (a
# primary-key range). GLOBAL IN: on a cluster both sides are Distributed tables.
_TOP_MERCHANTS = (
    "SELECT merchant_id, sum(transactions) AS transactions, sum(amount_reporting_minor) AS volume_minor, "
    "max(minute) AS last_minute FROM {table}_by_merchant_minute WHERE minute >= now() - INTERVAL 1 HOUR "
    "GROUP BY merchant_id ORDER BY volume_minor DESC LIMIT 10"
)
_DASHBOARD_QUERIES = {
    "top_merchants": (
        f"SELECT merchant_id, merchant, transactions, volume_minor FROM ({_TOP_MERCHANTS}) ANY LEFT JOIN "
        "(SELECT merchant_id, any(merchant_name) AS merchant FROM {table} "
        f"WHERE merchant_id GLOBAL IN (SELECT merchant_id FROM ({_TOP_MERCHANTS})) "
        f"AND event_time >= (SELECT min(last_minute) FROM ({_TOP_MERCHANTS})) GROUP BY merchant_id) "
        "USING merchant_id ORDER BY volume_minor DESC"
    ),
    "volume_per_minute": (
        "SELECT minute, sum(transactions) AS transactions, sum(amount_reporting_minor) AS volume_minor "
        "FROM {table}_by_merchant_minute WHERE minute >= now() - INTERVAL 1 HOUR GROUP BY minute ORDER BY minute"
    ),
    "recent_alerts": (
        "SELECT event_time, transaction_id, card_id, merchant_id, amount_reporting_minor, risk_score FROM alerts "
        "WHERE event_time >= now() - INTERVAL 5 MINUTE ORDER BY event_time DESC LIMIT 100"
    ),
    "card_history": (
        "SELECT event_time, transaction_id, merchant_id, amount_minor, currency, status, risk_score "
        "FROM {table}_by_card WHERE card_id = %(card_id)s ORDER BY event_time DESC LIMIT 50"
    ),
}


class LoadtestSettings(_Section):
    """Defaults of `nova loadtest` (each has a command-line option) and its dashboard queries."""

    profile: Literal["steady", "step", "spike", "find-max"] = Field(
        "steady", description="Load shape: steady, step (1×…k× in equal steps), spike, or find-max."
    )
    peak_multiplier: float = Field(
        1.0, gt=0, description="Target rate as a multiple of peak_events_per_second, unless --rate is given."
    )
    duration_s: float = Field(60.0, gt=0, description="Length of the run (all steps together), in seconds.")
    steps: int = Field(3, ge=1, le=100, description="Steps of the step profile: target × 1/n, 2/n, … n/n.")
    find_max_steps: int = Field(
        10, ge=2, le=100, description="Steps of find-max: target × 1/n … n/n, stopping at the first that breaks."
    )
    spike_base_fraction: float = Field(
        1 / 3, gt=0, lt=1, description="Spike profile: the rate before and after the spike, as a fraction of target."
    )
    processes: int = Field(1, ge=1, description="Locust worker processes on this machine (one producer each).")
    analysts: int = Field(2, ge=0, description="Concurrent analyst users running the dashboard queries.")
    think_time_s: float = Field(1.0, ge=0, description="Pause of an analyst between two queries.")
    queries: dict[str, str] = Field(
        default_factory=lambda: dict(_DASHBOARD_QUERIES),
        description="Dashboard queries by name; {table} is pipeline.table, %(card_id)s a card of the run.",
    )
    pool_size: int = Field(
        65_536, ge=1024, description="Pre-encoded transactions per producer, re-sent with fresh ids and times."
    )
    ack_samples_per_s: int = Field(
        1000, ge=1, description="Messages per second and producer whose ack (and queryable) latency is measured."
    )
    commit_poll_s: float = Field(
        0.1, gt=0, le=5, description="How often the ingest group's committed offsets are read (queryable resolution)."
    )
    drain_timeout_s: float = Field(
        120.0, gt=0, description="After the last send, how long to wait for the pipeline to catch up."
    )
    ingest_workers: int = Field(1, ge=1, description="`nova ingest --workers` when the load test starts ingest itself.")
    runs_dir: str | None = Field(
        None, description="Where each run's plan, logs and results go (default: <stack.state_dir>/loadtest)."
    )


class DetectionSettings(_Section):
    """Fraud detection in the ingest workers (`pipelines/detect`): its rules, model, topics and refresh."""

    enabled: bool = Field(
        False,
        description=(
            "Score every ingested row and produce alerts. Off by default: synthetic load (100k cards at 50k/s, "
            "1,800 payments per card per hour) looks like fraud to every velocity rule; on for real or labelled data."
        ),
    )
    config: str = Field("configs/detection.yaml", description="Rules and thresholds of the detector (YAML).")
    labels_topic: KafkaName = Field(
        "transactions.labels", description="Topic of late fraud labels (key transaction_id)."
    )
    alerts_topic: KafkaName = Field(
        "transactions.alerts", description="Topic the alerts are produced to (key card_id)."
    )
    model: str | None = Field(None, description="Trained model artifact (`nova fraud train`), or null for rules only.")
    record_scores: bool = Field(False, description="Also write every row's score to fraud_scores (evaluation).")
    merchant_risk_refresh_s: float = Field(
        60.0, gt=0, description="How often the workers re-read merchant risk (fraud share by merchant) from ClickHouse."
    )
    merchant_risk_step_s: int = Field(
        21_600,
        ge=60,
        description=(
            "Merchant risk is as of whole steps of event time this long: a label counts from the next step "
            "boundary; a replay (nova fraud evaluate) waits for the pipeline at each boundary."
        ),
    )


class StackSettings(_Section):
    state_dir: str = Field(".nova", description="Where the local stack keeps data, logs and PIDs.")
    kafka_version: str = Field("4.1.1", description="Apache Kafka version fetched from Maven Central.")
    kafka_port: int = Field(19092, description="Kafka broker listener on 127.0.0.1.")
    kafka_controller_port: int = Field(19093, description="KRaft controller listener on 127.0.0.1.")
    kafka_heap: str = Field("1G", description="Kafka JVM heap (-Xmx/-Xms).")
    postgres_port: int = Field(15432, description="PostgreSQL port on 127.0.0.1.")
    clickhouse_tcp_port: int = Field(19000, description="clickhouse-server native port on 127.0.0.1.")
    clickhouse_http_port: int = Field(18123, description="clickhouse-server HTTP port on 127.0.0.1.")
    seaweedfs_port: int = Field(
        18333, description="SeaweedFS S3 port on 127.0.0.1; its other listeners take the next six ports, gRPC +10000."
    )
    zookeeper_version: str = Field("3.9.4", description="Apache ZooKeeper version fetched from Maven Central.")
    zookeeper_port: int = Field(12181, description="ZooKeeper client port on 127.0.0.1 (the local cluster's).")
    zookeeper_heap: str = Field("256M", description="ZooKeeper JVM heap (-Xmx/-Xms).")
    clickhouse_cluster_port: int = Field(
        19100,
        description="Local cluster: host i (1-3) takes native port PORT+i, HTTP PORT+10+i, interserver PORT+20+i.",
    )


class Settings(BaseModel):
    """The whole configuration, plus where it came from."""

    model_config = ConfigDict(extra="forbid")

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)  # type: ignore[arg-type]
    schema_registry: SchemaRegistrySettings = Field(default_factory=SchemaRegistrySettings)  # type: ignore[arg-type]
    clickhouse: ClickHouseSettings = Field(default_factory=ClickHouseSettings)  # type: ignore[arg-type]
    legacy: LegacySettings = Field(default_factory=LegacySettings)  # type: ignore[arg-type]
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)  # type: ignore[arg-type]
    peak_events_per_second: int = Field(50_000, gt=0, description="Expected production peak (load tests run 3x).")
    slo: SloSettings = Field(default_factory=SloSettings)  # type: ignore[arg-type]
    loadtest: LoadtestSettings = Field(default_factory=LoadtestSettings)  # type: ignore[arg-type]
    stack: StackSettings = Field(default_factory=StackSettings)  # type: ignore[arg-type]
    detection: DetectionSettings = Field(default_factory=DetectionSettings)  # type: ignore[arg-type]

    # Not configuration: where the file was and what relative paths are relative to.
    source: Path = Field(default=Path("configs/nova.yaml"), exclude=True)
    root: Path = Field(default=Path("."), exclude=True)

    def resolve(self, path: str | Path) -> Path:
        """A configured path, made absolute against the project root."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self.root / p).resolve()

    @property
    def state_dir(self) -> Path:
        return self.resolve(self.stack.state_dir)

    @property
    def configs_dir(self) -> Path:
        return self.source.parent


def default_config_path() -> Path:
    """`$NOVA_CONFIG`, else `./configs/nova.yaml`, else the project's own `configs/nova.yaml`."""
    env = os.environ.get("NOVA_CONFIG")
    if env:
        return Path(env)
    local = Path.cwd() / "configs" / "nova.yaml"
    return local if local.exists() else PACKAGE_ROOT / "configs" / "nova.yaml"


def _project_root(config_path: Path) -> Path:
    home = os.environ.get("NOVA_HOME")
    if home:
        return Path(home).resolve()
    parent = config_path.resolve().parent
    return parent.parent if parent.name == "configs" else parent


def _apply_env(raw: dict[str, Any], environ: dict[str, str]) -> list[str]:
    applied = []
    for name, value in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or name in _ENV_RESERVED:
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__") if part]
        if not path:
            continue
        node = raw
        for key in path[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                child = {}
                node[key] = child
            node = child
        try:
            node[path[-1]] = yaml.safe_load(value) if value != "" else ""
        except yaml.YAMLError:
            node[path[-1]] = value
        applied.append(name)
    return applied


def _describe(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def load_settings(path: str | Path | None = None, *, environ: dict[str, str] | None = None) -> Settings:
    """Read, merge env overrides into, and validate the configuration. Raises `ConfigError`."""
    config_path = Path(path) if path is not None else default_config_path()
    environ = dict(os.environ) if environ is None else environ
    if not config_path.exists():
        raise ConfigError(
            f"config file {config_path} does not exist",
            hint="pass --config PATH or set NOVA_CONFIG, or run from the project directory",
        )
    try:
        text = config_path.read_text()
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{config_path}{where}: invalid YAML ({problem})", hint="fix the syntax") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {config_path}: {exc.strerror}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{config_path}: the top level must be a mapping of sections, got {type(raw).__name__}")
    env_keys = _apply_env(raw, environ)
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            key = _describe(err["loc"])
            env_name = ENV_PREFIX + "__".join(str(p).upper() for p in err["loc"])
            origin = f"environment {env_name}" if env_name in env_keys else f"{config_path}"
            if err["type"] == "extra_forbidden":
                lines.append(f"{origin}: unknown key '{key}' — remove it or check its spelling")
            else:
                # A validator's own ValueError reads better without pydantic's "Value error, " prefix.
                msg = str(err["ctx"]["error"]) if err["type"] == "value_error" else err["msg"]
                got = err.get("input")
                quoted = got is None or isinstance(got, dict) or repr(got) in msg
                lines.append(f"{origin}: key '{key}': {msg}{'' if quoted else f' (got {got!r})'}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None
    settings.source = config_path.resolve()
    settings.root = _project_root(config_path)
    return settings
