"""`nova fraud evaluate`: bad inputs refused (exit 2) before anything is created, and the HTML report in Chromium."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from pipelines.config import load_settings
from pipelines.errors import UsageError
from pipelines.fraudeval.metrics import compute_figures
from pipelines.fraudeval.report import render_report
from pipelines.fraudeval.run import EvaluationResult, PartResult, new_names
from tests.browser import screenshot
from tests.conftest import REPO, run_nova
from tests.test_fraud_eval_metrics import STREAM, _outcomes

MS = pa.timestamp("ms", tz="UTC")


def _transactions(n: int = 3, *, merchant: str = "M000001", drop: str | None = None) -> pa.Table:
    base = 1_764_547_200_000  # 2025-12-01
    columns = {
        "transaction_id": [f"00000000-0000-4000-8000-{i:012d}" for i in range(n)],
        "event_time": pa.array([base + i * 1000 for i in range(n)], pa.int64()).cast(MS),
        "card_id": ["card-1"] * n,
        "account_id": ["acct-1"] * n,
        "merchant_id": [merchant] * n,
        "merchant_category": ["5411"] * n,
        "amount_minor": pa.array([1234] * n, pa.int64()),
        "currency": ["EUR"] * n,
        "country": ["NL"] * n,
        "channel": ["POS"] * n,
        "status": ["AUTHORIZED"] * n,
    }
    if drop:
        del columns[drop]
    return pa.table(columns)


def _labels(n: int = 3, *, drop: str | None = None) -> pa.Table:
    columns = {
        "transaction_id": [f"00000000-0000-4000-8000-{i:012d}" for i in range(n)],
        "is_fraud": [i == 0 for i in range(n)],
        "scenario": ["card_testing" if i == 0 else "" for i in range(n)],
        "label_time": pa.array([1_764_547_200_000 + 5000] * n, pa.int64()).cast(MS),
    }
    if drop:
        del columns[drop]
    return pa.table(columns)


def _future(tx: pa.Table) -> pa.Table:
    """The same rows, a day ahead of now: the contract's event_time_future dead-letters them."""
    import time

    ahead = int(time.time() * 1000) + 86_400_000 - tx["event_time"].cast(pa.int64())[0].as_py()
    return tx.set_column(1, "event_time", pc.add(tx["event_time"].cast(pa.int64()), ahead).cast(MS))


def _plain_ids(table: pa.Table) -> pa.Table:
    """Transaction ids as a simulator writes them (0, 1, 2…), not UUIDs."""
    return table.set_column(0, "transaction_id", pa.array([str(i) for i in range(table.num_rows)]))


BAD_INPUTS = [
    (_future(_transactions()), _labels(), None, ["3 of the corpus's 3", "event_time_future 3", "shift its event"]),
    (_plain_ids(_transactions()), _plain_ids(_labels()), None, ["transaction_id_uuid 3", "as a UUID"]),
    (_transactions(drop="card_id"), _labels(), None, ["lacks the contract column(s) card_id", "it needs"]),
    (_transactions(), _labels(drop="transaction_id"), None, ["lacks the column(s) transaction_id", "it needs"]),
    (_transactions(merchant="T999"), _labels(), None, ["'T999'", "not in the merchant dimension", "--merchants"]),
    (_transactions(), _labels(drop="label_time"), None, ["has no label_time", "--label-delay"]),
    (_transactions(), _labels(), -1, ["--train-days -1: must be positive"]),
]


