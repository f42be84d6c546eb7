"""The data contract's rules (pipelines/contracts/rules.py), one by one, on whole columns (pure units)."""

from __future__ import annotations

import math
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from pipelines.config import RulesSettings, Settings, load_settings
from pipelines.contracts.arrow import records_table
from pipelines.contracts.reference import ReferenceData, load_countries, load_reference
from pipelines.contracts.rules import RULES, ReferenceSets, check_contract, is_uuid_text, off_earth
from pipelines.errors import ConfigError
from pipelines.ingest.transform import RULE_VIOLATION, Enricher, transform
from pipelines.synth import iter_transactions
from tests.conftest import REPO

NOW = int(time.time() * 1000)


@pytest.fixture(scope="module")
def settings() -> Settings:
    return load_settings(REPO / "configs" / "nova.yaml", environ={})


@pytest.fixture(scope="module")
def reference(settings: Settings) -> ReferenceData:
    return load_reference(settings)


@pytest.fixture(scope="module")
def enricher(reference: ReferenceData) -> Enricher:
    return Enricher(reference)


def _records(reference: ReferenceData, n: int) -> list[dict[str, Any]]:
    return list(
        iter_transactions(
            seed=5, merchants=reference.merchants, fx_rates=reference.fx_rates, count=n, start_ms=NOW - 2000, spread_s=1
        )
    )


def _located(reference: ReferenceData, n: int) -> list[dict[str, Any]]:
    """Generated events that carry a position (POS / CONTACTLESS), so geo changes start from a valid one."""
    located = [r for r in _records(reference, 400) if r["latitude"] is not None]
    assert len(located) >= n
    return located[:n]


# Each broken event the contract must dead-letter, with the rule that names it.
BROKEN: list[tuple[str, dict[str, Any], str]] = [
    ("empty transaction id", {"transaction_id": ""}, "transaction_id_uuid"),
    ("transaction id not a uuid", {"transaction_id": "tx-0001"}, "transaction_id_uuid"),
    ("uuid without dashes", {"transaction_id": "0" * 36}, "transaction_id_uuid"),
    ("uuid with a non-hex digit", {"transaction_id": "6f1c2a4e-9b3d-4c5e-8f7a-0b1c2d3e4f5g"}, "transaction_id_uuid"),
    ("uuid braces", {"transaction_id": "{6f1c2a4e-9b3d-4c5e-8f7a-0b1c2d3e4f}"}, "transaction_id_uuid"),
    ("36 bytes, not ascii", {"transaction_id": "6f1c2a4e-9b3d-4c5e-8f7a-0b1c2d3e4fé"}, "transaction_id_uuid"),
    ("empty card id", {"card_id": ""}, "card_id_present"),
    ("blank card id", {"card_id": "  \t"}, "card_id_present"),
    ("latitude 1000", {"latitude": 1000.0}, "geo_position"),
    ("longitude -500", {"longitude": -500.0}, "geo_position"),
    ("latitude NaN", {"latitude": math.nan}, "geo_position"),
    ("longitude infinite", {"longitude": math.inf}, "geo_position"),
    ("latitude -infinite", {"latitude": -math.inf}, "geo_position"),
    ("latitude without longitude", {"longitude": None}, "geo_position"),
    ("MCC ABCD", {"merchant_category": "ABCD"}, "merchant_category_mcc"),
    ("MCC of 3 digits", {"merchant_category": "541"}, "merchant_category_mcc"),
    ("MCC of 5 digits", {"merchant_category": "54110"}, "merchant_category_mcc"),
    ("MCC in Arabic-Indic digits", {"merchant_category": "٥٤١١"}, "merchant_category_mcc"),
    ("country xx9", {"country": "xx9"}, "country_code"),
    ("country in lower case", {"country": "de"}, "country_code"),
    ("country UK (ISO says GB)", {"country": "UK"}, "country_code"),
    ("country empty", {"country": ""}, "country_code"),
    ("merchant not in the dimension", {"merchant_id": "M999999"}, "known_merchant"),
    ("currency not accepted", {"currency": "XXX"}, "known_currency"),
    ("amount zero", {"amount_minor": 0}, "amount_range"),
]


