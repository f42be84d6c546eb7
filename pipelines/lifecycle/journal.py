"""The journal: one file per partition in flight, planned → copied → verified → source_dropped.

A move writes its entry (atomically, fsynced) before each step's effects can be relied on, so a run
killed at any instant leaves an entry saying how far it got; the next run resumes it before
planning anything new. What the entry records makes every step checkable rather than trusted:
the source's fingerprint and highest block number when planned, the destination's fingerprint
before the copy. A finished move leaves the open set and is appended to `history.jsonl`.

Files live in `STATE_DIR/lifecycle/DATABASE.TABLE/`: `open/DAY.json`, `history.jsonl`.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal

from pipelines.lifecycle.fingerprint import EMPTY, Fingerprint

Move = Literal["hot-to-warm", "warm-to-cold", "warm-to-hot", "cold-to-hot"]
State = Literal["planned", "copied", "verified", "source_dropped"]
STATES: tuple[State, ...] = ("planned", "copied", "verified", "source_dropped")
MOVES: tuple[Move, ...] = ("hot-to-warm", "warm-to-cold", "warm-to-hot", "cold-to-hot")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Entry:
    """One partition's move and how far it got."""

    id: str
    table: str
    day: date
    move: Move
    state: State
    source: Fingerprint
    dest_before: Fingerprint = EMPTY
    # Highest block number among the source's parts when planned: a part at or below it holds
    # rows this move copied; a later insert (a late event) gets a higher one.
    source_max_block: int = -1
    # The engine's (name, type) columns of the copy (cold files keep them in the manifest).
    schema: tuple[tuple[str, str], ...] = ()
    # cold: the object this move writes (warm-to-cold) or the files it brings back (cold-to-hot).
    cold_keys: tuple[str, ...] = ()
    steps: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    @property
    def partition(self) -> int:
        return int(self.day.strftime("%Y%m%d"))

    def advance(self, state: State) -> Entry:
        return replace(self, state=state, steps=(*self.steps, (state, _now())))

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "table": self.table,
            "day": self.day.isoformat(),
            "move": self.move,
            "state": self.state,
            "source": self.source.to_dict(),
            "dest_before": self.dest_before.to_dict(),
            "source_max_block": self.source_max_block,
            "schema": [list(c) for c in self.schema],
            "cold_keys": list(self.cold_keys),
            "steps": [list(s) for s in self.steps],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Entry:
        move, state = data["move"], data["state"]
        if move not in MOVES or state not in STATES:
            raise ValueError(f"unknown move {move!r} or state {state!r}")
        return cls(
            id=str(data["id"]),
            table=str(data["table"]),
            day=date.fromisoformat(str(data["day"])),
            move=move,
            state=state,
            source=Fingerprint.from_dict(data["source"]),
            dest_before=Fingerprint.from_dict(data["dest_before"]),
            source_max_block=int(data.get("source_max_block", -1)),
            schema=tuple((str(n), str(t)) for n, t in data.get("schema", [])),
            cold_keys=tuple(str(k) for k in data.get("cold_keys", [])),
            steps=tuple((str(s), str(t)) for s, t in data.get("steps", [])),
        )


def new_entry(
    *,
    table: str,
    day: date,
    move: Move,
    source: Fingerprint,
    dest_before: Fingerprint = EMPTY,
    source_max_block: int = -1,
    schema: tuple[tuple[str, str], ...] = (),
    cold_keys: tuple[str, ...] = (),
) -> Entry:
    return Entry(
        id=uuid.uuid4().hex[:12],
        table=table,
        day=day,
        move=move,
        state="planned",
        source=source,
        dest_before=dest_before,
        source_max_block=source_max_block,
        schema=schema,
        cold_keys=cold_keys,
        steps=(("planned", _now()),),
    )


class Journal:
    """The open entries and the history of one table; see the module docstring."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.open_dir = directory / "open"
        self.history = directory / "history.jsonl"

    def open_entries(self) -> list[Entry]:
        """Entries of moves a run started and did not finish, oldest day first."""
        if not self.open_dir.exists():
            return []
        entries = []
        for path in sorted(self.open_dir.glob("*.json")):
            try:
                entries.append(Entry.from_dict(json.loads(path.read_text())))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                from pipelines.errors import NovaError

                raise NovaError(
                    f"journal entry {path} is unreadable ({exc})",
                    hint="inspect it; a move it describes may need finishing by hand before deleting it",
                ) from None
        return sorted(entries, key=lambda e: e.day)

    def write(self, entry: Entry) -> None:
        """Replace the entry of its day atomically and durably (fsync of file and directory)."""
        self.open_dir.mkdir(parents=True, exist_ok=True)
        path = self.open_dir / f"{entry.day.isoformat()}.json"
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w") as fh:
            fh.write(json.dumps(entry.to_dict(), indent=2) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
        _fsync_dir(self.open_dir)

    def finish(self, entry: Entry, *, outcome: str = "done") -> None:
        """Append the entry to the history and close it."""
        self.directory.mkdir(parents=True, exist_ok=True)
        record = {**entry.to_dict(), "outcome": outcome, "finished_at": _now()}
        with open(self.history, "a") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        (self.open_dir / f"{entry.day.isoformat()}.json").unlink(missing_ok=True)
        if self.open_dir.exists():
            _fsync_dir(self.open_dir)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def journal_dir(state_dir: Path, database: str, table: str) -> Path:
    return state_dir / "lifecycle" / f"{database}.{table}"
