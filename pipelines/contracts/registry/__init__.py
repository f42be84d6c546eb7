"""Schema registry: one interface, two implementations chosen by `schema_registry.url`.

- ``file://DIR`` — ``FileRegistry``: subjects, versions and ids pinned in ``DIR/registry.yaml`` and
  committed to git with the ``.avsc`` files it names. Registering checks compatibility with the
  ``avro`` package's checker, then writes the new ``.avsc`` and the updated ``registry.yaml``.
- ``http(s)://…`` — ``HttpRegistry``: any Confluent-compatible registry through
  ``confluent_kafka.schema_registry.SchemaRegistryClient``; the server checks compatibility.

Both behave like Confluent's registry: a schema id is global (the same schema in two subjects has
one id; two different schemas never share one), a version counts per subject, registering a schema
the subject already has returns its id and changes nothing, and a new version must be compatible
with the latest one (or with all of them for ``*_TRANSITIVE``) under the subject's level:

- ``BACKWARD``: the new schema can read data written with the latest (consumers upgrade first);
- ``FORWARD``: the latest can read data written with the new schema (producers upgrade first);
- ``FULL``: both; ``NONE``: no check.

Vendor errors (connection refused, HTTP 404/409/401…) are translated into ``RegistryError``,
``SchemaNotFoundError`` and ``SchemaCompatibilityError``.
"""

from __future__ import annotations

import abc
import contextlib
import fcntl
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import fastavro
import yaml

from pipelines.errors import ConfigError, NovaError, RegistryError, SchemaCompatibilityError

if TYPE_CHECKING:
    import avro.schema

    from pipelines.config import Settings

REGISTRY_FILE: Final = "registry.yaml"
COMPATIBILITY_LEVELS: Final = (
    "BACKWARD",
    "BACKWARD_TRANSITIVE",
    "FORWARD",
    "FORWARD_TRANSITIVE",
    "FULL",
    "FULL_TRANSITIVE",
    "NONE",
)
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


def open_registry(settings: Settings, **kwargs: Any) -> SchemaRegistry:
    """The registry `settings.schema_registry.url` names (file:// relative to the project root)."""
    cfg = settings.schema_registry
    if cfg.url.startswith("file://"):
        return FileRegistry(settings.resolve(cfg.url[len("file://") :]), compatibility=cfg.compatibility)
    return HttpRegistry(cfg.url, basic_auth=cfg.basic_auth, compatibility=cfg.compatibility, **kwargs)


# --- schemas and compatibility (shared) ------------------------------------------------------


@dataclass(frozen=True)
class _Parsed:
    raw: str
    avro: avro.schema.Schema
    parsed: dict[str, Any]
    canonical: str


def _parse(schema_str: str, *, what: str) -> _Parsed:
    """Parse with both libraries (avro for the checker, fastavro for codecs); RegistryError if invalid."""
    import avro.errors
    import avro.schema

    try:
        as_json = json.loads(schema_str)
    except (json.JSONDecodeError, TypeError) as exc:
        raise RegistryError(f"{what} is not valid JSON: {exc}", hint="fix the .avsc text") from None
    try:
        avro_schema = avro.schema.parse(schema_str)
        parsed = fastavro.parse_schema(as_json)
    except (avro.errors.AvroException, fastavro.schema.SchemaParseException, ValueError, TypeError, KeyError) as exc:
        raise RegistryError(f"{what} is not a valid Avro schema: {exc}", hint="fix the .avsc text") from None
    return _Parsed(schema_str, avro_schema, parsed, canonical_form(avro_schema))  # type: ignore[arg-type]


def canonical_form(schema: avro.schema.Schema) -> str:
    """A normal form for "is it the same schema": whitespace, key order and name shorthand don't matter,
    but docs, defaults, aliases and logical types do (as for Confluent's registry)."""
    return json.dumps(schema.to_json(), sort_keys=True, separators=(",", ":"))


def _directions(level: str) -> tuple[bool, bool]:
    """(new must read old, old must read new) for a level."""
    base = level.removesuffix("_TRANSITIVE")
    return base in ("BACKWARD", "FULL"), base in ("FORWARD", "FULL")


