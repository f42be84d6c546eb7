"""The file registry: subjects, versions and ids pinned in ``DIR/registry.yaml``, schemas in ``DIR/*.avsc``.

Both files are committed to git, so every producer and consumer sees the same ids without a server,
and a schema change is a reviewed diff. ``register`` checks compatibility here (``compat``), then
writes the new ``.avsc`` and the updated ``registry.yaml`` atomically, under a lock on the
directory so concurrent ``nova provision`` runs can't hand out one id twice. Another process's
registration is picked up when ``registry.yaml`` changes on disk.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import yaml

from pipelines.contracts.registry.base import (
    PlanAction,
    RegisteredSchema,
    RegisterPlan,
    SchemaNotFoundError,
    SchemaRegistry,
    SubjectVersion,
)
from pipelines.contracts.registry.compat import (
    ParsedSchema,
    check_level,
    directions,
    level_problems,
    parse_schema,
    refusal,
)
from pipelines.errors import ConfigError, RegistryError

REGISTRY_FILE: Final = "registry.yaml"
_HEADER_COMMENT: Final = """\
# nova's file schema registry (schema_registry.url: file://<this directory>), pinned in git.
# Each subject lists its versions in order: the global schema id producers put in the Confluent
# wire header, and the .avsc file (in this directory) holding the schema. Ids are never reused or
# renumbered. New versions are appended by pipelines.contracts.registry (nova provision) after a
# compatibility check; edit by hand only to fix what that wrote.
"""


@dataclass
class _Entry:
    """One line of ``registry.yaml``: a subject's version, its global id and the file holding it."""

    version: int
    id: int
    file: str


@dataclass
class _State:
    """``registry.yaml`` as last read, with the file's (mtime, size) to notice another process's write."""

    subjects: dict[str, list[_Entry]] = field(default_factory=dict)
    by_id: dict[int, ParsedSchema] = field(default_factory=dict)
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
        self.level = check_level(compatibility)
        if not self.directory.is_dir():
            raise ConfigError(
                f"schema registry directory {self.directory} does not exist",
                hint="check schema_registry.url (file://DIR, relative to the project root)",
            )
        self._state = self._read()

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
        files: dict[str, ParsedSchema] = {}
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

    def _entry(self, raw: object, key: str) -> _Entry:
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

    def _load_file(self, name: str, key: str) -> ParsedSchema:
        path = self.directory / name
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(
                f"{self.path}: '{key}' names {path}, which can't be read ({exc.strerror})",
                hint="restore the file from git or fix the name",
            ) from None
        try:
            return parse_schema(text, what=str(path))
        except RegistryError as exc:
            raise ConfigError(exc.message, hint=exc.hint) from None

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
        self.level = check_level(level)

    def _problems(self, subject: str, new: ParsedSchema, state: _State) -> tuple[list[str], list[tuple[int, int]]]:
        entries = state.subjects.get(subject) or []
        if not entries or self.level == "NONE":
            return [], []
        against = entries if self.level.endswith("_TRANSITIVE") else entries[-1:]
        new_reads_old, old_reads_new = directions(self.level)
        problems: list[str] = []
        failed: list[tuple[int, int]] = []
        for entry in reversed(against):
            found = level_problems(new, state.by_id[entry.id], f"version {entry.version}", new_reads_old, old_reads_new)
            if found:
                failed.append((entry.version, entry.id))
                problems += found
        return problems, failed

    def check(self, subject: str, schema_str: str) -> tuple[bool, list[str]]:
        new = parse_schema(schema_str, what=f"schema for subject '{subject}'")
        self._refresh_if_changed()
        problems, _ = self._problems(subject, new, self._state)
        return not problems, problems

    def _plan(self, subject: str, new: ParsedSchema, state: _State) -> RegisterPlan:
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
        self, subject: str, entries: list[_Entry], version: int, schema_id: int, new: ParsedSchema, state: _State
    ) -> str:
        for entries_of in state.subjects.values():
            for e in entries_of:
                if e.id == schema_id:
                    return e.file
        match = re.fullmatch(r"(.+)-v\d+\.avsc", entries[-1].file) if entries else None
        stem = match.group(1) if match else re.sub(r"[^A-Za-z0-9._-]+", "_", subject)
        return f"{stem}-v{version}.avsc"

    def plan_register(self, subject: str, schema_str: str) -> RegisterPlan:
        new = parse_schema(schema_str, what=f"schema for subject '{subject}'")
        self._refresh_if_changed()
        return self._plan(subject, new, self._state)

    def register(self, subject: str, schema_str: str) -> int:
        new = parse_schema(schema_str, what=f"schema for subject '{subject}'")
        with self._locked():
            state = self._read()  # what is on disk now, not what this instance saw earlier
            plan = self._plan(subject, new, state)
            if plan.action == "unchanged":
                self._state = state
                assert plan.id is not None  # an unchanged schema always has its id
                return plan.id
            if not plan.compatible:
                _, failed = self._problems(subject, new, state)
                raise refusal(subject, self.level, failed, list(plan.messages))
            assert plan.id is not None and plan.version is not None and plan.file is not None
            self._write_schema_file(plan.file, new)
            subjects = {name: list(entries) for name, entries in state.subjects.items()}
            subjects.setdefault(subject, []).append(_Entry(plan.version, plan.id, plan.file))
            _atomic_write(self.path, _render_registry_yaml(subjects))
            self._state = self._read()
        return plan.id

    def _write_schema_file(self, name: str, new: ParsedSchema) -> None:
        path = self.directory / name
        if path.exists():
            try:
                existing = parse_schema(path.read_text(), what=str(path))
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
