"""Schema registry: one interface, two implementations chosen by `schema_registry.url`.

- ``file://DIR`` — ``FileRegistry`` (``file``): subjects, versions and ids pinned in
  ``DIR/registry.yaml`` and committed to git with the ``.avsc`` files it names. Registering checks
  compatibility with the ``avro`` package's checker (``compat``), then writes the new ``.avsc``
  and the updated ``registry.yaml``.
- ``http(s)://…`` — ``HttpRegistry`` (``http``): any Confluent-compatible registry through
  ``confluent_kafka.schema_registry.SchemaRegistryClient``; the server checks compatibility.

Both behave like Confluent's registry: a schema id is global (the same schema in two subjects has
one id; two different schemas never share one), a version counts per subject, registering a schema
the subject already has returns its id and changes nothing, and a new version must be compatible
with the latest one (or with all of them for ``*_TRANSITIVE``) under the subject's level:

- ``BACKWARD``: the new schema can read data written with the latest (consumers upgrade first);
- ``FORWARD``: the latest can read data written with the new schema (producers upgrade first);
- ``FULL``: both; ``NONE``: no check.

Vendor errors (connection refused, HTTP 404/409/401…) are translated into ``RegistryError``,
``SchemaNotFoundError`` and ``SchemaCompatibilityError``. The interface and its value types live
in ``base``, so the implementations don't import this package back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipelines.contracts.registry.base import (
    PlanAction,
    RegisteredSchema,
    RegisterPlan,
    SchemaNotFoundError,
    SchemaRegistry,
    SubjectVersion,
)
from pipelines.contracts.registry.compat import COMPATIBILITY_LEVELS, canonical_form
from pipelines.contracts.registry.file import REGISTRY_FILE, FileRegistry
from pipelines.contracts.registry.http import HttpRegistry, split_registry_url, translate_registry_error

if TYPE_CHECKING:
    from pipelines.config import Settings

__all__ = [
    "COMPATIBILITY_LEVELS",
    "REGISTRY_FILE",
    "FileRegistry",
    "HttpRegistry",
    "PlanAction",
    "RegisterPlan",
    "RegisteredSchema",
    "SchemaNotFoundError",
    "SchemaRegistry",
    "SubjectVersion",
    "canonical_form",
    "open_registry",
    "split_registry_url",
    "translate_registry_error",
]


def open_registry(settings: Settings, *, max_retries: int = 3, timeout_s: float = 10.0) -> SchemaRegistry:
    """The registry `settings.schema_registry.url` names (file:// relative to the project root).

    ``max_retries`` and ``timeout_s`` apply to an http registry (a file registry has no network).
    """
    cfg = settings.schema_registry
    if cfg.url.startswith("file://"):
        return FileRegistry(settings.resolve(cfg.url[len("file://") :]), compatibility=cfg.compatibility)
    return HttpRegistry(
        cfg.url,
        basic_auth=cfg.basic_auth,
        compatibility=cfg.compatibility,
        max_retries=max_retries,
        timeout_s=timeout_s,
    )
