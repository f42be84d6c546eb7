"""The declarative specs under configs/: topics.yaml and clickhouse/tables.yaml, validated on load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipelines.errors import ConfigError


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TopicSpec(_Spec):
    name: str = Field(description="Topic name; may use {topic} / {dlq_topic} from the pipeline settings.")
    partitions: int = Field(gt=0)
    replication_factor: int = Field(1, gt=0)
    config: dict[str, str] = Field(default_factory=dict)

    @field_validator("config", mode="before")
    @classmethod
    def _stringify(cls, v: Any) -> Any:
        return {str(k): str(val).lower() if isinstance(val, bool) else str(val) for k, val in (v or {}).items()}


class TopicsFile(_Spec):
    topics: list[TopicSpec]


class TableSpec(_Spec):
    name: str
    comment: str = ""
    engine: str = "MergeTree"
    partition_by: str | None = None
    order_by: list[str]
    ttl: str | None = None
    columns: list[tuple[str, str]]
    replaces: ReplacedTable | None = Field(
        None, description="An older layout of this table that provision renames aside (data kept) and recreates."
    )


class ReplacedTable(_Spec):
    engine: str = Field(description="Engine of the old layout (as system.tables names it), e.g. MergeTree.")
    rename_to: str = Field(description="Name the old table is renamed to; its rows stay there.")


class ViewSpec(_Spec):
    name: str
    to: str
    select: str


class TablesFile(_Spec):
    tables: list[TableSpec]
    views: list[ViewSpec] = Field(default_factory=list)
    retired_views: list[str] = Field(
        default_factory=list, description="Views of earlier layouts that provision drops where they still exist."
    )


def _load(path: Path, model: type[_Spec]) -> Any:
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"spec file {path} does not exist", hint="restore it from git") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({exc})") from None
    try:
        return model.model_validate(raw or {})
    except ValidationError as exc:
        problems = [f"{path}: key '{'.'.join(map(str, e['loc']))}': {e['msg']}" for e in exc.errors()]
        raise ConfigError("invalid spec:\n  " + "\n  ".join(problems)) from None


def load_topics(path: Path, *, names: dict[str, str]) -> list[TopicSpec]:
    """Topic specs with `{topic}`-style placeholders filled from `names`."""
    specs: TopicsFile = _load(path, TopicsFile)
    for spec in specs.topics:
        spec.name = spec.name.format(**names)
    return specs.topics


def load_tables(path: Path, *, names: dict[str, str], sql_names: dict[str, str] | None = None) -> TablesFile:
    """Table and view specs with `{table}` / `{database}` placeholders filled from `names`.

    A view's SELECT is filled from `sql_names` when given: the same names, quoted as SQL
    identifiers by the caller (this layer doesn't know the SQL dialect).
    """
    spec: TablesFile = _load(path, TablesFile)
    for table in spec.tables:
        table.name = table.name.format(**names)
    for view in spec.views:
        view.name = view.name.format(**names)
        view.to = view.to.format(**names)
        view.select = view.select.format(**(names if sql_names is None else sql_names))
    return spec