def _field_path(schema: avro.schema.Schema, location: str) -> str | None:
    """'/fields/6/type' → 'amount_minor' (walking nested records, arrays, maps and unions)."""
    names: list[str] = []
    node: Any = schema
    tokens = [t for t in location.split("/") if t]
    try:
        k = 0
        while k < len(tokens):
            token = tokens[k]
            if token == "fields":
                fld = node.fields[int(tokens[k + 1])]
                names.append(fld.name)
                node = fld
                k += 2
                continue
            if token == "type":
                node = node.type
            elif token == "items":
                node = node.items
            elif token == "values":
                node = node.values
            elif token.isdigit() and hasattr(node, "schemas"):
                node = node.schemas[int(token)]
            k += 1
    except (AttributeError, IndexError, ValueError):
        pass
    return ".".join(names) or None


def _explain(kind: str, msg: str, reader: str, writer: str) -> str:
    if kind == "reader_field_missing_default_value":
        return f"{reader} has it without a default, and {writer} doesn't write it"
    if kind == "type_mismatch":
        m = re.match(r"reader type: (\S+) not compatible with writer type: (\S+)", msg)
        if m:
            return f"{reader}'s {m.group(1)} can't read {writer}'s {m.group(2)}"
    if kind == "missing_union_branch":
        m = re.search(r"writer type:? (\S+)", msg)
        if m:
            return f"{reader}'s union has no branch for {writer}'s {m.group(1).lower()}"
    if kind == "missing_enum_symbols":
        return f"{writer} has enum symbol(s) {msg} that {reader} lacks (and {reader}'s enum has no default)"
    if kind == "name_mismatch":
        return f"a named type was renamed ({msg}); keep the name or add the old one to 'aliases'"
    if kind == "fixed_size_mismatch":
        return f"a fixed type changed size ({msg})"
    return f"{msg} ({reader} reading {writer})"


def _describe(result: Any, schema: Any, reader: str, writer: str, prefix: str | None = None) -> str:
    """One line for an incompatible SchemaCompatibilityResult of ``schema`` (the reader side)."""
    kinds = sorted({kind.value for kind in result.incompatibilities})
    # The checker starts every result at location "/", so it is noise once a real one is known.
    locations = sorted(loc for loc in result.locations if loc != "/") or ["/"]
    paths = []
    for loc in locations:
        path = ".".join(p for p in (prefix, _field_path(schema, loc)) if p)
        if path and path not in paths:
            paths.append(path)
    where = ", ".join(f"field '{p}'" for p in paths) or "the top-level type"
    msgs = sorted(result.messages)
    if len(kinds) == 1 and len(msgs) == 1:
        return f"{where}: {_explain(kinds[0], msgs[0], reader, writer)} [{kinds[0]}]"
    return f"{where}: " + "; ".join(msgs) + f" ({reader} reading {writer}) [{', '.join(kinds)}]"


def _compat_problems(new_reader: _Parsed, old_writer: _Parsed, reader_label: str, writer_label: str) -> list[str]:
    """Why ``new_reader`` can't read data written with ``old_writer``, one line per top-level field."""
    from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType, lookup_writer_field

    incompatible = SchemaCompatibilityType.incompatible
    reader, writer = new_reader.avro, old_writer.avro
    result = ReaderWriterCompatibilityChecker().get_compatibility(reader, writer)
    if result.compatibility is not incompatible:
        return []
    # The checker's verdict is the one that counts; it merges several problems into one bag of
    # messages and locations, so for records the fields are checked one by one to pair each
    # problem with its field.
    problems: list[str] = []
    same_name = getattr(reader, "fullname", None) == getattr(writer, "fullname", None)
    if reader.type == "record" and writer.type == "record" and same_name:
        for fld in reader.fields:  # type: ignore[attr-defined]
            other = lookup_writer_field(writer, fld)  # type: ignore[arg-type]
            if other is None:
                if not fld.has_default:
                    why = _explain("reader_field_missing_default_value", fld.name, reader_label, writer_label)
                    problems.append(f"field '{fld.name}': {why} [reader_field_missing_default_value]")
                continue
            sub = ReaderWriterCompatibilityChecker().get_compatibility(fld.type, other.type)
            if sub.compatibility is incompatible:
                problems.append(_describe(sub, fld.type, reader_label, writer_label, prefix=fld.name))
    return problems or [_describe(result, reader, reader_label, writer_label)]


