"""The ingest transform: validation rules, enrichment and scoring on columns (pure units)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from pipelines.config import load_settings
from pipelines.contracts.reference import load_reference
from pipelines.ingest.transform import RULE_VIOLATION, Enricher, transform
from pipelines.synth import iter_transactions
from tests.conftest import REPO


@pytest.fixture(scope="module")
def setup():  # type: ignore[no-untyped-def]
    settings = load_settings(REPO / "configs" / "nova.yaml", environ={})
    ref = load_reference(settings)
    return settings, ref, Enricher(ref)


def _records(ref, n: int, now_ms: int) -> list[dict]:  # type: ignore[no-untyped-def]
    return list(
        iter_transactions(
            seed=1, merchants=ref.merchants, fx_rates=ref.fx_rates, count=n, start_ms=now_ms, spread_s=0.5
        )
    )


def test_valid_records_become_typed_columns(setup) -> None:  # type: ignore[no-untyped-def]
    settings, ref, enricher = setup
    now = int(time.time() * 1000)
    recs = _records(ref, 1000, now - 1000)
    chunk = transform(recs, list(range(1000)), rules=settings.pipeline.rules, enricher=enricher, now_ms=now)
    assert chunk.rejected == []
    t = chunk.table
    assert t is not None and t.num_rows == 1000
    assert t["transaction_id"].to_pylist() == [r["transaction_id"] for r in recs]
    assert t["amount_minor"].to_pylist() == [r["amount_minor"] for r in recs]
    assert list(chunk.rows_index) == list(range(1000))
    names = t["merchant_name"].to_pylist()
    assert names == [ref.merchants[r["merchant_id"]].name for r in recs]
    scores = t["risk_score"].to_numpy()
    assert ((scores >= 0) & (scores <= 1)).all()
    assert t["contract_flags"].to_pylist() == [[]] * 1000


def test_reporting_amount_uses_fx_and_minor_units(setup) -> None:  # type: ignore[no-untyped-def]
    settings, ref, enricher = setup
    now = int(time.time() * 1000)
    base = _records(ref, 2, now - 1000)
    eur, jpy = dict(base[0]), dict(base[1])
    eur.update(currency="EUR", amount_minor=12345)
    jpy.update(currency="JPY", amount_minor=1000)  # ¥1000: JPY has no minor unit
    chunk = transform([eur, jpy], [0, 1], rules=settings.pipeline.rules, enricher=enricher, now_ms=now)
    assert chunk.table is not None
    rep = chunk.table["amount_reporting_minor"].to_pylist()
    assert rep[0] == 12345
    assert rep[1] == round(1000 * ref.fx_rates["JPY"].rate * 100)


@pytest.mark.parametrize(
    ("change", "rule"),
    [
        ({"amount_minor": 0}, "amount_range"),
        ({"amount_minor": -5}, "amount_range"),
        ({"currency": "XXX"}, "known_currency"),
        ({"event_time": "future"}, "event_time_future"),
        ({"event_time": "past"}, "event_time_past"),
    ],
)
def test_rule_violations_are_rejected_with_the_rule(setup, change: dict, rule: str) -> None:  # type: ignore[no-untyped-def]
    settings, ref, enricher = setup
    now = int(time.time() * 1000)
    recs = _records(ref, 5, now - 1000)
    bad = dict(recs[2])
    for k, v in change.items():
        if v == "future":
            v = now + 3_600_000
        elif v == "past":
            v = now - 4000 * 86_400_000
        bad[k] = v
    recs[2] = bad
    positions = [10, 11, 12, 13, 14]
    chunk = transform(recs, positions, rules=settings.pipeline.rules, enricher=enricher, now_ms=now)
    assert [(r.index, r.reason, r.rule) for r in chunk.rejected] == [(12, RULE_VIOLATION, rule)]
    assert list(chunk.rows_index) == [10, 11, 13, 14]
    assert chunk.table is not None and chunk.table.num_rows == 4
    assert bad["transaction_id"] not in chunk.table["transaction_id"].to_pylist()


def test_unknown_merchant_is_kept_and_marked(setup) -> None:  # type: ignore[no-untyped-def]
    settings, ref, enricher = setup
    now = int(time.time() * 1000)
    rec = dict(_records(ref, 1, now - 1000)[0], merchant_id="NOPE")
    # Kept only when the configuration says so: the default dead-letters it (tests/test_contract.py).
    rules = settings.pipeline.rules.model_copy(update={"unknown_merchant": "flag"})
    chunk = transform([rec], [0], rules=rules, enricher=enricher, now_ms=now)
    assert chunk.table is not None
    assert chunk.table["merchant_segment"].to_pylist() == ["unknown"]
    assert chunk.table["contract_flags"].to_pylist() == [["known_merchant"]]


def test_high_risk_is_rare_but_present(setup) -> None:  # type: ignore[no-untyped-def]
    settings, ref, enricher = setup
    now = int(time.time() * 1000)
    recs = _records(ref, 20000, now - 1000)
    chunk = transform(recs, list(range(len(recs))), rules=settings.pipeline.rules, enricher=enricher, now_ms=now)
    assert chunk.table is not None
    share = float(np.mean(chunk.table["risk_score"].to_numpy() >= 0.8))
    assert 0.0005 < share < 0.05
