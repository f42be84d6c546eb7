"""Merchant risk: the share of a merchant's recent transactions known to be fraud, as of an event time.

Needs every partition's view (a merchant's transactions are spread over all card partitions), so
it is read from ClickHouse rather than kept in a detector's state. "Known" means a fraud label
whose `label_time` is at or before the as-of instant: evaluated at the detector's event-time
watermark, a replay of months of history at full speed sees the labels that existed at each
point of that history, not the ones that arrived by the end.

As-of instants are whole steps of event time (`detection.merchant_risk_step_s`, 6 h by default):
every partition's detector switches to the risk of step B at the first row whose watermark reaches
B, so where in its stream a partition sees new risk does not depend on batch boundaries or on which
worker runs it. The risk of a step is computed once per process and cached; `refresh` re-reads the
current step on a wall-clock interval to pick up labels that arrived since (live traffic, where
event time ≈ wall time).

A step's risk reads what is stored: computed before every partition has stored its rows of the
window (and the labels known by then), it is computed from less. Live, that is the price of being
live; a replay must hold the producer at each step boundary until the pipeline has caught up
(`nova fraud evaluate` does), or its alerts depend on its speed. Hence steps of hours, not minutes:
a replay of 6 months waits at 730 boundaries, and a chargeback days late loses little by counting
from the next boundary.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

from pipelines.clickhouse.sql import quote_identifier

if TYPE_CHECKING:
    from pipelines.clickhouse import Store
    from pipelines.config import Settings
    from pipelines.detect.engine import Detector

DAY_MS = 86_400_000
CACHED_STEPS = 512
WINDOW_MS = 28 * DAY_MS
MIN_COUNT = 10
# The model's features merchant_risk_1d/7d/30d: the fraud share over each window ending one label
# delay before the as-of instant (the median delay of the frauds known by then), so the window
# holds rows whose chargebacks have had time to arrive: a compromised terminal's share there is
# near 1 rather than diluted by its recent, not yet reported, rows. After the delayed windows of
# Le Borgne et al., *Reproducible ML for Credit Card Fraud Detection*. Measured by offline replay
# with retraining: synccfd AP 0.669 -> 0.698; a Handbook-style corpus 0.531 -> 0.591; the
# generator unchanged.
FEATURE_WINDOWS_MS: Final = {"1d": DAY_MS, "7d": 7 * DAY_MS, "30d": 30 * DAY_MS}
DELAY_LOOKBACK_MS = 90 * DAY_MS  # the known frauds whose delay is measured: of rows this recent


@dataclass(frozen=True)
class Risk:
    """What a detector is told at one as-of step: the rule's risk and the model's windowed ones."""

    overall: Mapping[str, float] = field(default_factory=dict)  # merchant → share (compromised_merchant)
    windows: Mapping[str, Mapping[str, float]] = field(default_factory=dict)  # "1d"|"7d"|"30d" → merchant → share

    def apply(self, detector: Detector, as_of_ms: int) -> None:
        detector.set_merchant_risk(self.overall, as_of_ms, by_window=self.windows)


NO_RISK: Final = Risk()


class MerchantRisk:
    """Merchant → fraud share over [as_of − window, as_of), for merchants with at least `min_count` rows."""

    def __init__(
        self,
        store: Store,
        *,
        database: str,
        table: str,
        labels_table: str,
        window_ms: int,
        min_count: int,
        step_ms: int,
    ) -> None:
        self.store = store
        self.transactions = f"{quote_identifier(database)}.{quote_identifier(table)}"
        self.labels = f"{quote_identifier(database)}.{quote_identifier(labels_table)}"
        self.window_ms = window_ms
        self.min_count = min_count
        self.step_ms = step_ms
        self._cache: OrderedDict[int, Risk] = OrderedDict()
        self._first_fraud_ms: int | None = None  # earliest fraud label_time stored, as last read
        self.queries = 0

    @classmethod
    def for_settings(cls, settings: Settings, store: Store) -> MerchantRisk:
        """The merchant risk the workers read (and `nova fraud train` replays), over `store`."""
        from pipelines.detect.labels import LABELS_TABLE

        return cls(
            store,
            database=settings.clickhouse.database,
            table=settings.pipeline.table,
            labels_table=LABELS_TABLE,
            window_ms=WINDOW_MS,
            min_count=MIN_COUNT,
            step_ms=int(settings.detection.merchant_risk_step_s * 1000),
        )

    def step_of(self, watermark_ms: int) -> int:
        """The as-of instant in force for a detector whose watermark is `watermark_ms`."""
        return (watermark_ms // self.step_ms) * self.step_ms

    def as_of(self, as_of_ms: int, *, refresh: bool = False) -> Risk:
        """The risk of every merchant with known fraud as of `as_of_ms` (a step); cached unless `refresh`."""
        cached = self._cache.get(as_of_ms)
        if cached is not None and not refresh:
            self._cache.move_to_end(as_of_ms)
            return cached
        if refresh or self._first_fraud_ms is None or as_of_ms < self._first_fraud_ms:
            # cheap (the labels table), and a new step may be the first with fraud known: never assume none
            self._first_fraud_ms = self._first_fraud()
        # No fraud known by then (a replay's early history, or no labels at all): nothing to scan.
        if self._first_fraud_ms is None or as_of_ms < self._first_fraud_ms:
            risk = NO_RISK
        else:
            risk = Risk(self._query(as_of_ms), self._windows(as_of_ms))
        self._cache[as_of_ms] = risk
        self._cache.move_to_end(as_of_ms)
        while len(self._cache) > CACHED_STEPS:  # partitions' watermarks differ: keep many steps
            self._cache.popitem(last=False)
        return risk

    def _first_fraud(self) -> int | None:
        rows = self.store.query_rows(
            f"SELECT toInt64(toUnixTimestamp(min(label_time))) * 1000, count() FROM {self.labels} WHERE is_fraud = 1"
        )
        first, n = rows[0]
        return int(first) if int(n) else None

    def _query(self, as_of_ms: int) -> dict[str, float]:
        self.queries += 1
        hi = datetime.fromtimestamp(as_of_ms / 1000, UTC)
        lo = datetime.fromtimestamp((as_of_ms - self.window_ms) / 1000, UTC)
        rows = self.store.query_rows(
            f"SELECT merchant_id, count() AS n, countIf(transaction_id IN ("
            f"SELECT transaction_id FROM {self.labels} WHERE is_fraud = 1 AND label_time <= %(hi)s"
            f")) AS fraud FROM {self.transactions} WHERE event_time >= %(lo)s AND event_time < %(hi)s "
            "GROUP BY merchant_id HAVING n >= %(min)s AND fraud > 0",
            {"lo": lo, "hi": hi, "min": self.min_count},
        )
        return {str(m): float(f) / float(n) for m, n, f in rows}

    def _known(self) -> str:
        """The fraud labels known by %(hi)s, as an IN subquery."""
        return f"SELECT transaction_id FROM {self.labels} WHERE is_fraud = 1 AND label_time <= %(hi)s"

    def label_delay_ms(self, as_of_ms: int) -> int | None:
        """The median delay (whole hours) of the fraud labels known by `as_of_ms`, None without any."""
        hi = datetime.fromtimestamp(as_of_ms / 1000, UTC)
        lo = datetime.fromtimestamp((as_of_ms - DELAY_LOOKBACK_MS) / 1000, UTC)
        rows = self.store.query_rows(
            "SELECT count(), quantileExact(0.5)(dateDiff('second', t.event_time, l.known_at)) FROM "
            f"(SELECT transaction_id, event_time FROM {self.transactions} WHERE event_time >= %(lo)s "
            f"AND event_time < %(hi)s AND transaction_id IN ({self._known()})) AS t INNER JOIN "
            f"(SELECT transaction_id, max(label_time) AS known_at FROM {self.labels} WHERE is_fraud = 1 "
            "AND label_time <= %(hi)s GROUP BY transaction_id) AS l USING transaction_id",
            {"lo": lo, "hi": hi},
        )
        n, seconds = rows[0]
        if not int(n):
            return None
        return max(int(seconds) // 3600, 0) * 3_600_000

    def _windows(self, as_of_ms: int) -> dict[str, dict[str, float]]:
        delay = self.label_delay_ms(as_of_ms)
        if delay is None:
            return {}
        self.queries += 1
        end = as_of_ms - delay
        at = {name: datetime.fromtimestamp((end - w) / 1000, UTC) for name, w in FEATURE_WINDOWS_MS.items()}
        counts = ", ".join(
            f"countIf(event_time >= %(lo_{name})s) AS n_{name}, countIf(fraud AND event_time >= %(lo_{name})s)"
            for name in FEATURE_WINDOWS_MS
        )
        longest = max(FEATURE_WINDOWS_MS, key=FEATURE_WINDOWS_MS.__getitem__)
        hi = datetime.fromtimestamp(as_of_ms / 1000, UTC)
        rows = self.store.query_rows(
            f"SELECT merchant_id, {counts} FROM (SELECT merchant_id, event_time, transaction_id IN "
            f"({self._known()}) AS fraud FROM {self.transactions} WHERE event_time >= %(lo_{longest})s "
            "AND event_time < %(end)s) GROUP BY merchant_id HAVING countIf(fraud) > 0",
            {"hi": hi, "end": datetime.fromtimestamp(end / 1000, UTC), **{f"lo_{k}": v for k, v in at.items()}},
        )
        out: dict[str, dict[str, float]] = {name: {} for name in FEATURE_WINDOWS_MS}
        for merchant, *pairs in rows:
            for k, name in enumerate(FEATURE_WINDOWS_MS):
                n, f = int(pairs[2 * k]), int(pairs[2 * k + 1])
                if n:
                    out[name][str(merchant)] = f / n
        return out
