"""The analyst's dashboard queries (`loadtest.queries`), ready to run under ingest load.

Each query is SQL from the config with `{table}` replaced by `pipeline.table` and `%(card_id)s`
bound to a card the run actually sends (so "one card's history" finds rows). Only the server
backend can run them while ingest runs: the embedded store serves one process, the ingest
worker's; `analysts_unavailable()` says so in a message the verdict shows.
"""

from __future__ import annotations

import random
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipelines.errors import ConfigError

if TYPE_CHECKING:
    from pipelines.clickhouse import Store
    from pipelines.config import Settings

_PLACEHOLDER = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")


@dataclass(frozen=True)
class DashboardQuery:
    name: str
    sql: str
    needs_card: bool


def dashboard_queries(settings: Settings) -> list[DashboardQuery]:
    """The configured queries with the table filled in; `ConfigError` for an unknown placeholder."""
    out = []
    for name, text in settings.loadtest.queries.items():
        sql = text.replace("{table}", settings.pipeline.table)
        if _PLACEHOLDER.search(sql):
            raise ConfigError(
                f"loadtest.queries.{name} has an unknown {{placeholder}}: {text!r}",
                hint="only {table} (pipeline.table) and %(card_id)s are filled in",
            )
        out.append(DashboardQuery(name, sql, "%(card_id)s" in sql))
    return out


def analysts_unavailable(settings: Settings) -> str:
    """Why analyst users cannot run against this store ('' when they can)."""
    if settings.clickhouse.url.startswith("chdb://"):
        return (
            f"queries under load not measured: the embedded store ({settings.clickhouse.url}) serves one process "
            "and the ingest worker holds it — point clickhouse.url at a server "
            "(`nova stack up --with clickhouse-server`, clickhouse://…) to measure them"
        )
    return ""


def active_cards(n: int, *, seed: int) -> list[str]:
    """`n` cards drawn by activity from the generator's card population: the ones the run sends most."""
    import numpy as np

    from pipelines.synth import card_population

    cards = card_population()
    picks = np.searchsorted(cards.cdf, np.random.default_rng(seed).random(n), side="right")
    return sorted({str(c) for c in cards.card_ids[np.minimum(picks, len(cards.card_ids) - 1)].tolist()})


class Analyst:
    """Runs one dashboard query after another on its own connection, timing each."""

    def __init__(self, store: Store, queries: list[DashboardQuery], card_ids: list[str], *, seed: int) -> None:
        if not queries:
            raise ConfigError("loadtest.queries is empty", hint="configure at least one query, or pass --no-queries")
        self.store = store
        self.queries = queries
        self.card_ids = card_ids or ["tok_0000000000000000"]
        self._random = random.Random(seed)
        self._next = self._random.randrange(len(queries))

    def run_next(self) -> tuple[str, int, int, Exception | None]:
        """(name, start µs, duration µs, the error or None) of the next query in turn."""
        query = self.queries[self._next]
        self._next = (self._next + 1) % len(self.queries)
        params = {"card_id": self._random.choice(self.card_ids)} if query.needs_card else None
        start_us = time.time_ns() // 1000
        started = time.perf_counter()
        error: Exception | None = None
        try:
            self.store.query_rows(query.sql, params)
        except Exception as exc:  # a failed query is a measurement (an error), not a crash of the analyst
            error = exc
        return query.name, start_us, int((time.perf_counter() - started) * 1e6), error
