"""`nova corpus synccfd`: a corpus nobody here wrote, converted to our contract and its own merchant dimension."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.config import load_settings
from pipelines.contracts.arrow import CONTRACT_SCHEMA
from pipelines.contracts.reference import ReferenceData, load_merchants, load_reference
from pipelines.contracts.rules import ReferenceSets, check_contract
from pipelines.synth.corpus import LABELS_SCHEMA
from pipelines.synth.synccfd import SYNCCFD_SCENARIOS
from tests.conftest import run_nova


def test_synccfd_corpus_converts_to_the_contract_with_its_own_merchants(tmp_path: Path) -> None:
    out = tmp_path / "synccfd"
    result = run_nova(
        "corpus", "synccfd", "--out", str(out), "--customers", "30", "--terminals", "120", "--days", "7",
        "--seed", "2", "--json",
    )  # fmt: skip
    summary = json.loads(result.stdout)
    tx = pq.read_table(out / "transactions.parquet")
    labels = pq.read_table(out / "labels.parquet")
    assert tx.schema == CONTRACT_SCHEMA and labels.schema == LABELS_SCHEMA
    assert summary["transactions"] == tx.num_rows == labels.num_rows > 150
    assert labels["transaction_id"].to_pylist() == tx["transaction_id"].to_pylist()
    assert len(set(tx["transaction_id"].to_pylist())) == tx.num_rows

    # the contract's rules, against the corpus's own merchant dimension (its terminals)
    settings = load_settings(None)
    base = load_reference(settings)
    merchants = load_merchants(out / "merchants.csv")
    assert len(merchants) == summary["merchants"] == len(set(tx["merchant_id"].to_pylist()))
    reference = ReferenceData(merchants=merchants, fx_rates=base.fx_rates,
                              reporting_currency=base.reporting_currency, countries=base.countries)  # fmt: skip
    verdict = check_contract(
        tx, rules=settings.pipeline.rules, sets=ReferenceSets.from_reference(reference), now_ms=int(time.time() * 1000)
    )
    assert verdict.rejected == [] and not verdict.flagged.any()

    # what synccfd has and what is filled in
    assert set(tx["channel"].to_pylist()) == {"POS", "ECOM"}
    assert all(c.startswith("C") for c in tx["card_id"].to_pylist()[:50])
    assert tx["device_id"].null_count == tx.num_rows
    ecom = pc.equal(tx["channel"], "ECOM")
    assert tx.filter(ecom)["latitude"].null_count == int(pc.sum(ecom).as_py())
    assert tx.filter(pc.invert(ecom))["latitude"].null_count == 0
    times = tx["event_time"].cast(pa.int64()).to_numpy()
    assert (times[1:] >= times[:-1]).all()

    # labels: fraud with synccfd's scenario names, known 7 days after the transaction
    df = labels.to_pandas()
    fraud = df[df["is_fraud"]]
    assert 0 < len(fraud) == summary["fraud"] < len(df)
    assert set(fraud["scenario"]) <= set(SYNCCFD_SCENARIOS.values()) and df[~df["is_fraud"]]["scenario"].isna().all()
    delay = fraud["label_time"] - tx.to_pandas().loc[fraud.index, "event_time"]
    assert (delay == timedelta(days=7)).all()
