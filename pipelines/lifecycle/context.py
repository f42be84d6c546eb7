"""Everything a tier move needs, opened once: the store, the engine for cold I/O, the cold store, tiers.

For the embedded store the engine config (disks and the tiered storage policy) must exist before
the chdb path is opened, because the engine reads its config only then; `open_lifecycle` writes it
first. For a server, the embedded engine runs beside it in memory.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.clickhouse import Store, open_store
from pipelines.clickhouse.chdb_backend import ENGINE_CONFIG
from pipelines.clickhouse.cluster_store import ClusterStore
from pipelines.config import Settings
from pipelines.errors import ConfigError
from pipelines.lifecycle.cluster_tiers import ClusterTiers
from pipelines.lifecycle.coldstore import ColdStore
from pipelines.lifecycle.journal import Journal, journal_dir
from pipelines.lifecycle.policy import Policy, load_policy
from pipelines.lifecycle.tiers import TableTiers, Tiers, VolumeTiers, engine_config_xml, server_http_url


@dataclass
class Lifecycle:
    """The opened pieces of one tier-migrate (or --all-tiers query) invocation."""

    settings: Settings
    policy: Policy
    store: Store
    engine: Store
    cold: ColdStore
    tiers: dict[str, Tiers] = field(default_factory=dict)

    @property
    def state_dir(self) -> Path:
        return self.settings.state_dir / "lifecycle"

    def journal(self, table: str) -> Journal:
        return Journal(journal_dir(self.settings.state_dir, self.store.database, table))


def chdb_path(settings: Settings) -> Path | None:
    """The directory of an embedded store (None for a server or `chdb://:memory:`)."""
    url = settings.clickhouse.url
    if not url.startswith("chdb://"):
        return None
    raw = url[len("chdb://") :].partition("?")[0]
    return None if raw in ("", ":memory:") else settings.resolve(raw)


def ensure_engine_config(settings: Settings, policy: Policy) -> Path | None:
    """Write the embedded store's engine config (warm disk, tiered policy) unless it is there already.

    An existing config that differs is refused rather than rewritten: parts on a warm disk whose
    path changed would silently disappear from the table.
    """
    path = chdb_path(settings)
    if path is None:
        return None
    disk = settings.resolve(policy.warm.disk_path) if policy.warm.disk_path else Path(f"{path}-warm")
    text = engine_config_xml(warm=policy.warm, warm_disk=disk)
    config = path / ENGINE_CONFIG
    if config.exists():
        if config.read_text() != text:
            raise ConfigError(
                f"{config} declares other disks or policies than {policy.source} (warm.*) asks for",
                hint="parts on the warm disk would be lost by rewriting it: move warm days back "
                "(nova tier-migrate restore) before changing warm.*, or restore warm.* as it was",
            )
        return config
    path.mkdir(parents=True, exist_ok=True)
    disk.mkdir(parents=True, exist_ok=True)
    tmp = config.with_name(config.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(config)
    return config


@contextlib.contextmanager
def open_lifecycle(*, settings: Settings, policy: Policy | None = None) -> Iterator[Lifecycle]:
    """Open the store, the engine and the cold store; close them after the block."""
    policy = policy or load_policy(settings)
    ensure_engine_config(settings, policy)
    with contextlib.ExitStack() as stack:
        store = stack.enter_context(open_store(settings))
        # 18.16 reads neither Parquet nor S3: an in-memory embedded engine beside it does the cold I/O.
        memory = "chdb://:memory:"
        engine = store if store.backend == "chdb" else stack.enter_context(open_store(settings, url=memory))
        cold = ColdStore(policy.cold)
        life = Lifecycle(settings=settings, policy=policy, store=store, engine=engine, cold=cold)
        http = None if engine is store else server_http_url(settings, policy)
        for table in policy.tables:
            if isinstance(store, ClusterStore):
                life.tiers[table.name] = ClusterTiers(
                    store=store, engine=engine, table=table, warm=policy.warm, http_url=http
                )
                continue
            cls: type[Tiers] = VolumeTiers if store.caps.storage_policies else TableTiers
            life.tiers[table.name] = cls(store=store, engine=engine, table=table, warm=policy.warm, http_url=http)
        yield life