def _level_problems(new: _Parsed, old: _Parsed, label: str, new_reads_old: bool, old_reads_new: bool) -> list[str]:
    """Why ``new`` can't follow ``old`` (called ``label``) in the directions a level asks for."""
    found: list[str] = []
    if new_reads_old:
        found += _compat_problems(new, old, "the new schema", label)
    if old_reads_new:
        found += _compat_problems(old, new, label, "the new schema")
    return found


def _fix_hint(level: str) -> str:
    new_reads_old, old_reads_new = _directions(level)
    rules = []
    if new_reads_old:
        rules.append(
            "so the new schema reads existing data: give added fields a default, keep field types "
            "(or only promote int→long→float→double, string↔bytes), don't drop enum symbols"
        )
    if old_reads_new:
        rules.append(
            "so existing readers read new data: only remove fields that have a default, don't add "
            "enum symbols or union branches they lack"
        )
    return "; ".join(rules) + "; or put the breaking change under a new subject (a new topic)"


def _refusal(subject: str, level: str, against: list[tuple[int, int]], messages: list[str]) -> SchemaCompatibilityError:
    versions = ", ".join(f"version {v} (id {i})" for v, i in against) or "its existing versions"
    return SchemaCompatibilityError(
        f"new schema for subject '{subject}' is not {level} compatible with {versions}: " + "; ".join(messages),
        hint=_fix_hint(level),
    )


# --- file registry ---------------------------------------------------------------------------

_HEADER_COMMENT: Final = """\
# nova's file schema registry (schema_registry.url: file://<this directory>), pinned in git.
# Each subject lists its versions in order: the global schema id producers put in the Confluent
# wire header, and the .avsc file (in this directory) holding the schema. Ids are never reused or
# renumbered. New versions are appended by pipelines.contracts.registry (nova provision) after a
# compatibility check; edit by hand only to fix what that wrote.
"""


@dataclass
class _Entry:
    version: int
    id: int
    file: str


@dataclass
class _State:
    subjects: dict[str, list[_Entry]] = field(default_factory=dict)
    by_id: dict[int, _Parsed] = field(default_factory=dict)
    registered: dict[int, RegisteredSchema] = field(default_factory=dict)
    stamp: tuple[int, int] | None = None


