"""The http registry: any Confluent-compatible schema registry, through ``confluent_kafka.schema_registry``.

This is the one module outside ``pipelines.kafka`` that imports ``confluent_kafka``, and only its
``schema_registry`` subpackage: that is the registry's REST client (httpx underneath), not Kafka —
it opens no broker connection and shares nothing with the producer and consumer. It is imported
where it is used, so a file:// registry never loads it.

The server checks compatibility; ``compat`` only explains a refusal the server gives no reason for.
Vendor errors (connection refused, HTTP 404/409/401…) are translated into ``RegistryError``,
``SchemaNotFoundError`` and ``SchemaCompatibilityError``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from pipelines.contracts.registry.base import (
    RegisteredSchema,
    RegisterPlan,
    SchemaNotFoundError,
    SchemaRegistry,
    SubjectVersion,
)
from pipelines.contracts.registry.compat import check_level, directions, level_problems, parse_schema
from pipelines.errors import ConfigError, NovaError, RegistryError, SchemaCompatibilityError

if TYPE_CHECKING:
    from confluent_kafka.schema_registry import Schema

_T = TypeVar("_T")


def split_registry_url(url: str, basic_auth: str | None = None) -> tuple[str, str | None]:
    """(url without credentials or trailing slash, user:password) — settings' basic_auth wins over the URL's."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"schema_registry.url {url!r} is not an http(s)://host[:port][/path] URL",
            hint="e.g. https://registry.example:8081",
        )
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        raise ConfigError(f"schema_registry.url {url!r} has an invalid port") from None
    auth = basic_auth
    netloc = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    if parts.port is not None:
        netloc += f":{parts.port}"
    if parts.username is not None and auth is None:
        auth = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
    if auth is not None and ":" not in auth:
        raise ConfigError("schema_registry.basic_auth must be user:password")
    clean = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), parts.query, ""))
    return clean, auth


def _transport_error_types() -> tuple[type[BaseException], ...]:
    try:
        from confluent_kafka.schema_registry.common._httpx_compat import httpx
    except ImportError:  # older confluent-kafka used httpx directly
        try:
            import httpx  # type: ignore[no-redef]
        except ImportError:
            return ()
    return (httpx.TransportError,)


def translate_registry_error(
    exc: BaseException, *, url: str, what: str, subject: str | None = None, schema_id: int | None = None
) -> NovaError:
    """A nova error for what SchemaRegistryClient raised while doing ``what``."""
    from confluent_kafka.schema_registry.error import OAuthTokenError, SchemaRegistryError

    if isinstance(exc, SchemaRegistryError):
        status, code, text = exc.http_status_code, exc.error_code, exc.error_message
        if code == 40401:
            return SchemaNotFoundError(
                f"{what}: subject '{subject}' not found in schema registry {url}", hint="register it (nova provision)"
            )
        if code == 40402:
            return SchemaNotFoundError(f"{what}: subject '{subject}' has no such version in schema registry {url}")
        if code == 40403:
            target = f"schema id {schema_id}" if schema_id is not None else "the schema"
            return SchemaNotFoundError(f"{what}: {target} not found in schema registry {url}")
        if status == 409:
            return SchemaCompatibilityError(
                f"{what}: schema registry {url} refused the schema as incompatible with subject '{subject}': {text}",
                hint="see `nova provision --dry-run` for the reason; make the change compatible or use a new subject",
            )
        if status in (401, 403):
            return RegistryError(
                f"{what}: schema registry {url} rejected the credentials (HTTP {status}: {text})",
                hint="check schema_registry.basic_auth (NOVA_SCHEMA_REGISTRY__BASIC_AUTH=user:password)",
            )
        if status == 422:
            return RegistryError(f"{what}: schema registry {url} rejected the schema as invalid: {text}")
        return RegistryError(f"{what}: schema registry {url} answered HTTP {status} (error {code}): {text}")
    if isinstance(exc, OAuthTokenError):
        return RegistryError(f"{what}: no OAuth token for schema registry {url}: {exc}")
    if isinstance(exc, _transport_error_types()):
        return RegistryError(
            f"{what}: cannot reach schema registry {url}: {exc}",
            hint="is it running, and is schema_registry.url right?",
        )
    return RegistryError(f"{what}: schema registry {url} failed: {type(exc).__name__}: {exc}")


