"""The lifecycle's own failures, shallow subclasses of `NovaError` (exit 1: cron must notice)."""

from __future__ import annotations

from pipelines.errors import NovaError


class ColdStoreError(NovaError):
    """The cold tier's object store refused or failed a request."""


class VerificationFailed(NovaError):
    """A copy does not match its source (rows, amount sum or checksum): the source is kept."""


class MigrationLocked(NovaError):
    """Another `nova tier-migrate` holds the run lock of this state dir."""