class FileRegistry(SchemaRegistry):
    """Subjects and ids pinned in ``DIR/registry.yaml``; schemas in ``DIR/*.avsc``.

    The compatibility level comes from the configuration (``schema_registry.compatibility``);
    ``set_compatibility`` changes it for this instance only.
    """

    def __init__(self, directory: str | Path, *, compatibility: str = "BACKWARD") -> None:
        self.directory = Path(directory)
        self.path = self.directory / REGISTRY_FILE
        self.url = f"file://{self.directory}"
        self.level = _check_level(compatibility)
        if not self.directory.is_dir():
            raise ConfigError(
                f"schema registry directory {self.directory} does not exist",
                hint="check schema_registry.url (file://DIR, relative to the project root)",
            )
        self._state = self._read()

    # -- reading

    def _stamp(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return st.st_mtime_ns, st.st_size

    def _refresh_if_changed(self) -> None:
        if self._stamp() != self._state.stamp:
            self._state = self._read()

    def _read(self) -> _State:
        state = _State(stamp=self._stamp())
        if state.stamp is None:
            return state  # an empty registry: the first register() creates the file
        where = str(self.path)
        try:
            doc = yaml.safe_load(self.path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{where}: invalid YAML ({exc})", hint="fix the syntax") from None
        if doc is None:
            return state
        if not isinstance(doc, dict) or set(doc) - {"subjects"}:
            raise ConfigError(
                f"{where}: expected one top-level key 'subjects'",
                hint="write subjects: {SUBJECT: [{version: 1, id: 1, file: NAME.avsc}, ...]}",
            )
        subjects = doc.get("subjects") or {}
        if not isinstance(subjects, dict):
            raise ConfigError(f"{where}: 'subjects' must map subject names to lists of versions")
        files: dict[str, _Parsed] = {}
        for subject, entries in subjects.items():
            key = f"subjects.{subject}"
            if not isinstance(entries, list) or not entries:
                raise ConfigError(f"{where}: '{key}' must be a non-empty list of {{version, id, file}}")
            parsed_entries: list[_Entry] = []
            for k, raw in enumerate(entries):
                entry = self._entry(raw, f"{key}[{k}]")
                if parsed_entries and entry.version <= parsed_entries[-1].version:
                    raise ConfigError(
                        f"{where}: '{key}[{k}].version' is {entry.version} after version {parsed_entries[-1].version}",
                        hint="versions must be listed in increasing order, each once",
                    )
                if entry.file not in files:
                    files[entry.file] = self._load_file(entry.file, f"{key}[{k}].file")
                schema = files[entry.file]
                known = state.by_id.get(entry.id)
                if known is not None and known.canonical != schema.canonical:
                    raise ConfigError(
                        f"{where}: '{key}[{k}].id' {entry.id} is already the id of a different schema",
                        hint="an id names one schema: give this version the next unused id",
                    )
                if any(e.id == entry.id for e in parsed_entries):
                    raise ConfigError(
                        f"{where}: '{key}[{k}].id' {entry.id} is listed twice for subject '{subject}'",
                        hint="a subject holds each schema once",
                    )
                state.by_id[entry.id] = schema
                parsed_entries.append(entry)
            state.subjects[str(subject)] = parsed_entries
        return state

    def _entry(self, raw: Any, key: str) -> _Entry:
        where = str(self.path)
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: '{key}' must be a mapping {{version: N, id: N, file: NAME.avsc}}")
        unknown = set(raw) - {"version", "id", "file"}
        if unknown:
            raise ConfigError(
                f"{where}: '{key}' has unknown key(s) {sorted(unknown)}", hint="keep version, id and file"
            )
        for name in ("version", "id"):
            value = raw.get(name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{where}: '{key}.{name}' must be a positive integer (got {value!r})")
        file = raw.get("file")
        if not isinstance(file, str) or not file or Path(file).is_absolute() or ".." in Path(file).parts:
            raise ConfigError(f"{where}: '{key}.file' must name an .avsc file in {self.directory} (got {file!r})")
        return _Entry(raw["version"], raw["id"], file)

    def _load_file(self, name: str, key: str) -> _Parsed:
        path = self.directory / name
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(
                f"{self.path}: '{key}' names {path}, which can't be read ({exc.strerror})",
                hint="restore the file from git or fix the name",
            ) from None
        try:
            return _parse(text, what=str(path))
        except RegistryError as exc:
            raise ConfigError(exc.message, hint=exc.hint) from None

    # -- queries

    def subjects(self) -> list[str]:
        self._refresh_if_changed()
        return sorted(self._state.subjects)

    def _entries(self, subject: str) -> list[_Entry]:
        self._refresh_if_changed()
        entries = self._state.subjects.get(subject)
        if not entries:
            raise SchemaNotFoundError(
                f"subject '{subject}' is not in {self.path}", hint="register it first (nova provision)"
            )
        return entries

    def versions(self, subject: str) -> list[int]:
        return [e.version for e in self._entries(subject)]

    def latest(self, subject: str) -> SubjectVersion:
        entry = self._entries(subject)[-1]
        return SubjectVersion(entry.id, entry.version, self.get_schema(entry.id))

    def get_schema(self, schema_id: int) -> RegisteredSchema:
        cached = self._state.registered.get(schema_id)
        if cached is not None:
            return cached
        if schema_id not in self._state.by_id:
            self._refresh_if_changed()  # another process may have registered it
        schema = self._state.by_id.get(schema_id)
        if schema is None:
            raise SchemaNotFoundError(f"no schema with id {schema_id} in {self.path}")
        registered = RegisteredSchema(schema.parsed, schema.raw)
        self._state.registered[schema_id] = registered
        return registered

    def compatibility(self, subject: str | None = None) -> str:
        return self.level

    def set_compatibility(self, level: str, subject: str | None = None) -> None:
        self.level = _check_level(level)

    # -- compatibility and registration

    def _problems(self, subject: str, new: _Parsed, state: _State) -> tuple[list[str], list[tuple[int, int]]]:
        entries = state.subjects.get(subject) or []
        if not entries or self.level == "NONE":
            return [], []
        against = entries if self.level.endswith("_TRANSITIVE") else entries[-1:]
        new_reads_old, old_reads_new = _directions(self.level)
        problems: list[str] = []
        failed: list[tuple[int, int]] = []
        for entry in reversed(against):
            found = _level_problems(
                new, state.by_id[entry.id], f"version {entry.version}", new_reads_old, old_reads_new
            )
            if found:
                failed.append((entry.version, entry.id))
                problems += found
        return problems, failed

    def check(self, subject: str, schema_str: str) -> tuple[bool, list[str]]:
        new = _parse(schema_str, what=f"schema for subject '{subject}'")
        self._refresh_if_changed()
        problems, _ = self._problems(subject, new, self._state)
        return not problems, problems

    def _plan(self, subject: str, new: _Parsed, state: _State) -> RegisterPlan:
        entries = state.subjects.get(subject) or []
        for entry in entries:
            if state.by_id[entry.id].canonical == new.canonical:
                return RegisterPlan(subject, "unchanged", entry.id, entry.version, file=entry.file)
        # Like Confluent: a schema already registered under another subject keeps its id.
        same = [i for i, s in state.by_id.items() if s.canonical == new.canonical]
        schema_id = min(same) if same else max(state.by_id, default=0) + 1
        version = entries[-1].version + 1 if entries else 1
        file = self._file_for(subject, entries, version, schema_id, new, state)
        problems, _ = self._problems(subject, new, state)
        action: PlanAction = "new version" if entries else "create"
        return RegisterPlan(subject, action, schema_id, version, not problems, tuple(problems), file)

    def _file_for(
        self, subject: str, entries: list[_Entry], version: int, schema_id: int, new: _Parsed, state: _State
    ) -> str:
        for entries_of in state.subjects.values():
            for e in entries_of:
                if e.id == schema_id:
                    return e.file
        match = re.fullmatch(r"(.+)-v\d+\.avsc", entries[-1].file) if entries else None
        stem = match.group(1) if match else re.sub(r"[^A-Za-z0-9._-]+", "_", subject)
        return f"{stem}-v{version}.avsc"

    def plan_register(self, subject: str, schema_str: str) -> RegisterPlan:
        new = _parse(schema_str, what=f"schema for subject '{subject}'")
        self._refresh_if_changed()
        return self._plan(subject, new, self._state)

    def register(self, subject: str, schema_str: str) -> int:
        new = _parse(schema_str, what=f"schema for subject '{subject}'")
        with self._locked():
            state = self._read()  # what is on disk now, not what this instance saw earlier
            plan = self._plan(subject, new, state)
            if plan.action == "unchanged":
                self._state = state
                return plan.id  # type: ignore[return-value]
            if not plan.compatible:
                _, failed = self._problems(subject, new, state)
                raise _refusal(subject, self.level, failed, list(plan.messages))
            assert plan.id is not None and plan.version is not None and plan.file is not None
            self._write_schema_file(plan.file, new)
            subjects = {name: list(entries) for name, entries in state.subjects.items()}
            subjects.setdefault(subject, []).append(_Entry(plan.version, plan.id, plan.file))
            _atomic_write(self.path, _render_registry_yaml(subjects))
            self._state = self._read()
        return plan.id

    def _write_schema_file(self, name: str, new: _Parsed) -> None:
        path = self.directory / name
        if path.exists():
            try:
                existing = _parse(path.read_text(), what=str(path))
            except RegistryError:
                existing = None
            if existing is not None and existing.canonical == new.canonical:
                return  # e.g. left by a register() that crashed before updating registry.yaml
            raise RegistryError(
                f"{path} exists and holds a different schema; registry.yaml would point the new version at it",
                hint="rename or remove that file (it is not in registry.yaml), then register again",
            )
        text = new.raw if new.raw.endswith("\n") else new.raw + "\n"
        _atomic_write(path, text)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise registrations across processes (a lock on the directory itself: no lock file)."""
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def _render_registry_yaml(subjects: dict[str, list[_Entry]]) -> str:
    body = {
        "subjects": {
            name: [{"version": e.version, "id": e.id, "file": e.file} for e in entries]
            for name, entries in subjects.items()
        }
    }
    return _HEADER_COMMENT + yaml.safe_dump(body, sort_keys=False, default_flow_style=None, width=200)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _check_level(level: str) -> str:
    if level not in COMPATIBILITY_LEVELS:
        raise ConfigError(
            f"unknown compatibility level {level!r}", hint=f"use one of {', '.join(COMPATIBILITY_LEVELS)}"
        )
    return level


# --- http registry ---------------------------------------------------------------------------


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
        self.level = _check_level(compatibility)
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

    def _call(self, what: str, fn: Any, *args: Any, subject: str | None = None, schema_id: int | None = None) -> Any:
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        expected: tuple[type[BaseException], ...] = (SchemaRegistryError, *_transport_error_types())
        try:
            return fn(*args)
        except expected as exc:
            raise translate_registry_error(exc, url=self.url, what=what, subject=subject, schema_id=schema_id) from None

    def _avro(self, schema_str: str) -> Any:
        from confluent_kafka.schema_registry import Schema

        return Schema(schema_str, "AVRO")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._client.__exit__(None, None, None)

    def subjects(self) -> list[str]:
        return sorted(self._call("list subjects", self._client.get_subjects))

    def versions(self, subject: str) -> list[int]:
        return sorted(self._call(f"list versions of '{subject}'", self._client.get_versions, subject, subject=subject))

    def latest(self, subject: str) -> SubjectVersion:
        rs = self._call(f"latest version of '{subject}'", self._client.get_latest_version, subject, subject=subject)
        return SubjectVersion(rs.schema_id, rs.version, self._remember(rs.schema_id, rs.schema))

    def get_schema(self, schema_id: int) -> RegisteredSchema:
        cached = self._cache.get(schema_id)
        if cached is not None:
            return cached
        schema = self._call(f"get schema id {schema_id}", self._client.get_schema, schema_id, schema_id=schema_id)
        return self._remember(schema_id, schema)

    def _remember(self, schema_id: int, schema: Any) -> RegisteredSchema:
        if (schema.schema_type or "AVRO") != "AVRO":
            raise SchemaNotFoundError(f"schema id {schema_id} in {self.url} is {schema.schema_type}, not Avro")
        parsed = _parse(schema.schema_str, what=f"schema id {schema_id} from {self.url}")
        registered = RegisteredSchema(parsed.parsed, parsed.raw)
        self._cache[schema_id] = registered
        return registered

    def check(self, subject: str, schema_str: str) -> tuple[bool, list[str]]:
        _parse(schema_str, what=f"schema for subject '{subject}'")
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
            new_reads_old, old_reads_new = _directions(level)
            new = _parse(schema_str, what=f"schema for subject '{subject}'")
            versions = self.versions(subject)
            against = versions if level.endswith("_TRANSITIVE") else versions[-1:]
            problems: list[str] = []
            for version in reversed(against):
                rs = self._client.get_version(subject, version)
                old = _parse(rs.schema.schema_str or "", what=f"version {version} of '{subject}'")
                problems += _level_problems(new, old, f"version {version}", new_reads_old, old_reads_new)
            return problems or no_reason
        except Exception:  # diagnostics only, as above
            return no_reason

    def plan_register(self, subject: str, schema_str: str) -> RegisterPlan:
        _parse(schema_str, what=f"schema for subject '{subject}'")
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
        _parse(schema_str, what=f"schema for subject '{subject}'")
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
        self._client.clear_latest_caches()
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
        level = _check_level(level)
        what = f"set compatibility of '{subject}'" if subject else "set the default compatibility"
        self._call(what, self._client.set_compatibility, subject, level, subject=subject)
        self.level = level
