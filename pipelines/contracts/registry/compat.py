"""Schema parsing and compatibility checks, shared by both registries.

The verdict is the ``avro`` package's ``ReaderWriterCompatibilityChecker`` (the reference
implementation of Avro's resolution rules, as Confluent's registry applies them); fastavro parses
the same text for the codecs. What is added here is the explanation: the checker merges every
problem of a record into one bag of messages and locations, so records are re-checked field by
field to name each broken field and say, in the level's terms, how to fix it.

The file registry decides with these checks; the http registry's server decides, and these only
explain its refusal when the server (Apicurio's ccompat API) gives no reason.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import fastavro

from pipelines.errors import ConfigError, RegistryError, SchemaCompatibilityError

if TYPE_CHECKING:
    import avro.schema
    from avro.compatibility import SchemaCompatibilityResult

COMPATIBILITY_LEVELS: Final = (
    "BACKWARD",
    "BACKWARD_TRANSITIVE",
    "FORWARD",
    "FORWARD_TRANSITIVE",
    "FULL",
    "FULL_TRANSITIVE",
    "NONE",
)


@dataclass(frozen=True)
class ParsedSchema:
    """One schema text parsed by both libraries, with its canonical form for "is it the same schema"."""

    raw: str
    avro: avro.schema.Schema
    parsed: dict[str, Any]
    canonical: str


def parse_schema(schema_str: str, *, what: str) -> ParsedSchema:
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
    return ParsedSchema(schema_str, avro_schema, parsed, canonical_form(avro_schema))  # type: ignore[arg-type]


def canonical_form(schema: avro.schema.Schema) -> str:
    """A normal form for "is it the same schema": whitespace, key order and name shorthand don't matter,
    but docs, defaults, aliases and logical types do (as for Confluent's registry)."""
    return json.dumps(schema.to_json(), sort_keys=True, separators=(",", ":"))


def check_level(level: str) -> str:
    """``level`` if it is a compatibility level both registries know; ConfigError naming the choices if not."""
    if level not in COMPATIBILITY_LEVELS:
        raise ConfigError(
            f"unknown compatibility level {level!r}", hint=f"use one of {', '.join(COMPATIBILITY_LEVELS)}"
        )
    return level


def directions(level: str) -> tuple[bool, bool]:
    """(new must read old, old must read new) for a level."""
    base = level.removesuffix("_TRANSITIVE")
    return base in ("BACKWARD", "FULL"), base in ("FORWARD", "FULL")


def _field_path(schema: avro.schema.Schema, location: str) -> str | None:
    """'/fields/6/type' → 'amount_minor' (walking nested records, arrays, maps and unions)."""
    names: list[str] = []
    # The checker's locations walk every kind of avro schema node (fields, unions, arrays, maps),
    # which share no base class with these attributes: probe them.
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
    """The checker's message for one incompatibility kind, said in terms of the two schemas' roles."""
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


def _describe(
    result: SchemaCompatibilityResult,
    schema: avro.schema.Schema,
    reader: str,
    writer: str,
    prefix: str | None = None,
) -> str:
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


def _compat_problems(
    new_reader: ParsedSchema, old_writer: ParsedSchema, reader_label: str, writer_label: str
) -> list[str]:
    """Why ``new_reader`` can't read data written with ``old_writer``, one line per top-level field."""
    from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType, lookup_writer_field

    incompatible = SchemaCompatibilityType.incompatible
    reader, writer = new_reader.avro, old_writer.avro
    # (the avro package leaves the checker's __init__ unannotated: no-untyped-call)
    result = ReaderWriterCompatibilityChecker().get_compatibility(reader, writer)  # type: ignore[no-untyped-call]
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
            sub = ReaderWriterCompatibilityChecker().get_compatibility(fld.type, other.type)  # type: ignore[no-untyped-call]
            if sub.compatibility is incompatible:
                problems.append(_describe(sub, fld.type, reader_label, writer_label, prefix=fld.name))
    return problems or [_describe(result, reader, reader_label, writer_label)]


def level_problems(
    new: ParsedSchema, old: ParsedSchema, label: str, new_reads_old: bool, old_reads_new: bool
) -> list[str]:
    """Why ``new`` can't follow ``old`` (called ``label``) in the directions a level asks for."""
    found: list[str] = []
    if new_reads_old:
        found += _compat_problems(new, old, "the new schema", label)
    if old_reads_new:
        found += _compat_problems(old, new, label, "the new schema")
    return found


def _fix_hint(level: str) -> str:
    new_reads_old, old_reads_new = directions(level)
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


def refusal(subject: str, level: str, against: list[tuple[int, int]], messages: list[str]) -> SchemaCompatibilityError:
    """The error for a schema ``subject`` refuses: the (version, id) pairs it broke, why, and the level's fix."""
    versions = ", ".join(f"version {v} (id {i})" for v, i in against) or "its existing versions"
    return SchemaCompatibilityError(
        f"new schema for subject '{subject}' is not {level} compatible with {versions}: " + "; ".join(messages),
        hint=_fix_hint(level),
    )
