"""`nova ingest` on the real stack enforces the data contract: each broken kind to the DLQ with its rule."""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Any

import pytest

from pipelines import kafka
from pipelines.config import Settings, load_settings
from pipelines.contracts.codec import encode
from pipelines.contracts.reference import load_reference
from pipelines.contracts.registry import open_registry
from pipelines.ops.dlq import read_dead_letters
from pipelines.synth import iter_transactions
from tests.conftest import REPO, run_nova
from tests.pipeline_env import PipelineEnv, make_env

pytestmark = pytest.mark.integration

VALID = 3000
# What the brief's broken events change, and the rule each must be dead-lettered under.
BROKEN: list[tuple[dict[str, Any], str]] = [
    ({"transaction_id": ""}, "transaction_id_uuid"),
    ({"transaction_id": "not-a-uuid"}, "transaction_id_uuid"),
    ({"card_id": ""}, "card_id_present"),
    ({"latitude": 1000.0}, "geo_position"),
    ({"longitude": -500.0}, "geo_position"),
    ({"latitude": math.nan}, "geo_position"),
    ({"longitude": math.inf}, "geo_position"),
    ({"merchant_category": "ABCD"}, "merchant_category_mcc"),
    ({"country": "xx9"}, "country_code"),
    ({"merchant_id": "M999999"}, "known_merchant"),
    ({"currency": "XXX"}, "known_currency"),
]


@pytest.fixture(params=["embedded", pytest.param("server", marks=pytest.mark.server)])
def pipeline(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    pe = make_env(tmp_path, request.param)
    yield pe
    pe.cleanup()


def _produce(settings: Settings, records: list[dict[str, Any]]) -> list[bytes]:
    """Each record with the real Avro encoder, in order; returns the values as produced."""
    latest = open_registry(settings).latest(settings.pipeline.subject)
    values = [encode(r, latest.id, latest.schema.parsed) for r in records]
    producer = kafka.producer(settings)
    for record, value in zip(records, values, strict=True):
        producer.produce(settings.pipeline.topic, value=value, key=record["card_id"].encode() or b"-")
    assert producer.flush(30) == 0
    return values


def _generated(settings: Settings, n: int, *, seed: int) -> list[dict[str, Any]]:
    ref = load_reference(settings)
    now_ms = int(time.time() * 1000)
    return list(
        iter_transactions(
            seed=seed, merchants=ref.merchants, fx_rates=ref.fx_rates, count=n, start_ms=now_ms - 60_000, spread_s=50
        )
    )


def test_each_broken_kind_lands_in_the_dlq_with_its_rule(pipeline: PipelineEnv) -> None:
    settings = load_settings(REPO / "configs" / "nova.yaml", environ=pipeline.env)
    valid = _generated(settings, VALID, seed=21)
    located = [r for r in _generated(settings, 200, seed=22) if r["latitude"] is not None]
    broken = [dict(base, **change) for base, (change, _) in zip(located, BROKEN, strict=False)]
    assert len(broken) == len(BROKEN)
    stream: list[dict[str, Any]] = list(valid)
    rng = random.Random(4)
    for record in broken:  # among the valid events, at random places
        stream.insert(rng.randrange(len(stream) + 1), record)
    value_of = {id(r): v for r, v in zip(stream, _produce(settings, stream), strict=True)}
    rule_of = {value_of[id(r)]: rule for r, (_, rule) in zip(broken, BROKEN, strict=True)}

    ingest = json.loads(pipeline.nova("ingest", "--until-caught-up", "--quiet", "--json").stdout)
    assert ingest["events"] == VALID
    assert ingest["rejected"] == {"rule_violation": len(BROKEN)}

    # Every valid event once, no broken one.
    assert pipeline.counts() == (VALID, VALID)
    stored = {
        r["transaction_id"] for r in pipeline.query(f"SELECT transaction_id FROM {pipeline.database}.transactions")
    }
    assert stored == {r["transaction_id"] for r in valid}
    flagged = pipeline.scalar(f"SELECT countIf(notEmpty(contract_flags)) AS n FROM {pipeline.database}.transactions")
    assert int(flagged) == 0

    # Every broken event in the DLQ, with its original bytes and the rule it broke.
    letters = list(read_dead_letters(settings))
    assert len(letters) == len(BROKEN)
    assert {dl.value: (dl.reason, dl.rule) for dl in letters} == {v: ("rule_violation", r) for v, r in rule_of.items()}
    assert all(dl.detail and dl.source[0] == pipeline.topic for dl in letters)
    shown = json.loads(pipeline.nova("dlq", "show", "--json").stdout)
    want: dict[str, int] = {}
    for _, rule in BROKEN:
        want[rule] = want.get(rule, 0) + 1
    assert shown["by_rule"] == want
    assert shown["by_reason"] == {"rule_violation": len(BROKEN)}


def test_unknown_merchants_can_be_kept_and_flagged(pipeline: PipelineEnv) -> None:
    settings = load_settings(REPO / "configs" / "nova.yaml", environ=pipeline.env)
    records = _generated(settings, 50, seed=23)
    records[7] = dict(records[7], merchant_id="M999999")
    records[9] = dict(records[9], merchant_id="M999998", country="xx9")  # flagged, but broken all the same
    _produce(settings, records)
    env = {**pipeline.env, "NOVA_PIPELINE__RULES__UNKNOWN_MERCHANT": "flag"}
    ingest = json.loads(run_nova("ingest", "--until-caught-up", "--quiet", "--json", env=env).stdout)
    assert ingest["events"] == 49 and ingest["rejected"] == {"rule_violation": 1}
    rows = pipeline.query(
        f"SELECT transaction_id, merchant_name, merchant_segment FROM {pipeline.database}.transactions "
        "WHERE has(contract_flags, 'known_merchant')"
    )
    assert rows == [
        {"transaction_id": records[7]["transaction_id"], "merchant_name": "", "merchant_segment": "unknown"}
    ]
    assert [dl.rule for dl in read_dead_letters(settings)] == ["country_code"]
