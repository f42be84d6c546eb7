"""The exceptions nova raises. Vendor errors are translated into these at the boundary.

An error raised in a worker process reaches the CLI of its supervisor unchanged:
`NovaError.to_dict()` → any JSON/pickle channel → `NovaError.from_dict()` gives back the same
kind (class), message, hint, exit code and extra fields (e.g. `StoreError.code`), so the handler
prints the same two lines and exits with the same code as if it had been raised in-process.
"""

from __future__ import annotations

from typing import Any, ClassVar

# Attributes every NovaError has; anything else in an instance's __dict__ is a subclass's extra field.
_CORE = ("message", "hint", "exit_code")


class NovaError(Exception):
    """Base of every expected nova failure; the CLI prints it without a traceback."""

    exit_code = 1
    # Every subclass by name, so `from_dict` can rebuild one defined in any module that is imported.
    _kinds: ClassVar[dict[str, type[NovaError]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        NovaError._kinds.setdefault(cls.__name__, cls)

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} — {self.hint}"

    def to_dict(self) -> dict[str, Any]:
        """kind, message, hint, exit code and the subclass's extra fields, as plain JSON-able values."""
        extra = {k: v for k, v in vars(self).items() if k not in _CORE and _plain(v)}
        return {
            "kind": type(self).__name__,
            "message": self.message,
            "hint": self.hint,
            "exit_code": self.exit_code,
            "extra": extra,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NovaError:
        """The error `to_dict` described: same class (NovaError if that kind is unknown here), same fields.

        Built without calling the subclass's __init__, whose signature may differ from NovaError's.
        """
        kind = NovaError._kinds.get(str(data.get("kind", "")), NovaError)
        exc = kind.__new__(kind)
        NovaError.__init__(exc, str(data.get("message", "")), hint=data.get("hint"))
        for key, value in dict(data.get("extra") or {}).items():
            setattr(exc, key, value)
        exit_code = data.get("exit_code")
        if isinstance(exit_code, int) and exit_code != kind.exit_code:
            exc.exit_code = exit_code
        return exc


def _plain(value: object) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


class UsageError(NovaError):
    """The command was called wrongly (bad option combination, bad argument)."""

    exit_code = 2


class ConfigError(NovaError):
    """A configuration file or environment override is missing or invalid."""

    exit_code = 2


class StackError(NovaError):
    """A local service of `nova stack` could not be installed, started or stopped."""


class KafkaError(NovaError):
    """Kafka refused or failed an operation (admin, produce, consume)."""


class StoreError(NovaError):
    """ClickHouse refused or failed an operation, or lacks a needed feature."""

    def __init__(
        self, message: str, *, hint: str | None = None, code: int | None = None, retryable: bool = False
    ) -> None:
        super().__init__(message, hint=hint)
        # ClickHouse's error code (e.g. 60 UNKNOWN_TABLE), when the server sent one.
        self.code = code
        # True for connection-level failures (refused, reset, timeout): the same call may succeed
        # later, so a worker should pause and retry. False for errors in the SQL or the data.
        self.retryable = retryable


class RegistryError(NovaError):
    """The schema registry could not resolve, register or check a schema."""


class SchemaCompatibilityError(RegistryError):
    """A new schema version is not compatible with the subject's existing versions."""


class ProvisionRefused(NovaError):
    """Provision would delete data or shrink an object; refused without an explicit flag."""


class WarehouseError(NovaError):
    """The legacy PostgreSQL warehouse refused or failed an operation."""


class ParityMismatch(NovaError):
    """Legacy warehouse and ClickHouse disagree over the compared range."""
