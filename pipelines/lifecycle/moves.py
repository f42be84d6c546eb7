"""One partition's move, step by step through the journal: copy, verify, drop the source, commit.

Every step checks instead of trusting: a copy is redone only when the destination still has its
fingerprint from before (otherwise it must already hold exactly the copy, or the move fails),
verification recomputes both sides (a cold copy is read back from the object store), and the
source is dropped only while it holds nothing newer than what was copied (its parts' block numbers
are at most the ones recorded when the move was planned). So a run killed at any instant is
finished by the next one without losing or doubling a row.

`TIER_MIGRATE_KILL_AT=<point>` makes the process SIGKILL itself at that point (a journal state, or
`copy` / `drop` / `commit`: the step's effect done, its state not yet journaled): the crash tests.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, date, datetime

from pipelines.clickhouse.sql import quote_identifier
from pipelines.lifecycle.context import Lifecycle
from pipelines.lifecycle.errors import VerificationFailed
from pipelines.lifecycle.fingerprint import EMPTY, Fingerprint, fingerprint_columns, from_row
from pipelines.lifecycle.journal import Entry, Journal, Move, State, new_entry
from pipelines.lifecycle.manifest import ColdFile, DayManifest, file_key, read_manifest, write_manifest
from pipelines.lifecycle.tiers import Tier, Tiers

KILL_ENV = "TIER_MIGRATE_KILL_AT"


def _crash_point(name: str) -> None:
    if os.environ.get(KILL_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def structure(schema: tuple[tuple[str, str], ...] | list[tuple[str, str]]) -> str:
    return ", ".join(f"{quote_identifier(n)} {t}" for n, t in schema)


class Mover:
    """Runs journal entries of one table to their end."""

    def __init__(self, life: Lifecycle, tiers: Tiers) -> None:
        self.life = life
        self.tiers = tiers
        self.journal: Journal = life.journal(tiers.journal_key)

    def plan(self, move: Move, day: date) -> Entry:
        """A journaled entry for `move` of `day`, with what the later steps will check against."""
        t = self.tiers
        if move == "hot-to-warm":
            parts = t.source_parts("hot", day)
            entry = new_entry(
                table=t.name,
                day=day,
                move=move,
                source=t.fingerprint("hot", day),
                dest_before=t.fingerprint("warm", day) if t.layout == "table" else EMPTY,
                source_max_block=parts.max_block if parts else -1,
            )
        elif move == "warm-to-hot":
            parts = t.source_parts("warm", day)
            entry = new_entry(
                table=t.name,
                day=day,
                move=move,
                source=t.fingerprint("warm", day),
                dest_before=t.fingerprint("hot", day) if t.layout == "table" else EMPTY,
                source_max_block=parts.max_block if parts else -1,
            )
        elif move == "warm-to-cold":
            source_tier = self._cold_source_tier()
            parts = t.source_parts(source_tier or "hot", day)
            entry = new_entry(
                table=t.name,
                day=day,
                move=move,
                source=t.engine_fingerprint(source_tier, day),
                source_max_block=parts.max_block if parts else -1,
                schema=tuple(t.engine_columns()),
            )
            entry = replace(entry, cold_keys=(file_key(t.name, day, entry.id),))
        else:
            manifest = read_manifest(self.life.cold, t.name, day)
            if manifest is None:
                raise VerificationFailed(f"{t.name} has no cold copy of {day}", hint="nothing to restore from cold")
            entry = new_entry(
                table=t.name,
                day=day,
                move=move,
                source=manifest.fingerprint,
                dest_before=t.fingerprint("hot", day),
                cold_keys=tuple(f.key for f in manifest.files),
            )
        self.journal.write(entry)
        _crash_point("planned")
        return entry

    def _cold_source_tier(self) -> Tier | None:
        # Volumes share one table: the whole day goes cold. Tables: the warm one.
        return None if self.tiers.layout == "volume" else "warm"

    def run(self, entry: Entry) -> Entry:
        """Advance `entry` to its end; raises VerificationFailed (source kept) on a mismatch."""
        while True:
            if entry.state == "planned":
                self._copy(entry)
                _crash_point("copy")
                entry = self._advance(entry, "copied")
            elif entry.state == "copied":
                self._verify(entry)
                entry = self._advance(entry, "verified")
            elif entry.state == "verified":
                self._drop_source(entry)
                _crash_point("drop")
                entry = self._advance(entry, "source_dropped")
            else:
                self._commit(entry)
                _crash_point("commit")
                self.journal.finish(entry)
                return entry

    def _advance(self, entry: Entry, state: State) -> Entry:
        advanced = entry.advance(state)
        self.journal.write(advanced)
        _crash_point(state)
        return advanced

    def _fail(self, entry: Entry, message: str, *, discard_cold: bool = False) -> VerificationFailed:
        """Close `entry` as failed (the source is untouched); a cold copy nobody lists is removed."""
        if discard_cold and entry.move == "warm-to-cold":
            self.life.cold.delete(entry.cold_keys)
        self.journal.finish(entry, outcome="verification_failed")
        return VerificationFailed(
            f"{entry.table} {entry.day} ({entry.move}): {message}; the source is kept",
            hint="nothing was dropped; inspect the day, then re-run nova tier-migrate (it plans the day again)",
        )

    def _copy(self, entry: Entry) -> None:
        t, day = self.tiers, entry.day
        if entry.move in ("hot-to-warm", "warm-to-hot"):
            dest: Tier = "warm" if entry.move == "hot-to-warm" else "hot"
            if t.layout == "volume":
                t.move_to(dest, day)  # MOVE PARTITION: atomic and idempotent
                return
            self._once(entry, t.fingerprint(dest, day), lambda: t.move_to(dest, day))
        elif entry.move == "warm-to-cold":
            (key,) = entry.cold_keys
            source = t.engine_source(self._cold_source_tier(), t.day_filter(day))
            cols = ", ".join(quote_identifier(n) for n, _ in entry.schema)
            cold = self.life.cold
            self.life.engine.execute(
                f"INSERT INTO FUNCTION {cold.write_function(key)} SELECT {cols} FROM {source} "
                f"SETTINGS {cold.truncate_setting()} = 1"
            )
        else:
            self._once(entry, t.fingerprint("hot", day), lambda: self._restore_from_cold(entry))

    def _once(self, entry: Entry, current: Fingerprint, copy: Callable[[], None]) -> None:
        """Copy when the destination is as planned; accept it when it already holds the copy."""
        if current == entry.dest_before:
            copy()
        elif current != entry.dest_before + entry.source:
            raise self._fail(
                entry,
                f"the destination changed since the move was planned ({current.differences(entry.dest_before)}) "
                "and does not hold the copy either",
            )

    def _restore_from_cold(self, entry: Entry) -> None:
        """Cold files → a staging table → ATTACH into hot: no materialized view fires twice."""
        t, life = self.tiers, self.life
        manifest = read_manifest(life.cold, t.name, entry.day) or DayManifest(t.name, entry.day)
        files = {f.key: f for f in manifest.files}
        hot_cols = dict(t.columns())
        staging = f"{t.name}_restore_{entry.id}"
        db = quote_identifier(t.database)
        staging_q = f"{db}.{quote_identifier(staging)}"
        life.store.execute(f"DROP TABLE IF EXISTS {staging_q}")
        life.store.execute(f"CREATE TABLE {staging_q} AS {t.qualified}")
        try:
            for key in entry.cold_keys:
                if key not in files:
                    raise self._fail(entry, f"the manifest no longer lists {key}")
                schema = files[key].schema
                cols = [n for n, _ in schema if n in hot_cols]
                names = ", ".join(quote_identifier(n) for n in cols)
                read = life.cold.read_function([key], structure(schema))
                if life.engine is life.store:
                    life.store.execute(f"INSERT INTO {staging_q} ({names}) SELECT {names} FROM {read}")
                else:
                    data = life.engine.query_arrow(f"SELECT {names} FROM {read}")
                    life.store.insert_arrow(f"{t.database}.{staging}", data)
            life.store.execute(f"ALTER TABLE {t.qualified} ATTACH PARTITION {entry.partition} FROM {staging_q}")
        finally:
            life.store.execute(f"DROP TABLE IF EXISTS {staging_q}")

    def _verify(self, entry: Entry) -> None:
        t, day = self.tiers, entry.day
        if entry.move in ("hot-to-warm", "warm-to-hot"):
            dest: Tier = "warm" if entry.move == "hot-to-warm" else "hot"
            expected = entry.dest_before + entry.source
            got = t.fingerprint(dest, day)
            if got != expected:
                raise self._fail(entry, f"the {dest} copy differs ({got.differences(expected)})")
            if t.layout == "volume":
                left = t.days()["hot" if dest == "warm" else "warm"].get(day)
                if left is not None and left.rows:
                    raise self._fail(entry, f"{left.rows} row(s) of the day are still outside the {dest} volume")
        elif entry.move == "warm-to-cold":
            (key,) = entry.cold_keys
            cols = fingerprint_columns(list(entry.schema), t.policy.amount_column)
            read = self.life.cold.read_function([key], structure(entry.schema))
            got = from_row(tuple(self.life.engine.query_rows(f"SELECT {cols} FROM {read}")[0]))
            if got != entry.source:
                raise self._fail(
                    entry,
                    f"the cold copy {self.life.cold.describe(key)} read back differs ({got.differences(entry.source)})",
                    discard_cold=True,
                )
        else:
            expected = entry.dest_before + entry.source
            got = t.fingerprint("hot", day)
            if got != expected:
                raise self._fail(entry, f"the restored day differs ({got.differences(expected)})")

    def _drop_source(self, entry: Entry) -> None:
        t, day = self.tiers, entry.day
        if entry.move == "cold-to-hot":
            manifest = read_manifest(self.life.cold, t.name, day)
            if manifest is not None:
                kept = tuple(f for f in manifest.files if f.key not in entry.cold_keys)
                write_manifest(self.life.cold, DayManifest(t.name, day, kept))
            self.life.cold.delete(entry.cold_keys)
            return
        if t.layout == "volume" and entry.move != "warm-to-cold":
            return  # MOVE PARTITION left nothing behind
        source: Tier = "warm" if entry.move == "warm-to-hot" else "hot"
        if entry.move == "warm-to-cold":
            source = self._cold_source_tier() or "hot"
        parts = t.source_parts(source, day)
        if parts is None or parts.min_block > entry.source_max_block:
            return  # dropped already (a re-run after a crash); newer parts are late events, kept
        if parts.max_block > entry.source_max_block:
            # ClickHouse < 19.15 only (no atomic MOVE): the copy cannot be told apart from the late rows.
            raise VerificationFailed(
                f"{entry.table} {day} ({entry.move}): events arrived in the source while the day moved; "
                "both copies are kept, and --all-tiers reads the destination's while this move is open",
                hint=f"compare the day in both tables, keep one copy by hand, then delete "
                f"{self.journal.open_dir / (day.isoformat() + '.json')}",
            )
        t.drop(source, day)

    def _commit(self, entry: Entry) -> None:
        if entry.move != "warm-to-cold":
            return
        (key,) = entry.cold_keys
        t = self.tiers
        manifest = read_manifest(self.life.cold, t.name, entry.day) or DayManifest(t.name, entry.day)
        written = datetime.now(UTC).isoformat(timespec="seconds")
        write_manifest(self.life.cold, manifest.with_file(ColdFile(key, entry.source, entry.schema, written)))