def test_every_rule_is_exercised() -> None:
    tested = {rule for _, _, rule in BROKEN} | {"event_time_future", "event_time_past"}  # test_transform.py
    assert tested == set(RULES)


@pytest.mark.parametrize(("change", "rule"), [(c, r) for _, c, r in BROKEN], ids=[name for name, _, _ in BROKEN])
def test_broken_event_is_dead_lettered_with_its_rule(
    settings: Settings, reference: ReferenceData, enricher: Enricher, change: dict[str, Any], rule: str
) -> None:
    recs = _located(reference, 5)
    bad = dict(recs[2], **change)
    recs[2] = bad
    chunk = transform(recs, [10, 11, 12, 13, 14], rules=settings.pipeline.rules, enricher=enricher, now_ms=NOW)
    assert [(r.index, r.reason, r.rule) for r in chunk.rejected] == [(12, RULE_VIOLATION, rule)]
    assert chunk.rejected[0].detail  # says what was wrong
    assert list(chunk.rows_index) == [10, 11, 13, 14]
    assert chunk.table is not None
    assert bad["transaction_id"] not in chunk.table["transaction_id"].to_pylist()


@pytest.mark.parametrize(
    "change",
    [
        {"transaction_id": "6F1C2A4E-9B3D-4C5E-8F7A-0B1C2D3E4F5A"},  # RFC 4122: hex digits in either case
        {"transaction_id": "00000000-0000-0000-0000-000000000000"},  # the nil UUID is a UUID
        {"latitude": 90.0, "longitude": -180.0},
        {"latitude": -90.0, "longitude": 180.0},
        {"latitude": 0.0, "longitude": 0.0},
        {"latitude": None, "longitude": None},
        {"card_id": "x"},
        {"country": "JP"},  # any ISO code, not only the merchants' countries
        {"merchant_category": "0000"},
    ],
    ids=repr,
)
def test_edge_values_that_keep_the_contract(
    settings: Settings, reference: ReferenceData, enricher: Enricher, change: dict[str, Any]
) -> None:
    recs = [dict(r, **change) for r in _located(reference, 3)]
    chunk = transform(recs, [0, 1, 2], rules=settings.pipeline.rules, enricher=enricher, now_ms=NOW)
    assert chunk.rejected == []
    assert chunk.table is not None and chunk.table.num_rows == 3


def test_details_quote_the_offending_value(settings: Settings, reference: ReferenceData, enricher: Enricher) -> None:
    changes = [
        {"transaction_id": ""},
        {"card_id": ""},
        {"latitude": 1000.0},
        {"merchant_category": "ABCD"},
        {"country": "xx9"},
        {"merchant_id": "NOPE"},
    ]
    recs = [dict(r, **c) for r, c in zip(_located(reference, len(changes)), changes, strict=True)]
    chunk = transform(recs, list(range(len(recs))), rules=settings.pipeline.rules, enricher=enricher, now_ms=NOW)
    details = [r.detail for r in chunk.rejected]
    assert details[0] == "transaction_id '' is not a UUID (8-4-4-4-12 hex digits)"
    assert details[1] == "card_id '' is empty or blank"
    assert details[2].startswith("latitude=1000.0, longitude=")
    assert details[3] == "merchant_category 'ABCD' is not a 4-digit ISO 18245 MCC"
    assert details[4] == "country 'xx9' is not an ISO 3166-1 alpha-2 code of pipeline.rules.countries"
    assert details[5] == "merchant_id 'NOPE' is not in the merchant dimension (pipeline.merchants)"


def test_a_huge_value_is_cut_short_in_the_detail(
    settings: Settings, reference: ReferenceData, enricher: Enricher
) -> None:
    rec = dict(_records(reference, 1)[0], transaction_id="x" * 100_000)
    chunk = transform([rec], [0], rules=settings.pipeline.rules, enricher=enricher, now_ms=NOW)
    assert chunk.rejected[0].rule == "transaction_id_uuid"
    assert len(chunk.rejected[0].detail) < 200


