"""The tiering policy: `configs/lifecycle.yaml`, validated on load like `configs/nova.yaml`.

It sits beside nova.yaml (`settings.configs_dir`), so a project copy with its own configs has its
own policy. A bad file is a `ConfigError` (exit 2) naming the file, the key and the fix, raised
before any store is opened. Names in it may use `{table}` and `{database}` from the settings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipelines.config import Identifier, Settings
from pipelines.errors import ConfigError

POLICY_FILE = "lifecycle.yaml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TablePolicy(_Section):
    """How long one day-partitioned table keeps its days in each tier."""

    name: str = Field("{table}", description="Table in clickhouse.database; `{table}` is pipeline.table.")
    hot_days: int = Field(7, ge=1, description="Newest days kept in hot (the table itself, fast disk).")
    warm_days: int = Field(14, ge=0, description="Days after the hot ones kept warm; older days go cold.")
    time_column: Identifier = Field(
        "event_time", description="The column the table is partitioned on with toYYYYMMDD(...)."
    )
    amount_column: Identifier = Field(
        "amount_minor", description="Summed by verification (with the row count and the checksum)."
    )


class WarmPolicy(_Section):
    """Where warm days live: a volume of a storage policy, or (ClickHouse < 19.15) a table beside."""

    storage_policy: Identifier = Field(
        "nova_tiered", description="Storage policy with volumes `default` (hot) and the warm volume."
    )
    volume: Identifier = Field("warm", description="The policy's warm volume.")
    disk_path: str | None = Field(
        None,
        description="Embedded store only: directory of the warm disk (default: the chdb path + '-warm'). "
        "A server declares its disks in its own config.",
    )
    table_suffix: Identifier = Field(
        "_warm", description="ClickHouse without storage policies (18.16): the warm table is NAME + this."
    )


class ColdPolicy(_Section):
    """Where cold days go: Parquet under `url`, one `dt=YYYY-MM-DD/` prefix and manifest per day."""

    url: str = Field(
        "s3://nova-cold/{database}",
        description="s3://BUCKET[/PREFIX] or file:///DIR; each table gets a folder below it.",
    )
    endpoint: str | None = Field(
        None, description="S3 endpoint URL; empty: the local stack's SeaweedFS (stack.seaweedfs_port)."
    )
    region: str = Field("us-east-1", description="S3 region (SeaweedFS ignores it).")
    access_key_id: str | None = Field(None, description="S3 access key; empty: $AWS_ACCESS_KEY_ID.")
    secret_access_key: str | None = Field(None, description="S3 secret key; empty: $AWS_SECRET_ACCESS_KEY.")

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, v: str) -> str:
        if v.startswith("s3://"):
            bucket = urlsplit(v).netloc
            if len(bucket) < 3:
                raise ValueError(f"the bucket in {v!r} needs at least 3 characters (S3's rule)")
            return v
        if v.startswith("file://"):
            if not v[len("file://") :]:
                raise ValueError("file:// needs a directory, e.g. file:///var/lib/nova/cold")
            return v
        raise ValueError("must start with s3:// or file://")


class LifecycleFile(_Section):
    tables: list[TablePolicy] = Field(default_factory=lambda: [TablePolicy.model_validate({})], min_length=1)
    warm: WarmPolicy = Field(default_factory=lambda: WarmPolicy.model_validate({}))
    cold: ColdPolicy = Field(default_factory=lambda: ColdPolicy.model_validate({}))
    server_http_url: str | None = Field(
        None,
        description="clickhouse-server's HTTP interface, which the embedded engine reads for cold moves and "
        "--all-tiers; empty: the host of clickhouse.url on stack.clickhouse_http_port.",
    )


@dataclass(frozen=True)
class ColdTarget:
    """The resolved cold location: scheme, bucket or directory, key prefix, and S3 access."""

    scheme: Literal["s3", "file"]
    bucket: str
    prefix: str
    endpoint: str
    region: str
    access_key_id: str
    secret_access_key: str
    local_dir: Path | None

    def describe(self) -> str:
        if self.scheme == "file":
            return f"file://{self.local_dir}"
        return f"s3://{self.bucket}/{self.prefix} at {self.endpoint}"


@dataclass(frozen=True)
class Policy:
    """`configs/lifecycle.yaml` with names filled in and the cold target resolved."""

    source: Path
    tables: tuple[TablePolicy, ...]
    warm: WarmPolicy
    cold: ColdTarget
    server_http_url: str | None

    def table(self, name: str) -> TablePolicy:
        for table in self.tables:
            if table.name == name:
                return table
        raise ConfigError(
            f"{self.source}: no policy for table {name!r}",
            hint=f"add it under `tables:` (policies exist for {', '.join(t.name for t in self.tables)})",
        )


def _describe(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def load_policy(settings: Settings, *, environ: dict[str, str] | None = None) -> Policy:
    """Read and validate `configs/lifecycle.yaml` next to the settings' nova.yaml. Raises ConfigError."""
    path = settings.configs_dir / POLICY_FILE
    environ = dict(os.environ) if environ is None else environ
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(
            f"lifecycle policy {path} does not exist", hint="restore configs/lifecycle.yaml from git"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(
            f"{path}{where}: invalid YAML ({getattr(exc, 'problem', exc)})", hint="fix the syntax"
        ) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(raw).__name__}")
    try:
        spec = LifecycleFile.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            key = _describe(err["loc"])
            if err["type"] == "extra_forbidden":
                lines.append(f"{path}: unknown key '{key}' — remove it or check its spelling")
            else:
                got = err.get("input")
                got_text = f" (got {got!r})" if got is not None and not isinstance(got, dict) else ""
                lines.append(f"{path}: key '{key}': {err['msg']}{got_text}")
        raise ConfigError("invalid lifecycle policy:\n  " + "\n  ".join(lines)) from None

    names = {"table": settings.pipeline.table, "database": settings.clickhouse.database}
    tables = []
    for i, table in enumerate(spec.tables):
        name = _fill(table.name, names, path, f"tables.{i}.name")
        if not name.isidentifier():
            raise ConfigError(f"{path}: key 'tables.{i}.name': {name!r} is not a plain table name")
        tables.append(table.model_copy(update={"name": name}))
    seen = [t.name for t in tables]
    if len(set(seen)) != len(seen):
        raise ConfigError(f"{path}: key 'tables': a table is listed twice ({', '.join(seen)})", hint="list each once")
    return Policy(
        source=path,
        tables=tuple(tables),
        warm=spec.warm,
        cold=_cold_target(spec.cold, settings, names, path, environ),
        server_http_url=spec.server_http_url,
    )


