"""Pure units of the ingest package: error round trips, latency histograms, epochs, repair spans."""

from __future__ import annotations

import json
import time
from dataclasses import asdict

import numpy as np
import pytest
from hdrh.histogram import HdrHistogram

from pipelines import errors
from pipelines.errors import NovaError, StoreError, UsageError
from pipelines.ingest.fencing import _runs
from pipelines.ingest.latency import (
    HIGHEST_MS,
    LOWEST_MS,
    SIGNIFICANT_DIGITS,
    LatencyHistogram,
    StageLatency,
    stage_means,
)
from pipelines.ingest.models import WorkerStatus
from pipelines.ingest.run import build_report
from pipelines.ingest.state import TAG_BITS, VERSION_FLOOR, claim_tag, next_epoch


@pytest.mark.parametrize("kind", [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, NovaError)])
def test_every_error_kind_survives_the_process_boundary(kind: type[NovaError]) -> None:
    exc = kind.__new__(kind)
    NovaError.__init__(exc, "topic 'tx' is missing", hint="run `nova provision --yes`")
    back = NovaError.from_dict(json.loads(json.dumps(exc.to_dict())))
    assert type(back) is kind
    assert (back.message, back.hint, back.exit_code, str(back)) == (exc.message, exc.hint, exc.exit_code, str(exc))


def test_error_extra_fields_and_exit_code_round_trip() -> None:
    store = NovaError.from_dict(StoreError("table gone", code=60, retryable=True, hint="provision").to_dict())
    assert isinstance(store, StoreError) and (store.code, store.retryable, store.hint) == (60, True, "provision")
    usage = NovaError.from_dict(UsageError("--workers 0").to_dict())
    assert isinstance(usage, UsageError) and usage.exit_code == 2
    custom = NovaError("x")
    custom.exit_code = 4
    assert NovaError.from_dict(custom.to_dict()).exit_code == 4


def test_an_unknown_error_kind_comes_back_as_nova_error_with_its_fields() -> None:
    back = NovaError.from_dict({"kind": "FromANewerVersion", "message": "m", "hint": "h", "exit_code": 2})
    assert type(back) is NovaError and (back.message, back.hint, back.exit_code) == ("m", "h", 2)


def test_vectorised_record_matches_hdrhistogram_record_value() -> None:
    rng = np.random.default_rng(3)
    values = np.concatenate(
        [rng.integers(-50, 10_000, 20_000), rng.integers(0, 10**11, 2_000), [0, 1, 2047, 2048, HIGHEST_MS + 9]]
    )
    ours = LatencyHistogram()
    ours.record(values)
    reference = HdrHistogram(LOWEST_MS, HIGHEST_MS, SIGNIFICANT_DIGITS)
    for v in values:
        reference.record_value(int(min(max(v, 0), HIGHEST_MS)))
    for q in (0, 50, 90, 99, 99.9, 100):
        assert ours.percentile_ms(q) == reference.get_value_at_percentile(q)
    assert ours.count == reference.get_total_count() == len(values)


def test_histograms_merge_across_workers_into_one_distribution() -> None:
    fast, slow = LatencyHistogram(), LatencyHistogram()
    fast.record(np.full(900, 100))
    slow.record(np.full(100, 5_000))
    merged = LatencyHistogram.merged([fast.encode(), "", slow.encode()])
    assert merged.count == 1000
    assert merged.percentile_ms(50) == pytest.approx(100, rel=1e-3)
    assert merged.percentile_ms(95) == pytest.approx(5_000, rel=1e-3)
    assert LatencyHistogram.decode("").count == 0 and LatencyHistogram().percentile_ms(50) is None


def test_the_report_covers_every_event_of_every_worker() -> None:
    statuses = []
    for ms, n in ((50, 300_000), (400, 300_000)):  # more than any sliding window kept
        h = LatencyHistogram()
        h.record(np.full(n, ms))
        statuses.append(
            WorkerStatus(worker=f"w{ms}", events=n, latency_event_hist=h.encode(), latency_pipeline_hist=h.encode())
        )
    report = build_report(statuses, started=time.time() - 10, workers=2)
    assert report.latency_event is not None and report.latency_event.events == 600_000
    assert report.latency_p50_ms == pytest.approx(50, rel=1e-3)
    assert report.latency_p99_ms == pytest.approx(400, rel=1e-3)
    assert report.latency_pipeline is not None and "Kafka" in report.latency_pipeline.measures
    assert json.loads(json.dumps(asdict(report)))["latency_event"]["events"] == 600_000


def test_worker_status_round_trips_through_json() -> None:
    status = WorkerStatus(worker="h-1-0", lag={3: 7, 11: 0}, assigned=[3, 11], fenced_partitions=2)
    back = WorkerStatus.from_dict(json.loads(json.dumps(asdict(status))))
    assert back == status


def test_epochs_order_by_generation_then_worker_never_by_clock() -> None:
    a, b = claim_tag("host-a-10-0"), claim_tag("host-b-10-0")
    assert a != b and 0 <= a < 1 << TAG_BITS
    first = next_epoch(0, a)
    # Two claims from the same reading (a stalled owner and its successor): distinct, totally ordered.
    tie_a, tie_b = next_epoch(first, a), next_epoch(first, b)
    assert tie_a != tie_b and min(tie_a, tie_b) > first
    # Whoever reads either of them claims above both.
    assert next_epoch(max(tie_a, tie_b), a) > max(tie_a, tie_b)
    assert next_epoch(min(tie_a, tie_b), a) > max(tie_a, tie_b)
    # Rows written before claims (epoch 0, wall-clock version) lose to any claim in merges.
    assert time.time_ns() * 2 < VERSION_FLOOR  # wall-clock versions until 2116
    assert VERSION_FLOOR + next_epoch(2**50, b) < 2**64


def test_repair_spans_never_cover_a_single_copy() -> None:
    # 1..3 duplicated (keep epoch 7), 4 single, 5..6 duplicated, 8 duplicated under another epoch.
    keep = {1: 7, 2: 7, 3: 7, 5: 7, 6: 7, 8: 9}
    offsets = [1, 2, 3, 4, 5, 6, 8]  # 7 was dead-lettered: no copy, may be spanned
    assert _runs(offsets, keep) == [(1, 3, 7), (5, 6, 7), (8, 8, 9)]
    assert _runs([1, 2, 4], {1: 7, 2: 7, 4: 7}) == [(1, 4, 7)]
    assert _runs([1, 2], {}) == []


def test_stage_means_add_up_per_window_and_cut_by_time() -> None:
    stages = StageLatency()
    stages.record("insert", 200, 1000, at=1_000.0)  # window 1000
    stages.record("insert", 400, 3000, at=1_007.0)  # window 1005
    stages.record_many("fetch", np.array([10, 30]), weight=8, at=1_001.0)
    windows = [stages.encoded_windows()]
    assert stage_means(json.loads(json.dumps(windows))) == pytest.approx({"fetch": 20.0, "insert": 350.0})
    assert stage_means(windows, start=1_005, end=1_010) == pytest.approx({"insert": 400.0})
    assert LatencyHistogram.decode(stages.encode()["insert"]).count == 4000
    status = WorkerStatus(worker="w", stage_hists=stages.encode(), stage_windows=stages.encoded_windows())
    report = build_report([status], started=time.time() - 1, workers=1)
    assert report.stages["insert"].events == 4000 and report.stage_windows == [status.stage_windows]
