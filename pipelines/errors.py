"""The exceptions nova raises. Vendor errors are translated into these at the boundary."""

from __future__ import annotations


class NovaError(Exception):
    """Base of every expected nova failure; the CLI prints it without a traceback."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} — {self.hint}"


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