def _fill(text: str, names: dict[str, str], path: Path, key: str) -> str:
    try:
        return text.format(**names)
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(
            f"{path}: key '{key}': {text!r} uses an unknown placeholder ({exc})", hint="use {table} or {database}"
        ) from None


def _cold_target(
    cold: ColdPolicy, settings: Settings, names: dict[str, str], path: Path, environ: dict[str, str]
) -> ColdTarget:
    url = _fill(cold.url, names, path, "cold.url")
    if url.startswith("file://"):
        directory = settings.resolve(url[len("file://") :])
        return ColdTarget("file", "", "", "", cold.region, "", "", directory)
    parts = urlsplit(url)
    key_id = cold.access_key_id or environ.get("AWS_ACCESS_KEY_ID")
    secret = cold.secret_access_key or environ.get("AWS_SECRET_ACCESS_KEY")
    if not key_id or not secret:
        raise ConfigError(
            f"{path}: the cold tier {url} needs S3 credentials",
            hint="set cold.access_key_id / cold.secret_access_key, or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY",
        )
    endpoint = (cold.endpoint or f"http://127.0.0.1:{settings.stack.seaweedfs_port}").rstrip("/")
    if not endpoint.startswith(("http://", "https://")):
        raise ConfigError(f"{path}: key 'cold.endpoint': {endpoint!r} must start with http:// or https://")
    return ColdTarget("s3", parts.netloc, parts.path.strip("/"), endpoint, cold.region, key_id, secret, None)