def test_currency_needs_a_rate_as_well_as_a_place_in_the_rules(
    settings: Settings, reference: ReferenceData, enricher: Enricher
) -> None:
    assert "NOK" not in reference.fx_rates
    rules = settings.pipeline.rules.model_copy(update={"currencies": [*settings.pipeline.rules.currencies, "NOK"]})
    recs = _records(reference, 3)
    recs[1] = dict(recs[1], currency="NOK")
    chunk = transform(recs, [0, 1, 2], rules=rules, enricher=enricher, now_ms=NOW)
    assert [(r.index, r.rule) for r in chunk.rejected] == [(1, "known_currency")]
    assert chunk.rejected[0].detail == "currency 'NOK' has no rate in the FX reference (pipeline.fx_rates)"


def test_the_first_broken_rule_names_the_event(
    settings: Settings, reference: ReferenceData, enricher: Enricher
) -> None:
    rec = dict(_located(reference, 1)[0], amount_minor=0, transaction_id="", country="xx9", merchant_id="NOPE")
    chunk = transform([rec], [0], rules=settings.pipeline.rules, enricher=enricher, now_ms=NOW)
    assert [r.rule for r in chunk.rejected] == ["amount_range"]  # RULES order: the older rules first
    rec = dict(rec, amount_minor=100)
    chunk = transform([rec], [0], rules=settings.pipeline.rules, enricher=enricher, now_ms=NOW)
    assert [r.rule for r in chunk.rejected] == ["transaction_id_uuid"]


def test_unknown_merchant_dead_letters_by_default_and_flags_when_configured(
    settings: Settings, reference: ReferenceData, enricher: Enricher
) -> None:
    assert settings.pipeline.rules.unknown_merchant == "dead_letter"
    recs = _records(reference, 4)
    recs[1] = dict(recs[1], merchant_id="NOPE")
    recs[3] = dict(recs[3], merchant_id="NOPE", country="xx9")  # unknown merchant and a broken rule
    flag = settings.pipeline.rules.model_copy(update={"unknown_merchant": "flag"})
    chunk = transform(recs, [0, 1, 2, 3], rules=flag, enricher=enricher, now_ms=NOW)
    assert [(r.index, r.rule) for r in chunk.rejected] == [(3, "country_code")]
    assert chunk.table is not None
    assert chunk.table["contract_flags"].to_pylist() == [[], ["known_merchant"], []]
    assert chunk.table["merchant_name"].to_pylist()[1] == ""
    assert chunk.table["merchant_segment"].to_pylist()[1] == "unknown"


def test_flag_is_the_only_other_choice_for_unknown_merchants() -> None:
    with pytest.raises(ValueError, match="unknown_merchant"):
        RulesSettings(unknown_merchant="keep")  # type: ignore[arg-type]


def test_unknown_merchant_setting_comes_from_the_environment() -> None:
    settings = load_settings(REPO / "configs" / "nova.yaml", environ={"NOVA_PIPELINE__RULES__UNKNOWN_MERCHANT": "flag"})
    assert settings.pipeline.rules.unknown_merchant == "flag"


def test_a_batch_of_only_broken_events_leaves_no_table(
    settings: Settings, reference: ReferenceData, enricher: Enricher
) -> None:
    recs = [dict(r, card_id="") for r in _records(reference, 3)]
    chunk = transform(recs, [5, 6, 7], rules=settings.pipeline.rules, enricher=enricher, now_ms=NOW)
    assert chunk.table is None
    assert [r.index for r in chunk.rejected] == [5, 6, 7]


def test_check_contract_on_a_generated_batch_keeps_every_row(settings: Settings, reference: ReferenceData) -> None:
    table = records_table(_records(reference, 5000)).combine_chunks()
    verdict = check_contract(
        table, rules=settings.pipeline.rules, sets=ReferenceSets.from_reference(reference), now_ms=NOW
    )
    assert verdict.keep.all() and verdict.rejected == [] and not verdict.flagged.any()
    assert verdict.merchant_index.null_count == 0


