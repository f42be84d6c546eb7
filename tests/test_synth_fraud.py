"""Labelled traffic (pipelines.synth.fraud / habits / corpus): scenario shares and shapes, ground truth
kept apart and complete, legit habits that don't look like fraud, determinism. Units: no services."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cli.generate import parse_label_delay
from pipelines.config import load_settings
from pipelines.contracts.arrow import CONTRACT_SCHEMA
from pipelines.contracts.reference import load_reference
from pipelines.contracts.rules import ReferenceSets, check_contract
from pipelines.errors import UsageError
from pipelines.synth.corpus import LABELS_SCHEMA, FrameMap, LabelledCorpus, build_corpus, from_frame, merchant_rows
from pipelines.synth.fraud import SCENARIOS, FraudSpec, parse_scenarios
from pipelines.synth.habits import haversine_km
from pipelines.synth.labelled import generate_labelled
from pipelines.synth.model import _CITIES
from tests.conftest import run_nova

SETTINGS = load_settings(None)
REFERENCE = load_reference(SETTINGS)
RATES = {c: r.rate / 10**r.exponent for c, r in REFERENCE.fx_rates.items()}  # EUR per minor unit
DAY = 86_400_000
COUNT = 80_000
RATE = 0.05


def _corpus(seed: int = 11, *, count: int = COUNT, fraud: FraudSpec | None = None, cards: int = 3000) -> LabelledCorpus:
    now = int(time.time() * 1000) // DAY * DAY
    return build_corpus(
        reference=REFERENCE, rules=SETTINGS.pipeline.rules, seed=seed, count=count, start_ms=now - 15 * DAY,
        spread_s=14 * 86_400, fraud=fraud or FraudSpec(rate=RATE), cards=cards,
    )  # fmt: skip


@pytest.fixture(scope="module")
def corpus() -> LabelledCorpus:
    return _corpus()


@pytest.fixture(scope="module")
def frame(corpus: LabelledCorpus) -> pd.DataFrame:
    """Transactions joined with their labels, amounts in EUR, in event-time order."""
    tx = corpus.transactions_table().to_pandas()
    labels = corpus.labels_table().to_pandas()
    df = tx.join(labels.set_index("transaction_id"), on="transaction_id")
    df["t"] = corpus.transactions_table()["event_time"].cast(pa.int64()).to_numpy()  # epoch ms
    df["eur"] = df["amount_minor"] * df["currency"].map(RATES)
    return df


def _history(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[~frame["is_fraud"]]


def test_shares_are_exact_and_every_scenario_appears(corpus: LabelledCorpus) -> None:
    per = corpus.summary()
    assert sum(s["transactions"] for s in per.values()) == round(RATE * COUNT) == int(corpus.is_fraud.sum())
    for name in SCENARIOS:
        assert per[name]["transactions"] == round(RATE * COUNT / 5), name
        assert per[name]["episodes"] >= 3, name
    weighted = _corpus(
        seed=5, count=20_000, fraud=FraudSpec(rate=0.02, weights=parse_scenarios(["card_testing=3", "amount_spike"]))
    )
    shares = {k: v["transactions"] for k, v in weighted.summary().items()}
    assert shares == {"card_testing": 300, "takeover_burst": 0, "impossible_travel": 0, "amount_spike": 100,
                      "compromised_merchant": 0}  # fmt: skip


def test_labels_cover_every_transaction_once_and_stay_out_of_the_events(corpus: LabelledCorpus) -> None:
    tx = corpus.transactions_table()
    labels = corpus.labels_table()
    assert tx.schema == CONTRACT_SCHEMA and labels.schema == LABELS_SCHEMA
    ids = labels["transaction_id"].to_pylist()
    assert len(set(ids)) == len(ids) == tx.num_rows
    assert ids == tx["transaction_id"].to_pylist()
    df = labels.to_pandas()
    assert df["scenario"].isna().equals(~df["is_fraud"]) and df["label_time"].isna().equals(~df["is_fraud"])
    delay = (df["label_time"] - tx["event_time"].to_pandas())[df["is_fraud"]]
    assert delay.min() >= pd.Timedelta(days=1) and delay.max() <= pd.Timedelta(days=10)
    # nothing in the events names a scenario or says "fraud"
    for name in tx.column_names:
        if pa.types.is_string(tx.schema.field(name).type):
            values = set(tx[name].drop_null().to_pylist()[:: max(1, tx.num_rows // 20_000)]) | set(
                tx.filter(pa.array(corpus.is_fraud))[name].drop_null().to_pylist()
            )
            assert not any(s in v for v in values for s in (*SCENARIOS, "fraud")), name


def test_events_are_in_event_time_order_and_pass_the_contract(corpus: LabelledCorpus) -> None:
    tx = corpus.transactions_table()
    t = tx["event_time"].cast(pa.int64()).to_numpy()
    assert (np.diff(t) >= 0).all()
    verdict = check_contract(
        tx, rules=SETTINGS.pipeline.rules, sets=ReferenceSets.from_reference(REFERENCE), now_ms=int(time.time() * 1000)
    )
    assert verdict.rejected == [] and not verdict.flagged.any()


def test_card_episodes_sit_inside_the_cards_history(frame: pd.DataFrame) -> None:
    fraud = frame[frame["is_fraud"] & (frame["scenario"] != "compromised_merchant")]
    first = fraud.groupby("episode").agg(card=("card_id", "first"), t=("t", "min"))
    legit = _history(frame)
    before = legit.groupby("card_id")["t"].min().reindex(first["card"]).to_numpy()
    after = legit.groupby("card_id")["t"].max().reindex(first["card"]).to_numpy()
    with_history = (before < first["t"].to_numpy()) & (after > first["t"].to_numpy())
    assert with_history.mean() > 0.9, "episodes must be interleaved with the card's legit traffic"
    assert (fraud.groupby("episode")["card_id"].nunique() == 1).all()


def test_card_testing_is_many_tiny_authorisations_within_minutes(frame: pd.DataFrame) -> None:
    ep = frame[frame["scenario"] == "card_testing"].groupby("episode")
    shape = ep.agg(
        n=("t", "size"),
        span=("t", lambda s: s.max() - s.min()),
        top=("eur", "max"),
        ecom=("channel", lambda s: (s == "ECOM").mean()),
        declined=("status", lambda s: (s == "DECLINED").mean()),
    )
    whole = shape.iloc[:-1]  # the last episode may be cut to hit the share
    assert (whole["n"] >= 6).all()
    assert (shape["span"] <= 30 * 60_000).all()
    assert (shape["top"] <= 4.01).all()
    assert shape["ecom"].mean() > 0.8 and 0.2 < shape["declined"].mean() < 0.5
    # the testing device is new to the card
    legit_devices = set(zip(_history(frame)["card_id"], _history(frame)["device_id"], strict=True))
    rows = frame[(frame["scenario"] == "card_testing") & frame["device_id"].notna()]
    assert not any((c, d) in legit_devices for c, d in zip(rows["card_id"], rows["device_id"], strict=True))


def _card_median(frame: pd.DataFrame) -> pd.Series:
    return _history(frame).groupby("card_id")["eur"].median()


def test_takeover_burst_is_new_device_high_spend_within_the_hour(frame: pd.DataFrame) -> None:
    rows = frame[frame["scenario"] == "takeover_burst"]
    shape = rows.groupby("episode").agg(span=("t", lambda s: s.max() - s.min()), devices=("device_id", "nunique"))
    assert (shape["span"] <= 60 * 60_000).all() and (shape["devices"] == 1).all()
    legit = _history(frame)
    known = set(zip(legit["card_id"], legit["device_id"], strict=True))
    assert not any((c, d) in known for c, d in zip(rows["card_id"], rows["device_id"], strict=True))
    ratio = rows["eur"].to_numpy() / _card_median(frame).reindex(rows["card_id"]).to_numpy()
    assert np.nanmedian(ratio) > 3


def _country_of_position(lat: float, lon: float) -> str:
    best = min(((haversine_km(np.array(lat), np.array(lon), np.array(a), np.array(b)), c)
                for c, cities in _CITIES.items() for a, b in cities), key=lambda x: float(x[0]))  # fmt: skip
    assert float(best[0]) < 60, (lat, lon)
    return best[1]


def test_impossible_travel_is_two_far_countries_within_an_hour(frame: pd.DataFrame) -> None:
    located = frame[frame["latitude"].notna()]
    rows = frame[frame["scenario"] == "impossible_travel"]
    firsts = rows.sort_values("t").groupby("episode").head(1)
    assert len(firsts) >= 20
    legit_located = located[~located["is_fraud"]].groupby("card_id")
    for _, row in firsts.head(60).iterrows():
        history = legit_located.get_group(row["card_id"])
        prev = history[history["t"] < row["t"]].iloc[-1]
        assert row["t"] - prev["t"] <= 60 * 60_000
        km = float(haversine_km(np.array(prev["latitude"]), np.array(prev["longitude"]),
                                np.array(row["latitude"]), np.array(row["longitude"])))  # fmt: skip
        assert km >= 1500 and prev["country"] != row["country"]
        # positions are consistent with the countries
        assert _country_of_position(row["latitude"], row["longitude"]) == row["country"]
        assert _country_of_position(prev["latitude"], prev["longitude"]) == prev["country"]


def test_amount_spike_is_far_outside_the_cards_habit(frame: pd.DataFrame) -> None:
    rows = frame[frame["scenario"] == "amount_spike"]
    ratio = rows["eur"].to_numpy() / _card_median(frame).reindex(rows["card_id"]).to_numpy()
    assert np.nanquantile(ratio, 0.1) > 6 and np.nanmedian(ratio) > 12


def test_compromised_merchant_defrauds_many_cards_over_days(frame: pd.DataFrame) -> None:
    rows = frame[frame["scenario"] == "compromised_merchant"]
    shape = rows.groupby("episode").agg(
        merchants=("merchant_id", "nunique"), cards=("card_id", "nunique"), span=("t", lambda s: s.max() - s.min())
    )
    assert (shape["merchants"] == 1).all()
    whole = shape.iloc[:-1]
    assert (whole["cards"] >= 10).all() and (whole["span"] >= DAY).all()


def test_legit_traffic_keeps_habits_with_some_benign_outliers(frame: pd.DataFrame) -> None:
    legit = _history(frame).sort_values(["card_id", "t"], kind="stable")
    # no legit card pays in person faster than a plane between two places
    located = legit[legit["latitude"].notna()]
    same = located["card_id"].to_numpy()[1:] == located["card_id"].to_numpy()[:-1]
    lat, lon, t = located["latitude"].to_numpy(), located["longitude"].to_numpy(), located["t"].to_numpy()
    km = haversine_km(lat[:-1], lon[:-1], lat[1:], lon[1:])[same]
    hours = np.maximum((t[1:] - t[:-1])[same], 1) / 3_600_000
    assert ((km > 300) & (km / hours > 900)).sum() == 0
    # a card mostly pays in its home country, at a handful of merchants
    per_country = legit.groupby(["card_id", "country"]).size()
    home_share = per_country.groupby(level=0).max() / per_country.groupby(level=0).sum()
    assert home_share.median() > 0.85
    # benign outliers: legit trips abroad (in person) and legit large purchases exist
    in_person = located.groupby("card_id")["country"].nunique()
    assert (in_person > 1).sum() >= 5
    ratio = legit["eur"].to_numpy() / _card_median(frame).reindex(legit["card_id"]).to_numpy()
    assert (ratio > 8).sum() >= 10
    # no legit burst looks like card testing: 6 payments under 4 EUR within 30 minutes on one card
    tiny = legit[legit["eur"] < 4].sort_values(["card_id", "t"], kind="stable")
    c, tt = tiny["card_id"].to_numpy(), tiny["t"].to_numpy()
    bursts = (c[5:] == c[:-5]) & (tt[5:] - tt[:-5] <= 30 * 60_000)
    assert bursts.sum() <= 2


def test_same_seed_same_corpus_other_seed_other_corpus() -> None:
    small = FraudSpec(rate=0.03)
    a, b, c = (_corpus(seed=s, count=15_000, fraud=small, cards=300) for s in (4, 4, 5))
    assert a.transactions_table().equals(b.transactions_table())
    assert a.labels_table().equals(b.labels_table())
    assert a.transactions_table()["transaction_id"].to_pylist() != c.transactions_table()["transaction_id"].to_pylist()


def test_label_delay_options() -> None:
    assert parse_label_delay("7d") == (7 * DAY, 7 * DAY)
    assert parse_label_delay("1d..10d") == (DAY, 10 * DAY)
    assert parse_label_delay("36h..2d") == (36 * 3_600_000, 2 * DAY)
    for bad in ("soon", "3d..1d", "-1d"):
        with pytest.raises(UsageError, match="--label-delay"):
            parse_label_delay(bad)
    fixed = _corpus(seed=2, count=8_000, fraud=FraudSpec(rate=0.05, label_delay_ms=(7 * DAY, 7 * DAY)), cards=200)
    labels = fixed.labels_table().to_pandas()
    times = fixed.transactions_table()["event_time"].to_pandas()
    assert ((labels["label_time"] - times)[labels["is_fraud"]] == pd.Timedelta(days=7)).all()


def test_bad_fraud_options_name_the_fix() -> None:
    with pytest.raises(UsageError, match="fraud rate"):
        FraudSpec(rate=0.7)
    with pytest.raises(UsageError, match="unknown scenario") as info:
        parse_scenarios(["skimming=1"])
    assert info.value.hint and "card_testing" in info.value.hint
    with pytest.raises(UsageError, match="not a number"):
        parse_scenarios(["card_testing=lots"])


def test_from_frame_converts_a_minimal_corpus_that_passes_the_contract() -> None:
    now_s = time.time()
    source = pa.table({
        "tx": [10, 11, 12], "customer": [1, 1, 2], "terminal": [7, 8, 7],
        "ts": [now_s - 3600, now_s - 1800, now_s - 60], "amount": [12.5, 3.0, 99.99],
    })  # fmt: skip
    mapping = FrameMap(
        columns={"transaction_id": "tx", "card_id": "customer", "merchant_id": "terminal", "event_time": "ts",
                 "amount": "amount"},
        prefixes={"card_id": "C", "merchant_id": "T"},
    )  # fmt: skip
    table = from_frame(source, mapping)
    assert table.schema == CONTRACT_SCHEMA
    assert table["card_id"].to_pylist() == ["C1", "C1", "C2"] == table["account_id"].to_pylist()
    assert table["amount_minor"].to_pylist() == [1250, 300, 9999]
    assert table["device_id"].null_count == 3 and table["latitude"].null_count == 3
    assert from_frame(source, mapping)["transaction_id"].equals(table["transaction_id"])  # stable ids
    rows = merchant_rows(table["merchant_id"], category="5999", country="DE", currency="EUR")
    merchants = {r[0]: REFERENCE.merchants["M000001"]._replace(category=r[2], country=r[4]) for r in rows}
    sets = ReferenceSets.from_reference(
        type(REFERENCE)(
            merchants=merchants,
            fx_rates=REFERENCE.fx_rates,
            reporting_currency=REFERENCE.reporting_currency,
            countries=REFERENCE.countries,
        )
    )
    verdict = check_contract(table, rules=SETTINGS.pipeline.rules, sets=sets, now_ms=int(now_s * 1000))
    assert verdict.rejected == []
    with pytest.raises(UsageError, match="no column 'nope'"):
        from_frame(source, FrameMap(columns={**mapping.columns, "amount": "nope"}))


def test_generate_writes_transactions_and_labels_files(tmp_path: Path) -> None:
    tx, labels = tmp_path / "tx.parquet", tmp_path / "labels.parquet"
    args = ["generate", "-n", "6000", "--spread-days", "5", "--fraud-rate", "0.02", "--seed", "9", "--json"]
    run_nova(*args, "--out", str(tx), "--labels-out", str(labels), "--label-delay", "7d")
    t, lab = pq.read_table(tx), pq.read_table(labels)
    assert t.schema == CONTRACT_SCHEMA and lab.schema == LABELS_SCHEMA
    assert t.num_rows == lab.num_rows == 6000 and sum(lab["is_fraud"].to_pylist()) == 120
    failed = run_nova("generate", "-n", "100", "--fraud-rate", "0.01", "--out", str(tx), expect=2)
    assert "--spread-days" in failed.stderr


def test_out_without_fraud_writes_the_plain_model_and_bad_combinations_fail_first(tmp_path: Path) -> None:
    plain = tmp_path / "plain.parquet"
    report = generate_labelled(settings=SETTINGS, count=500, seed=1, fraud=None, spread_days=1, out=plain)
    table = pq.read_table(plain)
    assert table.schema == CONTRACT_SCHEMA and table.num_rows == report.count == 500
    labels = tmp_path / "labels.parquet"
    with pytest.raises(UsageError, match="labels need labelled traffic"):
        generate_labelled(settings=SETTINGS, count=100, fraud=None, spread_days=1, out=plain, labels_out=labels)
    with pytest.raises(UsageError, match=r"must be a \.parquet file"):
        generate_labelled(
            settings=SETTINGS, count=100, fraud=FraudSpec(rate=0.01), spread_days=2, out=tmp_path / "x.csv"
        )
    with pytest.raises(UsageError, match="apply to Kafka"):
        generate_labelled(
            settings=SETTINGS, count=100, fraud=None, spread_days=1, out=plain, malformed={"truncated": 1}
        )
    assert not labels.exists()


@pytest.mark.long
def test_an_evaluation_size_corpus_keeps_its_shares_and_the_contract() -> None:
    now = int(time.time() * 1000) // DAY * DAY
    big = build_corpus(
        reference=REFERENCE, rules=SETTINGS.pipeline.rules, seed=3, count=1_500_000, start_ms=now - 22 * DAY,
        spread_s=21 * 86_400, fraud=FraudSpec(rate=0.01),
    )  # fmt: skip
    per = big.summary()
    assert {k: v["transactions"] for k, v in per.items()} == dict.fromkeys(SCENARIOS, 3000)
    assert len(set(big.chunk.columns["card_id"].codes.tolist())) > 20_000  # type: ignore[union-attr]
    tx = big.transactions_table()
    verdict = check_contract(
        tx, rules=SETTINGS.pipeline.rules, sets=ReferenceSets.from_reference(REFERENCE), now_ms=int(time.time() * 1000)
    )
    assert verdict.rejected == []
