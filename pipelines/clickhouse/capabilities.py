"""What the connected ClickHouse can do, decided from its version, and DDL types rendered for it.

The embedded engine (chdb 26.x) supports everything nova uses; Debian's clickhouse-server 18.16
does not. Rather than probing feature by feature, `Capabilities` is built once from
`SELECT version()` (and the server's list of settings) using the thresholds below, taken from the
ClickHouse changelogs:

| feature | first version | notes |
|---|---|---|
| LowCardinality | 19.3 | 18.12–19.2: needs `allow_experimental_low_cardinality_type`; rendered as |
|  |  | the plain type there (clickhouse-driver inserts into it hang on 18.16) |
| Parquet format | 19.4 | |
| ALTER … ADD COLUMN IF NOT EXISTS | 19.4 | added in 19.1, broken until 19.3 (ClickHouse#4565) |
| TTL (table and column) | 19.6 | |
| storage policies, MOVE PARTITION TO DISK/VOLUME | 19.15 | |
| data skipping indices | 20.1 | 19.x: needs `allow_experimental_data_skipping_indices` |
| DateTime64 | 20.1 | older: DateTime (second precision) |
| Avro format, MOVE PARTITION TO TABLE | 20.3 | |
| Nullable columns in the sorting key | 20.7 | always with the table setting `allow_nullable_key = 1` |
| Map type | 21.8 | 21.1–21.7: needs `allow_experimental_map_type` |
| Bool type | 21.12 | older: UInt8 |
| insert_deduplication_token | 22.2 | plain MergeTree also needs `non_replicated_deduplication_window` |
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pipelines.errors import StoreError

Version = tuple[int, ...]

# feature name → (first version where it works without experimental settings, what it is)
FEATURES: dict[str, tuple[Version, str]] = {
    "low_cardinality": ((19, 3), "the LowCardinality type"),
    "parquet": ((19, 4), "the Parquet format"),
    "if_not_exists_column": ((19, 4), "ALTER TABLE … ADD COLUMN IF NOT EXISTS"),
    "ttl": ((19, 6), "TTL expressions"),
    "storage_policies": ((19, 15), "storage policies (tiered storage, MOVE PARTITION TO DISK/VOLUME)"),
    "skip_indices": ((20, 1), "data skipping indices"),
    "datetime64": ((20, 1), "the DateTime64 type"),
    "avro": ((20, 3), "the Avro format"),
    "move_partition_to_table": ((20, 3), "ALTER TABLE … MOVE PARTITION … TO TABLE"),
    "nullable_in_key": ((20, 7), "Nullable columns in the sorting key (allow_nullable_key)"),
    "map_type": ((21, 8), "the Map type"),
    "bool_type": ((21, 12), "the Bool type"),
    "dedup_token": ((22, 2), "the insert_deduplication_token setting"),
}

# Settings whose absence means a missing feature (used to word "unknown setting" errors).
SETTING_FEATURES: dict[str, str] = {
    "insert_deduplication_token": "dedup_token",
    "allow_nullable_key": "nullable_in_key",
    "storage_policy": "storage_policies",
}


def parse_version(text: str) -> Version:
    """`'18.16.1'` → `(18, 16, 1)`; `'26.9.2.1'` → `(26, 9, 2, 1)`. Raises StoreError if it is no version."""
    parts = re.findall(r"\d+", text.split("-", 1)[0])
    if len(parts) < 2:
        raise StoreError(f"cannot understand the ClickHouse version {text!r}")
    return tuple(int(p) for p in parts)


def format_version(version: Version) -> str:
    return ".".join(str(p) for p in version)


@dataclass(frozen=True)
class Capabilities:
    """Features of one ClickHouse server (or embedded engine), decided from its version."""

    version: Version
    version_text: str
    datetime64: bool
    low_cardinality: bool
    low_cardinality_setting: str | None
    ttl: bool
    storage_policies: bool
    dedup_token: bool
    parquet: bool
    avro: bool
    map_type: bool
    map_type_setting: str | None
    bool_type: bool
    skip_indices: bool
    skip_indices_setting: str | None
    nullable_in_key: bool
    nullable_in_key_setting: str | None
    if_not_exists_column: bool
    move_partition_to_table: bool
    # Names of the settings the server knows; empty when unknown (then nothing is checked).
    settings: frozenset[str] = field(default=frozenset(), repr=False, compare=False)
    timezone: str = "UTC"

    @classmethod
    def from_version(
        cls, version_text: str, *, settings: frozenset[str] | set[str] = frozenset(), timezone: str = "UTC"
    ) -> Capabilities:
        v = parse_version(version_text)

        def at_least(feature: str) -> bool:
            return v >= FEATURES[feature][0]

        return cls(
            version=v,
            version_text=version_text,
            datetime64=at_least("datetime64"),
            low_cardinality=at_least("low_cardinality"),
            low_cardinality_setting=(
                "allow_experimental_low_cardinality_type" if (18, 12) <= v < FEATURES["low_cardinality"][0] else None
            ),
            ttl=at_least("ttl"),
            storage_policies=at_least("storage_policies"),
            dedup_token=at_least("dedup_token"),
            parquet=at_least("parquet"),
            avro=at_least("avro"),
            map_type=at_least("map_type"),
            map_type_setting="allow_experimental_map_type" if (21, 1) <= v < FEATURES["map_type"][0] else None,
            bool_type=at_least("bool_type"),
            skip_indices=at_least("skip_indices"),
            skip_indices_setting=(
                "allow_experimental_data_skipping_indices" if (19, 1) <= v < FEATURES["skip_indices"][0] else None
            ),
            nullable_in_key=at_least("nullable_in_key"),
            nullable_in_key_setting="allow_nullable_key" if at_least("nullable_in_key") else None,
            if_not_exists_column=at_least("if_not_exists_column"),
            move_partition_to_table=at_least("move_partition_to_table"),
            settings=frozenset(settings),
            timezone=timezone,
        )

    def has(self, feature: str) -> bool:
        """Whether `feature` (a key of FEATURES) works on this server without experimental settings."""
        if feature not in FEATURES:
            raise ValueError(f"unknown ClickHouse feature {feature!r}; known: {', '.join(sorted(FEATURES))}")
        return self.version >= FEATURES[feature][0]

    def require(self, feature: str) -> None:
        """Raise StoreError naming the version `feature` needs, unless this server has it."""
        if self.has(feature):
            return
        needed, what = FEATURES[feature]
        raise StoreError(
            f"{what} needs ClickHouse ≥ {format_version(needed)}; this server is {self.version_text}",
            hint="use the embedded store (clickhouse.url: chdb://…) or a newer ClickHouse server",
        )

    def knows_setting(self, name: str) -> bool:
        """Whether the server accepts the query setting `name` (True when the list is unknown)."""
        return not self.settings or name in self.settings

    def require_settings(self, names: list[str] | set[str] | dict[str, object]) -> None:
        """Raise StoreError for the first setting the server does not know.

        clickhouse-driver silently drops settings an old server cannot receive, so a setting that
        matters (a dedup token) would be lost without this check.
        """
        for name in names:
            if self.knows_setting(name):
                continue
            feature = SETTING_FEATURES.get(name)
            if feature is not None:
                self.require(feature)
            raise StoreError(
                f"ClickHouse {self.version_text} does not know the setting {name!r}",
                hint="drop the setting or use a newer ClickHouse server",
            )


# Type rendering


def split_type(t: str) -> tuple[str, list[str]]:
    """`"Map(String, Array(UInt8))"` → `("Map", ["String", "Array(UInt8)"])`; `"UInt8"` → `("UInt8", [])`.

    Top-level commas only; quotes (Enum names, time zones) and nested parentheses are respected.
    """
    t = t.strip()
    open_at = t.find("(")
    if open_at < 0 or not t.endswith(")"):
        return t, []
    name, inner = t[:open_at].strip(), t[open_at + 1 : -1]
    args: list[str] = []
    depth, quote, start, i = 0, "", 0, 0
    while i < len(inner):
        ch = inner[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "'`\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            args.append(inner[start:i].strip())
            start = i + 1
        i += 1
    args.append(inner[start:].strip())
    return name, [a for a in args if a]


def unquote(s: str) -> str:
    s = s.strip()
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "'\"":
        return s[1:-1].replace("\\'", "'").replace("\\\\", "\\")
    return s


def render_type(t: str, caps: Capabilities) -> str:
    """A canonical nova column type, rewritten to what this server supports.

    - `DateTime64(3, 'UTC')` → `DateTime('UTC')` before 20.1 (the sub-second part is lost there:
      keep an `Int64` epoch-milliseconds column where milliseconds matter);
    - `LowCardinality(T)` → `T` before 19.3 (an encoding, not a semantic: values are the same);
    - `Bool` → `UInt8` before 21.12, `IPv4`/`IPv6` → `String` before 19.3;
    - `Map(K, V)` before 21.8 raises StoreError naming the needed version;
    - `Nullable`, `Array`, `Tuple`, `UUID`, `Decimal`, `Enum`, numbers, `String`, `Date` unchanged.
    """
    name, args = split_type(t)
    if name == "DateTime64":
        if caps.datetime64:
            return t.strip()
        tz = args[1] if len(args) > 1 else None
        return f"DateTime({tz})" if tz else "DateTime"
    if name == "LowCardinality":
        inner = render_type(args[0], caps)
        return f"LowCardinality({inner})" if caps.low_cardinality else inner
    if name in ("Nullable", "Array"):
        return f"{name}({render_type(args[0], caps)})"
    if name == "Map":
        caps.require("map_type")
        return f"Map({render_type(args[0], caps)}, {render_type(args[1], caps)})"
    if name == "Tuple":
        parts = []
        for arg in args:
            # Named elements: `Tuple(a Int32, b String)`.
            m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)\s+(.+)$", arg)
            if m:
                parts.append(f"{m.group(1)} {render_type(m.group(2), caps)}")
            else:
                parts.append(render_type(arg, caps))
        return f"Tuple({', '.join(parts)})"
    if name == "Bool" and not caps.bool_type:
        return "UInt8"
    if name in ("IPv4", "IPv6") and caps.version < (19, 3):
        return "String"
    return t.strip()
