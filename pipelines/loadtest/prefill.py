"""`nova loadtest --prefill-rows N`: fill the transactions table cheaply, so queries run against a big one.

The dashboard queries' latency depends on how much they scan; a fresh test table holds only what
the run sends. One `INSERT … SELECT … FROM numbers(N)` inside ClickHouse (the same statement on
chdb and on 18.16: no generateRandom, which 18.16 lacks) writes N plausible rows without any of
them crossing Kafka or Python: event times spread evenly over the last `PREFILL_DAYS` days, so a
"last hour" dashboard prunes to its share (N / 720) and a card lookup scans them all, as it would
in production. The rows carry `_topic = 'nova.prefill'`, so the exactly-once checks (which look
at the pipeline's topic) and the completeness check (the run's ids) never count them. The
materialized views fire as for any insert, so the rollups grow with the table.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipelines.clickhouse.sql import quote_identifier
from pipelines.errors import UsageError

if TYPE_CHECKING:
    from pipelines.clickhouse import Store
    from pipelines.config import Settings

PREFILL_TOPIC = "nova.prefill"
PREFILL_DAYS = 30
BLOCK_ROWS = 10_000_000  # one INSERT per block: bounded memory, progress, and parts of a sane size

# column → expression over `number` (the row's index) and `n` (the rows of the block, a literal)
_EXPRESSIONS = {
    "transaction_id": "concat('prefill-', toString(number))",
    "event_time": f"toDateTime(now() - intDiv(number * {PREFILL_DAYS * 86_400}, {{n}}))",
    "card_id": "concat('prefill-card-', toString(number % 1000003))",
    "account_id": "concat('prefill-acct-', toString(number % 800011))",
    "merchant_id": "concat('prefill-m-', toString(number % 503))",
    "merchant_category": "'5411'",
    "merchant_name": "concat('Prefill merchant ', toString(number % 503))",
    "merchant_segment": "'grocery'",
    "amount_minor": "toInt64(100 + number % 250000)",
    "currency": "'EUR'",
    "amount_reporting_minor": "toInt64(100 + number % 250000)",
    "country": "'DE'",
    "channel": "'ecommerce'",
    "status": "'approved'",
    "risk_score": "toFloat32((number % 1000) / 1000)",
    "_topic": f"'{PREFILL_TOPIC}'",
    "_partition": "toUInt32(number % 6)",
    "_offset": "number",
    "_ingested_at": "now()",
    "_epoch": "toUInt64(0)",
}


@dataclass
class PrefillResult:
    rows: int
    seconds: float

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


def prefill_statements(store: Store, table: str, rows: int) -> list[str]:
    """The INSERT … SELECT statements (one per block) for `rows` rows of `table` (database.table)."""
    if rows < 0:
        raise UsageError(f"--prefill-rows {rows}: must be 0 or more")
    columns = [name for name, _ in store.table_columns(table)]
    missing = [c for c in ("transaction_id", "event_time", "_topic") if c not in columns]
    if missing:
        raise UsageError(
            f"table {table} lacks column(s) {', '.join(missing)}: it is not a transactions table",
            hint="run `nova provision --yes` first",
        )
    names = [c for c in columns if c in _EXPRESSIONS]
    out = []
    for start in range(0, rows, BLOCK_ROWS):
        n = min(BLOCK_ROWS, rows - start)
        exprs = ", ".join(_EXPRESSIONS[c].format(n=rows) for c in names)
        cols = ", ".join(quote_identifier(c) for c in names)
        out.append(f"INSERT INTO {table} ({cols}) SELECT {exprs} FROM numbers({start}, {n})")
    return out


def prefill(*, settings: Settings, rows: int) -> PrefillResult:
    """Insert `rows` synthetic rows into pipeline.table (see the module docstring); time it."""
    from pipelines.clickhouse import open_store

    table = f"{quote_identifier(settings.clickhouse.database)}.{quote_identifier(settings.pipeline.table)}"
    started = time.perf_counter()
    with open_store(settings) as store:
        for sql in prefill_statements(store, table, rows):
            store.execute(sql)
    return PrefillResult(rows=rows, seconds=time.perf_counter() - started)