class HttpRegistry(SchemaRegistry):
    """A Confluent-compatible registry over HTTP(S); ``level`` is what ``set_compatibility`` pushes."""

    def __init__(
        self,
        url: str,
        *,
        basic_auth: str | None = None,
        compatibility: str = "BACKWARD",
        max_retries: int = 3,
        timeout_s: float = 10.0,
    ) -> None:
        self.url, auth = split_registry_url(url, basic_auth)
        self.level = check_level(compatibility)
        try:
            from confluent_kafka.schema_registry import SchemaRegistryClient
        except ImportError as exc:
            raise RegistryError(
                f"confluent_kafka.schema_registry can't be imported ({exc})",
                hint="pip install 'confluent-kafka[schemaregistry]'",
            ) from None
        conf: dict[str, Any] = {
            "url": self.url,
            "max.retries": max_retries,
            "retries.wait.ms": 200,
            "retries.max.wait.ms": 2000,
            "timeout": timeout_s,
            # Other processes register versions: don't trust a cached "latest" for long.
            "cache.latest.ttl.sec": 30,
        }
        if auth is not None:
            conf["basic.auth.user.info"] = auth
        try:
            self._client = SchemaRegistryClient(conf)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"schema registry client for {self.url}: {exc}") from None
        self._cache: dict[int, RegisteredSchema] = {}

    def _call(
        self,
        what: str,
        fn: Callable[..., _T],
        *args: object,
        subject: str | None = None,
        schema_id: int | None = None,
    ) -> _T:
        """``fn(*args)``, its vendor errors translated into nova's (see ``translate_registry_error``)."""
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        expected: tuple[type[BaseException], ...] = (SchemaRegistryError, *_transport_error_types())
        try:
            return fn(*args)
        except expected as exc:
            raise translate_registry_error(exc, url=self.url, what=what, subject=subject, schema_id=schema_id) from None

    def _avro(self, schema_str: str) -> Schema:
        from confluent_kafka.schema_registry import Schema

        return Schema(schema_str, "AVRO")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._client.__exit__(None, None, None)  # type: ignore[no-untyped-call]

    def subjects(self) -> list[str]:
        return sorted(self._call("list subjects", self._client.get_subjects))

    def versions(self, subject: str) -> list[int]:
        return sorted(self._call(f"list versions of '{subject}'", self._client.get_versions, subject, subject=subject))

    def latest(self, subject: str) -> SubjectVersion:
        rs = self._call(f"latest version of '{subject}'", self._client.get_latest_version, subject, subject=subject)
        if rs.schema_id is None or rs.version is None:
            raise RegistryError(
                f"latest version of '{subject}': schema registry {self.url} answered without an id or version",
                hint="is schema_registry.url a Confluent-compatible API (Apicurio: /apis/ccompat/v7)?",
            )
        return SubjectVersion(rs.schema_id, rs.version, self._remember(rs.schema_id, rs.schema))

    def get_schema(self, schema_id: int) -> RegisteredSchema:
        cached = self._cache.get(schema_id)
        if cached is not None:
            return cached
        schema = self._call(f"get schema id {schema_id}", self._client.get_schema, schema_id, schema_id=schema_id)
        return self._remember(schema_id, schema)

    def _remember(self, schema_id: int, schema: Schema) -> RegisteredSchema:
        """``schema`` (the server's answer for ``schema_id``) parsed, checked to be Avro, and cached."""
        if (schema.schema_type or "AVRO") != "AVRO":
            raise SchemaNotFoundError(f"schema id {schema_id} in {self.url} is {schema.schema_type}, not Avro")
        parsed = parse_schema(schema.schema_str or "", what=f"schema id {schema_id} from {self.url}")
        registered = RegisteredSchema(parsed.parsed, parsed.raw)
        self._cache[schema_id] = registered
        return registered

    def check(self, subject: str, schema_str: str) -> tuple[bool, list[str]]:
        parse_schema(schema_str, what=f"schema for subject '{subject}'")
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        test = (
            self._client.test_compatibility_all_versions
            if self.compatibility(subject).endswith("_TRANSITIVE")
            else self._client.test_compatibility
        )
        try:
            ok = test(subject, self._avro(schema_str), normalize=True)
        except SchemaRegistryError as exc:
            if exc.error_code == 40401:
                return True, []  # a new subject: nothing to be compatible with
            raise translate_registry_error(exc, url=self.url, what=f"check '{subject}'", subject=subject) from None
        except _transport_error_types() as exc:
            raise translate_registry_error(exc, url=self.url, what=f"check '{subject}'", subject=subject) from None
        return bool(ok), ([] if ok else self._why_incompatible(subject, schema_str))

    def _why_incompatible(self, subject: str, schema_str: str) -> list[str]:
        """Why the registry refused: its verbose compatibility answer, else nova's own checker's
        reasons against the versions the server compared with (best effort; the server's verdict
        stands either way)."""
        no_reason = ["the registry gave no reason"]
        # test_compatibility(verbose=True) drops the messages; ask the same endpoint directly.
        rest = getattr(self._client, "_rest_client", None)
        try:
            answer = rest.post(  # type: ignore[union-attr]
                f"compatibility/subjects/{quote(subject, safe='')}/versions/latest?verbose=true",
                body={"schema": schema_str, "schemaType": "AVRO"},
            )
            messages = [str(m) for m in answer.get("messages") or []]
        except Exception:  # diagnostics only: never hide the refusal itself
            messages = []
        if messages:
            return messages
        # Some Confluent-compatible servers (Apicurio's ccompat API) answer verbose=true without
        # messages: explain with the same checker the file registry uses.
        try:
            level = self.compatibility(subject)
            new_reads_old, old_reads_new = directions(level)
            new = parse_schema(schema_str, what=f"schema for subject '{subject}'")
            versions = self.versions(subject)
            against = versions if level.endswith("_TRANSITIVE") else versions[-1:]
            problems: list[str] = []
            for version in reversed(against):
                rs = self._client.get_version(subject, version)
                old = parse_schema(rs.schema.schema_str or "", what=f"version {version} of '{subject}'")
                problems += level_problems(new, old, f"version {version}", new_reads_old, old_reads_new)
            return problems or no_reason
        except Exception:  # diagnostics only, as above
            return no_reason

    def plan_register(self, subject: str, schema_str: str) -> RegisterPlan:
        parse_schema(schema_str, what=f"schema for subject '{subject}'")
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        what = f"look up schema in '{subject}'"
        try:
            found = self._client.lookup_schema(subject, self._avro(schema_str), normalize_schemas=True)
            return RegisterPlan(subject, "unchanged", found.schema_id, found.version)
        except SchemaRegistryError as exc:
            if exc.error_code == 40401:
                return RegisterPlan(subject, "create", None, 1)
            if exc.error_code != 40403:
                raise translate_registry_error(exc, url=self.url, what=what, subject=subject) from None
        except _transport_error_types() as exc:
            raise translate_registry_error(exc, url=self.url, what=what, subject=subject) from None
        next_version = max(self.versions(subject), default=0) + 1  # not the client's cached "latest"
        ok, messages = self.check(subject, schema_str)
        return RegisterPlan(subject, "new version", None, next_version, ok, tuple(messages))

    def register(self, subject: str, schema_str: str) -> int:
        parse_schema(schema_str, what=f"schema for subject '{subject}'")
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        what = f"register schema under '{subject}'"
        try:
            # normalize: the same schema in other whitespace or key order is the same schema, as in
            # the file registry (Confluent's server canonicalises anyway; Apicurio's needs asking).
            schema_id = int(self._client.register_schema(subject, self._avro(schema_str), normalize_schemas=True))
        except SchemaRegistryError as exc:
            err = translate_registry_error(exc, url=self.url, what=what, subject=subject)
            if isinstance(err, SchemaCompatibilityError):
                err = SchemaCompatibilityError(
                    err.message + " — " + "; ".join(self._why_incompatible(subject, schema_str)), hint=err.hint
                )
            raise err from None
        except _transport_error_types() as exc:
            raise translate_registry_error(exc, url=self.url, what=what, subject=subject) from None
        # The client caches "latest" per subject (cache.latest.ttl.sec): this instance's own new
        # version must show at once, not up to that many seconds later.
        self._client.clear_latest_caches()  # type: ignore[no-untyped-call]
        return schema_id

    def compatibility(self, subject: str | None = None) -> str:
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        what = f"get compatibility of '{subject}'" if subject else "get the default compatibility"
        try:
            if subject is None:
                return str(self._client.get_compatibility(None))
            # defaultToGlobal: the level in force. Without it a subject with no level of its own is
            # 40408 on Confluent's server, but "NONE" on Apicurio's (which still enforces the global one).
            answer = self._client._rest_client.get(f"config/{quote(subject, safe='')}", {"defaultToGlobal": "true"})
            return str(answer["compatibilityLevel"])
        except SchemaRegistryError as exc:
            if subject is not None and exc.error_code in (40401, 40408):  # no subject-level setting
                return self.compatibility(None)
            raise translate_registry_error(exc, url=self.url, what=what, subject=subject) from None
        except _transport_error_types() as exc:
            raise translate_registry_error(exc, url=self.url, what=what, subject=subject) from None

    def set_compatibility(self, level: str, subject: str | None = None) -> None:
        level = check_level(level)
        what = f"set compatibility of '{subject}'" if subject else "set the default compatibility"
        self._call(what, self._client.set_compatibility, subject, level, subject=subject)
        self.level = level
