"""Malformed messages for the dead-letter path: each kind fails in exactly one, known way.

``bad_magic_byte``, ``unknown_schema_id``, ``truncated`` and ``wrong_type`` are the decoder's
``DecodeError`` reasons; ``rule_violation`` decodes but breaks one of ``pipeline.rules`` (an
amount out of range, a currency not accepted, an event time too far ahead). Each is a valid
generated event, altered, so a correct ingest dead-letters every one with exactly that reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

from pipelines.contracts.registry import SchemaNotFoundError, SchemaRegistry
from pipelines.errors import RegistryError, UsageError
from pipelines.synth.model import TransactionGenerator

if TYPE_CHECKING:
    from pipelines.config import Settings

MALFORMED_KINDS: Final = ("bad_magic_byte", "unknown_schema_id", "truncated", "wrong_type", "rule_violation")


class MalformedMaker:
    """Messages for the dead-letter path, each failing in exactly one, known way."""

    def __init__(
        self,
        *,
        generator: TransactionGenerator,
        encode: Callable[[dict[str, Any]], bytes],
        unknown_schema_id: int,
        settings: Settings,
    ) -> None:
        self._records = (r for chunk in generator.chunks(256) for r in chunk.records())
        self._unknown_id = unknown_schema_id
        self._encode = encode
        rules = settings.pipeline.rules
        self._rules = rules
        self._bad_currency = next(c for c in ("XXX", "XXY", "XXZ", "ZZZ") if c not in rules.currencies)
        self._rule_turn = 0

    def make(self, kind: str) -> tuple[str, bytes]:
        """(key, value) of the next generated event, broken the way ``kind`` says."""
        record = next(self._records)
        key = record["card_id"]
        if kind == "rule_violation":
            return key, self._encode(self._break_rule(record))
        value = self._encode(record)
        if kind == "bad_magic_byte":
            return key, b"\x01" + value[1:]
        if kind == "unknown_schema_id":
            return key, b"\x00" + self._unknown_id.to_bytes(4, "big") + value[5:]
        if kind == "truncated":
            body = len(value) - 5
            return key, value[: 5 + body // 2]  # a prefix of a valid body: only running out of bytes can fail
        if kind == "wrong_type":
            return key, self._undecodable(value)
        raise UsageError(f"unknown malformed kind {kind!r}; choose from {', '.join(MALFORMED_KINDS)}")

    @staticmethod
    def _undecodable(value: bytes) -> bytes:
        # The valid message with its transaction_id's 36 characters replaced by bytes that are
        # never UTF-8 (0xFF): the length prefix and every later field stay in place, so the
        # decoder fails on the type of the very first field, not by running out of bytes. (For
        # a schema that doesn't start with the 36-character id: trailing bytes after a complete
        # record, which a decoder must refuse too.)
        if len(value) > 42 and value[5] == 72:  # zigzag varint of the length 36
            return value[:6] + b"\xff" * 36 + value[42:]
        return value + b"\xff\xff\xff\xff"

    def _break_rule(self, record: dict[str, Any]) -> dict[str, Any]:
        """The record with one rule broken, taking turns: amount, currency, event time."""
        turn = self._rule_turn % 3
        self._rule_turn += 1
        record = dict(record)
        if turn == 0:
            low = self._rules.min_amount_minor - 1
            record["amount_minor"] = low if low >= -(2**63) else self._rules.max_amount_minor + 1
        elif turn == 1:
            record["currency"] = self._bad_currency
        else:
            ahead_ms = self._rules.max_future_s * 1000 + 86_400_000
            record["event_time"] = int(time.time() * 1000) + ahead_ms
        return record


def check_malformed(malformed: Mapping[str, int] | None) -> dict[str, int]:
    """The mix with every kind (0 where not asked for); UsageError naming an unknown kind or a bad count."""
    wanted = {k: 0 for k in MALFORMED_KINDS}
    for kind, n in (malformed or {}).items():
        if kind not in wanted:
            raise UsageError(f"unknown malformed kind {kind!r}", hint=f"choose from {', '.join(MALFORMED_KINDS)}")
        if not isinstance(n, int) or n < 0:
            raise UsageError(f"malformed count for {kind} must be a non-negative integer, got {n!r}")
        wanted[kind] = n
    return wanted


def find_unknown_schema_id(registry: SchemaRegistry) -> int:
    """An id the registry has no schema for (999999 unless, improbably, it has one)."""
    for candidate in (999_999, 999_998, 2**31 - 1, 123_456_789):
        try:
            registry.get_schema(candidate)
        except SchemaNotFoundError:
            return candidate
    raise RegistryError("could not find a schema id the registry does not know, for unknown_schema_id")