@pytest.mark.parametrize(("tx", "labels", "train_days", "fragments"), BAD_INPUTS)
def test_bad_inputs_are_refused_before_anything_is_created(
    tmp_path: Path, tx: pa.Table, labels: pa.Table, train_days: float | None, fragments: list[str]
) -> None:
    from pipelines.fraudeval.corpus import load_corpus
    from pipelines.fraudeval.run import evaluate

    pq.write_table(tx, tmp_path / "tx.parquet")
    pq.write_table(labels, tmp_path / "labels.parquet")
    # an unreachable broker and an empty state dir: a refusal must come before either is touched
    environ = {"NOVA_STACK__STATE_DIR": str(tmp_path / "state"), "NOVA_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    settings = load_settings(REPO / "configs" / "nova.yaml", environ=environ)
    with pytest.raises(UsageError) as caught:
        corpus = load_corpus(settings, tmp_path / "tx.parquet", tmp_path / "labels.parquet")
        evaluate(
            settings=settings,
            corpus=corpus,
            transactions_file="tx",
            labels_file="labels",
            train_days=train_days,
        )
    text = f"{caught.value} {caught.value.hint}"
    for fragment in fragments:
        assert fragment in text, text
    assert caught.value.exit_code == 2
    assert not (tmp_path / "state" / "fraudeval").exists()


def test_a_few_rows_the_contract_refuses_are_counted_not_fatal(tmp_path: Path) -> None:
    """A simulator's 0.00 amount: dead-lettered and counted as unscored, the run goes on; many refuse it."""
    from pipelines.fraudeval.corpus import load_corpus
    from pipelines.fraudeval.run import check_inputs

    settings = load_settings(REPO / "configs" / "nova.yaml", environ={})
    amounts = [0] + [1234] * 199
    pq.write_table(
        _transactions(200).set_column(6, "amount_minor", pa.array(amounts, pa.int64())), tmp_path / "a.parquet"
    )
    pq.write_table(_labels(200), tmp_path / "labels.parquet")
    corpus = load_corpus(settings, tmp_path / "a.parquet", tmp_path / "labels.parquet")
    assert check_inputs(settings, corpus, merchants=None) == {"amount_range": 1}
    amounts = [0] * 3 + [1234] * 197  # 1.5 %: more than MAX_DEAD_LETTER_SHARE
    pq.write_table(
        _transactions(200).set_column(6, "amount_minor", pa.array(amounts, pa.int64())), tmp_path / "b.parquet"
    )
    corpus = load_corpus(settings, tmp_path / "b.parquet", tmp_path / "labels.parquet")
    with pytest.raises(UsageError, match=r"3 of the corpus's 200 .*amount_range 3 \(e\.g\. row 1 "):
        check_inputs(settings, corpus, merchants=None)


@pytest.mark.parametrize(
    ("column", "odd", "rule", "refusal"),
    [
        ("merchant_id", "T999", "known_merchant", "not in the merchant dimension"),
        ("currency", "XTS", "known_currency", "without an FX rate"),
        ("country", "ZZ", "country_code", "not ISO 3166-1 alpha-2"),
    ],
)
def test_a_reference_value_on_a_few_rows_is_counted_on_many_refused(
    tmp_path: Path, column: str, odd: str, rule: str, refusal: str
) -> None:
    """One row of 200 with a merchant, currency or country the reference lacks: counted like any
    dead letter; on 3 of 200 (past MAX_DEAD_LETTER_SHARE) the run is refused with that check's own fix."""
    from pipelines.fraudeval.corpus import load_corpus
    from pipelines.fraudeval.run import check_inputs

    settings = load_settings(REPO / "configs" / "nova.yaml", environ={})
    pq.write_table(_labels(200), tmp_path / "labels.parquet")
    tx = _transactions(200)
    for name, odd_rows in (("one.parquet", 1), ("three.parquet", 3)):
        values = [odd] * odd_rows + tx[column].to_pylist()[odd_rows:]
        pq.write_table(tx.set_column(tx.schema.get_field_index(column), column, pa.array(values)), tmp_path / name)
        corpus = load_corpus(settings, tmp_path / name, tmp_path / "labels.parquet")
        if odd_rows == 1:
            assert check_inputs(settings, corpus, merchants=None) == {rule: 1}
        else:
            with pytest.raises(UsageError, match=r"3 of the corpus's 200|in 3 of its 200") as caught:
                check_inputs(settings, corpus, merchants=None)
            assert refusal in str(caught.value) and odd in str(caught.value)


def test_the_command_exits_2_naming_the_problem_and_the_fix(tmp_path: Path) -> None:
    pq.write_table(_transactions(merchant="T999"), tmp_path / "tx.parquet")
    pq.write_table(_labels(), tmp_path / "labels.parquet")
    state = tmp_path / "state"
    env = {"NOVA_STACK__STATE_DIR": str(state), "NOVA_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    result = run_nova(
        "fraud", "evaluate", "--transactions", str(tmp_path / "tx.parquet"),
        "--labels", str(tmp_path / "labels.parquet"), expect=2, env=env,
    )  # fmt: skip
    assert "'T999'" in result.stderr and "--merchants FILE.csv" in result.stderr and "Traceback" not in result.stderr
    assert not (state / "fraudeval").exists()


def test_a_csv_corpus_with_iso_times_reads_like_parquet(tmp_path: Path) -> None:
    from pipelines.fraudeval.corpus import load_corpus

    settings = load_settings(REPO / "configs" / "nova.yaml", environ={})
    tx = _transactions(4)
    pq.write_table(tx, tmp_path / "tx.parquet")
    pq.write_table(_labels(4), tmp_path / "labels.parquet")
    iso = [f"2025-12-01T00:00:0{i}Z" for i in range(4)]
    pacsv.write_csv(tx.set_column(1, "event_time", pa.array(iso)), tmp_path / "tx.csv")
    a = load_corpus(settings, tmp_path / "tx.parquet", tmp_path / "labels.parquet")
    b = load_corpus(settings, tmp_path / "tx.csv", tmp_path / "labels.parquet")
    assert a.transactions.equals(b.transactions)
    assert a.is_fraud.tolist() == [True, False, False, False] and a.scenario[0] == "card_testing"
    assert a.label_time_ms.tolist() == [1_764_547_205_000] * 4


def test_the_report_is_self_contained_and_renders_in_chromium(tmp_path: Path) -> None:
    settings = load_settings(REPO / "configs" / "nova.yaml", environ={})
    figures = compute_figures(_outcomes(STREAM), k=2)
    part = PartResult(
        name="all", rows=(0, len(STREAM)), produced=len(STREAM), labels_fed=5, produce_s=0.1, drain_s=1.0,
        barriers=0, barrier_s=0.0, ingest={}, model=None, figures=figures,
    )  # fmt: skip
    result = EvaluationResult(
        run_id="cafe0123", transactions_file="tx.parquet", labels_file="labels <b>.parquet", corpus_rows=len(STREAM),
        corpus_frauds=5, unmatched_labels=0, label_delay_ms=None, rate=5000.0, names=new_names(settings, "cafe0123"),
        parts=[part], figures=figures, judged="all",
    )  # fmt: skip
    html = render_report(result)
    assert "cafe0123" in html and "card_testing" in html and "amount_spike" in html
    assert "labels &lt;b&gt;.parquet" in html  # user text is escaped
    assert "60.0%" in html and "75.0%" in html  # recall 3/5, precision 3/4
    assert "<script" not in html and "https://" not in html
    assert "http://" not in html.replace("http://www.w3.org", "")
    assert html.count("<svg") == 4  # recall, recall ≤ 10 s and precision per scenario; first-alert delays
    report = tmp_path / "report.html"
    report.write_text(html)
    shot = screenshot(report, tmp_path / "report.png", height=2000)
    assert shot.exists() and shot.stat().st_size > 20_000  # a page with tables and charts, not a blank one


def test_a_retrained_run_names_each_part_by_the_model_of_its_time() -> None:
    settings = load_settings(REPO / "configs" / "nova.yaml", environ={})
    figures = compute_figures(_outcomes(STREAM), k=2)

    def part(name: str, model: str | None, from_ms: int | None) -> PartResult:
        return PartResult(
            name=name, rows=(0, len(STREAM)), produced=len(STREAM), labels_fed=5, produce_s=0.1, drain_s=1.0,
            barriers=0, barrier_s=0.0, ingest={}, model=model, figures=figures, from_ms=from_ms,
        )  # fmt: skip

    day = 1_764_547_200_000  # 2025-12-01
    result = EvaluationResult(
        run_id="cafe0124", transactions_file="tx.parquet", labels_file="labels.parquet", corpus_rows=len(STREAM),
        corpus_frauds=5, unmatched_labels=0, label_delay_ms=None, rate=5000.0, names=new_names(settings, "cafe0124"),
        parts=[part("all", "m-2.bin", None), part("part 1", None, None), part("part 2", "m-1.bin", day),
               part("part 3", "m-2.bin", day + 86_400_000)],
        figures=figures, judged="all", retrain_every_ms=7 * 86_400_000,
        models=[{"cutoff_ms": day}, {"cutoff_ms": day + 86_400_000}],
    )  # fmt: skip
    html = render_report(result)
    assert "all (retrained)" in html and "part 1 (as configured)" in html
    assert "part 2 (model from 2025-12-01)" in html and "part 3 (model from 2025-12-02)" in html
    assert "2 model(s), retrained at least every" in html and "7.0 d;" in html
    assert result.to_dict()["run"]["models"] == result.models
