"""What every schema registry is and returns: the ``SchemaRegistry`` interface and its value types.

Kept apart from the package's ``__init__`` so that ``file`` and ``http`` can implement it without
importing the package that imports them.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from pipelines.errors import RegistryError

PlanAction = Literal["create", "unchanged", "new version"]


class SchemaNotFoundError(RegistryError):
    """The registry has no schema with this id, or no such subject or version."""


class RegisteredSchema(NamedTuple):
    """A schema as the registry holds it: fastavro-parsed (logical types as declared) and its text."""

    parsed: dict[str, Any]
    raw: str


class SubjectVersion(NamedTuple):
    """One version of a subject."""

    id: int
    version: int
    schema: RegisteredSchema


@dataclass(frozen=True)
class RegisterPlan:
    """What ``register`` would do, without doing it (``nova provision --dry-run``).

    ``id`` is None where only the server can tell (a new schema on an http registry).
    ``compatible`` is False when ``register`` would refuse; ``messages`` then say why.
    """

    subject: str
    action: PlanAction
    id: int | None
    version: int | None
    compatible: bool = True
    messages: tuple[str, ...] = ()
    file: str | None = None

    def describe(self) -> str:
        """One line for the dry-run listing: subject, action, version and id, and why it is refused."""
        what = f"subject '{self.subject}': {self.action}"
        if self.version is not None:
            what += f" (version {self.version}" + (f", id {self.id})" if self.id is not None else ")")
        if not self.compatible:
            what += " — REFUSED, incompatible: " + "; ".join(self.messages)
        return what


class SchemaRegistry(abc.ABC):
    """What nova needs from a schema registry."""

    url: str
    level: str

    @abc.abstractmethod
    def subjects(self) -> list[str]:
        """All subjects, sorted."""

    @abc.abstractmethod
    def versions(self, subject: str) -> list[int]:
        """The subject's versions, ascending; SchemaNotFoundError for an unknown subject."""

    @abc.abstractmethod
    def latest(self, subject: str) -> SubjectVersion:
        """The subject's latest (id, version, schema); SchemaNotFoundError for an unknown subject."""

    @abc.abstractmethod
    def get_schema(self, schema_id: int) -> RegisteredSchema:
        """The schema with this global id (cached); SchemaNotFoundError if there is none."""

    @abc.abstractmethod
    def check(self, subject: str, schema_str: str) -> tuple[bool, list[str]]:
        """Whether ``schema_str`` could be registered as the subject's next version, and why not."""

    @abc.abstractmethod
    def plan_register(self, subject: str, schema_str: str) -> RegisterPlan:
        """What ``register`` would do: 'create', 'unchanged' or 'new version' (and whether refused)."""

    @abc.abstractmethod
    def register(self, subject: str, schema_str: str) -> int:
        """Register ``schema_str`` under ``subject`` and return its id; idempotent.

        Raises SchemaCompatibilityError, naming the versions and the incompatibility, when the
        schema is new and not compatible under the subject's level.
        """

    @abc.abstractmethod
    def compatibility(self, subject: str | None = None) -> str:
        """The compatibility level in force for ``subject`` (or the registry's default)."""

    @abc.abstractmethod
    def set_compatibility(self, level: str, subject: str | None = None) -> None:
        """Set the compatibility level of ``subject`` (or the registry's default)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections, if any."""

    def __enter__(self) -> SchemaRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
