"""The manifest of a cold day: which Parquet files hold it, and their verified fingerprints.

`TABLE/dt=YYYY-MM-DD/manifest.json` is the cold tier's source of truth: a file is part of the day
only once the manifest lists it (a file a crashed run left behind is not), and the day's rows,
amount sum and checksum are the sums of its files'. Each file keeps the schema it was written
with, since columns can be added to the table after a day went cold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from pipelines.lifecycle.coldstore import ColdStore
from pipelines.lifecycle.fingerprint import EMPTY, Fingerprint

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def day_prefix(table: str, day: date) -> str:
    return f"{table}/dt={day.isoformat()}/"


def manifest_key(table: str, day: date) -> str:
    return day_prefix(table, day) + MANIFEST


def file_key(table: str, day: date, move_id: str) -> str:
    """The Parquet object of one move: named after it, so a redo overwrites rather than adds."""
    return day_prefix(table, day) + f"part-{move_id}.parquet"


@dataclass(frozen=True)
class ColdFile:
    key: str
    fingerprint: Fingerprint
    schema: tuple[tuple[str, str], ...]
    written_at: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            **self.fingerprint.to_dict(),
            "schema": [list(c) for c in self.schema],
            "written_at": self.written_at,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ColdFile:
        return cls(
            key=str(data["key"]),
            fingerprint=Fingerprint.from_dict(data),
            schema=tuple((str(n), str(t)) for n, t in data["schema"]),
            written_at=str(data.get("written_at", "")),
        )


@dataclass(frozen=True)
class DayManifest:
    table: str
    day: date
    files: tuple[ColdFile, ...] = field(default_factory=tuple)

    @property
    def fingerprint(self) -> Fingerprint:
        total = EMPTY
        for f in self.files:
            total = total + f.fingerprint
        return total

    def with_file(self, added: ColdFile) -> DayManifest:
        """This manifest plus `added` (replacing a file of the same key: a redo of the same move)."""
        kept = tuple(f for f in self.files if f.key != added.key)
        return DayManifest(self.table, self.day, (*kept, added))

    def to_dict(self) -> dict[str, Any]:
        fp = self.fingerprint
        schema = self.files[-1].schema if self.files else ()
        return {
            "format": FORMAT_VERSION,
            "table": self.table,
            "day": self.day.isoformat(),
            **fp.to_dict(),
            "schema": [list(c) for c in schema],
            "files": [f.to_dict() for f in self.files],
            "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DayManifest:
        return cls(
            table=str(data["table"]),
            day=date.fromisoformat(str(data["day"])),
            files=tuple(ColdFile.from_dict(f) for f in data.get("files", [])),
        )


def read_manifest(cold: ColdStore, table: str, day: date) -> DayManifest | None:
    data = cold.get_json(manifest_key(table, day))
    return DayManifest.from_dict(data) if data is not None else None


def write_manifest(cold: ColdStore, manifest: DayManifest) -> None:
    if manifest.files:
        cold.put_json(manifest_key(manifest.table, manifest.day), manifest.to_dict())
    else:
        cold.delete([manifest_key(manifest.table, manifest.day)])


def list_manifests(cold: ColdStore, table: str) -> dict[date, DayManifest]:
    """Every committed cold day of `table`, by day."""
    found: dict[date, DayManifest] = {}
    for key in cold.list_keys(f"{table}/dt="):
        if not key.endswith("/" + MANIFEST):
            continue
        data = cold.get_json(key)
        if data is not None:
            manifest = DayManifest.from_dict(data)
            if manifest.files:
                found[manifest.day] = manifest
    return found