UUID = "6f1c2a4e-9b3d-4c5e-8f7a-0b1c2d3e4f5a"


@pytest.mark.parametrize("string_type", [pa.string(), pa.large_string()], ids=str)
def test_uuid_check_on_mixed_lengths_nulls_and_slices(string_type: pa.DataType) -> None:
    values = [UUID, "", None, UUID.upper(), UUID[:-1] + "z", "x" * 36, UUID + "0", "é" * 18, UUID]
    want = [True, False, False, True, False, False, False, False, True]
    arr = pa.array(values, string_type)
    assert is_uuid_text(arr).tolist() == want
    assert is_uuid_text(arr.slice(3, 5)).tolist() == want[3:8]
    clean = pa.array([UUID] * 4, string_type)
    assert is_uuid_text(clean).tolist() == [True] * 4
    assert is_uuid_text(clean.slice(1, 2)).tolist() == [True] * 2
    assert is_uuid_text(pa.array([], string_type)).tolist() == []


def test_uuid_check_matches_a_regex_on_random_bytes() -> None:
    rng = np.random.default_rng(3)
    alphabet = list("0123456789abcdefABCDEFgG-/:@`{ ")
    values = ["".join(rng.choice(alphabet, size=36)) for _ in range(3000)]
    values += [UUID[:i] + c + UUID[i + 1 :] for i in range(36) for c in "-0aFg/:@`"]
    pattern = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
    assert is_uuid_text(pa.array(values)).tolist() == [bool(pattern.match(v)) for v in values]


def test_geo_check_on_nulls_and_slices() -> None:
    lat = pa.array([1.0, None, None, 91.0, math.nan, 45.0, -90.0, 10.0])
    lon = pa.array([2.0, None, 3.0, 0.0, 0.0, 181.0, 180.0, None])
    want = [False, False, True, True, True, True, False, True]
    assert off_earth(lat, lon).tolist() == want
    assert off_earth(lat.slice(2, 5), lon.slice(2, 5)).tolist() == want[2:7]
    assert off_earth(pa.nulls(3, pa.float64()), pa.nulls(3, pa.float64())).tolist() == [False] * 3
    assert off_earth(pa.array([1.0] * 3), pa.array([2.0] * 3)).tolist() == [False] * 3


def test_the_country_list_is_iso_3166_alpha_2(reference: ReferenceData) -> None:
    assert len(reference.countries) == 249
    assert {"DE", "GB", "US", "JP", "CH"} <= reference.countries
    assert "UK" not in reference.countries and "EU" not in reference.countries
    assert {m.country for m in reference.merchants.values()} <= reference.countries


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("country,name\nDE,Germany\nde,Germany\n", "'de' is not an ISO 3166-1 alpha-2 code"),
        ("country,name\nDE,Germany\nDE,Deutschland\n", "country DE appears twice"),
        ("code,name\nDE,Germany\n", "header is 'code,name', expected 'country,name'"),
        ("country,name\n", "no countries"),
    ],
)
def test_a_bad_countries_file_names_the_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "countries.csv"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_countries(path)


def test_a_merchant_in_an_unlisted_country_is_a_config_error(project: Path) -> None:
    countries = project / "configs" / "reference" / "countries.csv"
    countries.write_text("".join(line for line in countries.read_text().splitlines(True) if not line.startswith("NL,")))
    settings = load_settings(project / "configs" / "nova.yaml", environ={})
    with pytest.raises(ConfigError, match="is in country 'NL', which is not in"):
        load_reference(settings)


def test_the_docs_list_every_rule() -> None:
    readme = (REPO / "README.md").read_text()
    config = (REPO / "configs" / "nova.yaml").read_text()
    for rule in RULES:
        assert f"`{rule}`" in readme, f"README.md does not document rule {rule}"
        assert re.search(rf"^\s*#\s+{rule}\s", config, re.M), f"configs/nova.yaml does not describe rule {rule}"
