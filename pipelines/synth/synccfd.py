"""A corpus nobody here wrote: `synccfd` (PyPI, MIT) transactions converted to our contract.

synccfd simulates customers and terminals around Brazilian cities and labels four kinds of
fraud (its TX_FRAUD_SCENARIO): 1 any amount above 220, 2 every transaction at two terminals a
day compromised for 28 days, 3 a third of a customer's card-not-present transactions over 14
days at random terminals (x5 amounts), 4 a stolen card's next 5 days moved to one day (x5).
What it has and what we fill in (``SYNCCFD_MAP``):

- transaction_id: uuid5 of its integer TRANSACTION_ID; event_time: TX_DATETIME (UTC);
- card_id / account_id: "C" + CUSTOMER_ID; merchant_id: "T" + TERMINAL_ID (its terminal);
- amount_minor: TX_AMOUNT x 100 (its amounts have no currency: taken as EUR);
- channel: TX_TYPE CP → POS, CNP → ECOM; latitude/longitude: the terminal's for CP, null for CNP;
- constants: merchant_category 5999, currency EUR, country BR, status AUTHORIZED;
  device_id / ip_address: null (synccfd has none).

Labels: is_fraud = TX_FRAUD, scenario = its scenario's name (``SYNCCFD_SCENARIOS``), label_time =
event_time + 7 days (synccfd has no label times), episode = the customer (fraud of scenarios
3 and 4 is per customer) or the terminal (scenario 2). The merchant dimension lists every
terminal (category 5999, segment small, country BR, currency EUR).
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.errors import UsageError
from pipelines.synth.corpus import (
    FrameMap,
    from_frame,
    labels_from_frame,
    merchant_rows,
    write_merchants,
    write_parquet,
)

SYNCCFD_SCENARIOS: Final = {1: "high_amount", 2: "compromised_terminal", 3: "stolen_card_number", 4: "stolen_card"}
SYNCCFD_MAP: Final = FrameMap(
    columns={
        "transaction_id": "TRANSACTION_ID",
        "event_time": "TX_DATETIME",
        "card_id": "CUSTOMER_ID",
        "merchant_id": "TERMINAL_ID",
        "amount": "TX_AMOUNT",
        "channel": "TX_TYPE",
        "latitude": "TX_TERM_LAT",
        "longitude": "TX_TERM_LONG",
    },
    constants={"merchant_category": "5999", "currency": "EUR", "country": "BR", "status": "AUTHORIZED"},
    values={"channel": {"CP": "POS", "CNP": "ECOM"}},
    prefixes={"card_id": "C", "merchant_id": "T"},
)
SYNCCFD_LABEL_DELAY_MS: Final = 7 * 86_400_000


@dataclass
class CorpusReport:
    """What `write_synccfd_corpus` wrote."""

    directory: str
    transactions: int
    fraud: int
    merchants: int
    per_scenario: dict[str, int]
    first_event_ms: int
    last_event_ms: int

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def write_synccfd_corpus(
    *, out: Path, customers: int, terminals: int, days: int, seed: int, start: datetime | None = None
) -> CorpusReport:
    """Generate a synccfd corpus and write DIR/transactions.parquet, labels.parquet and merchants.csv.

    `start` defaults to midnight UTC `days` + 1 days ago, so every event is in the past and
    recent enough for the contract's event_time_past rule.
    """
    if customers < 1 or terminals < 1 or days < 1:
        raise UsageError("--customers, --terminals and --days must be at least 1")
    if start is None:
        today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        start = datetime.fromtimestamp(today.timestamp() - (days + 1) * 86_400, UTC)
    import synccfd

    generator = synccfd.DatasetGenerator(
        n_customers=customers, n_terminals=terminals, nb_days=days, start_date=start.strftime("%Y-%m-%d"),
        random_state=seed,
    )  # fmt: skip
    with contextlib.redirect_stdout(sys.stderr):  # its progress prints must not mix with our output
        _customers, _terminals, frame = generator.generate()
    if frame.empty:
        raise UsageError("synccfd generated no transactions", hint="use more customers or days")
    source = pa.Table.from_pandas(frame, preserve_index=False)
    transactions, labels = convert_synccfd(source)
    out.mkdir(parents=True, exist_ok=True)
    write_parquet(transactions, out / "transactions.parquet")
    write_parquet(labels, out / "labels.parquet")
    merchants = merchant_rows(transactions["merchant_id"], category="5999", country="BR", currency="EUR")
    write_merchants(out / "merchants.csv", merchants)
    times = pc.cast(transactions["event_time"], pa.int64())
    scenario_counts = pc.value_counts(labels.filter(labels["is_fraud"])["scenario"]).to_pylist()
    return CorpusReport(
        directory=str(out), transactions=transactions.num_rows, fraud=int(pc.sum(labels["is_fraud"]).as_py() or 0),
        merchants=len(merchants), per_scenario={str(d["values"]): int(d["counts"]) for d in scenario_counts},
        first_event_ms=int(pc.min(times).as_py()), last_event_ms=int(pc.max(times).as_py()),
    )  # fmt: skip


def convert_synccfd(source: pa.Table) -> tuple[pa.Table, pa.Table]:
    """synccfd's transactions frame (as Arrow) → (contract transactions, labels), in event-time order."""
    source = source.sort_by([("TX_DATETIME", "ascending"), ("TRANSACTION_ID", "ascending")])
    transactions = from_frame(source, SYNCCFD_MAP)
    card_present = pc.equal(transactions["channel"], "POS")
    null = pa.nulls(transactions.num_rows, pa.float64())
    for name in ("latitude", "longitude"):
        where = transactions.schema.get_field_index(name)
        transactions = transactions.set_column(where, name, pc.if_else(card_present, transactions[name], null))
    code = source["TX_FRAUD_SCENARIO"].to_numpy()
    names = pa.array([SYNCCFD_SCENARIOS.get(int(c)) for c in np.unique(code)], pa.string())
    scenario = names.take(pa.array(np.searchsorted(np.unique(code), code)))
    customer = source["CUSTOMER_ID"].to_numpy().astype(np.int64)
    terminal = source["TERMINAL_ID"].to_numpy().astype(np.int64)
    episode = np.where(code == 2, 10**9 + terminal, customer)
    labels = labels_from_frame(
        transactions["transaction_id"], source["TX_FRAUD"].to_numpy() == 1, transactions["event_time"],
        scenario=scenario, episode=episode, label_delay_ms=SYNCCFD_LABEL_DELAY_MS,
    )  # fmt: skip
    return transactions, labels
