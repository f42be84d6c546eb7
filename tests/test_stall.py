"""Stalled owners are fenced: exactly once into clickhouse-server under SIGSTOP/SIGCONT (issue 12 §1).

The scenario that stored whole batch ranges twice before ownership claims existed: stop the
running `nova ingest` worker process (SIGSTOP) at a random moment, start another `nova ingest`
that takes its partitions once the 3 s session expires, continue the stalled one (SIGCONT) 7 s
later, repeat; then one last `nova ingest --until-caught-up`. Every event must be in the table
once, and no (_partition, _offset) twice, without FINAL.

Only clickhouse-server can run this: the embedded store lets one process open its path, so the
second `nova ingest` could not even start while the stalled one holds it.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pyarrow as pa
import pytest

from tests.pipeline_env import SERVER_URL, PipelineEnv, make_env, worker_pids

pytestmark = [pytest.mark.integration, pytest.mark.server]

STALL_S = 7.0  # longer than the 3 s session of make_env: the group moves the partitions meanwhile


def duplicated_offsets(pe: PipelineEnv) -> int:
    return int(
        pe.scalar(
            "SELECT count() AS n FROM (SELECT _partition, _offset, count() AS c "
            f"FROM {pe.database}.transactions GROUP BY _partition, _offset HAVING c > 1)"
        )
    )


def _summary(log: Path) -> dict[str, int]:
    """The fencing counters of one `nova ingest --json` run, from its log (0s if it printed none)."""
    text = log.read_text(errors="replace")
    start = text.rfind('{\n  "events"')
    if start < 0:
        return {}
    with contextlib.suppress(ValueError):
        report = json.loads(text[start : text.index("\n}", start) + 2])
        return {k: int(report.get(k) or 0) for k in ("fenced_partitions", "fenced_rows", "duplicates_repaired")}
    return {}


def stall_rounds(pe: PipelineEnv, tmp_path: Path, *, events: int, rate: int, rounds: int, seed: int) -> None:
    rng = random.Random(seed)
    gen = pe.spawn(
        "generate", "--count", str(events), "--rate", str(rate), "--seed", str(seed), log=tmp_path / "gen.log"
    )
    logs: list[Path] = []
    log_of: dict[int, Path] = {}

    def start_ingest() -> subprocess.Popen[str]:
        log = tmp_path / f"ingest-{len(logs)}.log"
        logs.append(log)
        proc = pe.spawn("ingest", "--quiet", "--json", log=log)
        log_of[proc.pid] = log
        return proc

    live = [start_ingest()]
    time.sleep(rng.uniform(4.0, 6.0))  # joined, assigned, inserting
    for n in range(rounds):
        pids = [(proc, pid) for proc in live for pid in worker_pids(psutil.Process(proc.pid))]
        assert pids, f"round {n}: no ingest worker running; logs: {[p.read_text()[-500:] for p in logs]}"
        _proc, victim = rng.choice(pids)
        os.kill(victim, signal.SIGSTOP)
        live.append(start_ingest())
        time.sleep(STALL_S)
        os.kill(victim, signal.SIGCONT)
        time.sleep(rng.uniform(1.0, 4.0))  # the resumed one finds its claims gone, rejoins
        if len(live) > 2:  # keep the machine's load bounded: the oldest leaves gracefully
            oldest = live.pop(0)
            oldest.send_signal(signal.SIGTERM)
            assert oldest.wait(30) == 0, log_of[oldest.pid].read_text()[-3000:]
    assert gen.wait(300) == 0, (tmp_path / "gen.log").read_text()[-2000:]
    for proc in live:
        proc.send_signal(signal.SIGTERM)
    for proc in live:
        assert proc.wait(30) == 0, log_of[proc.pid].read_text()[-3000:]
    pe.nova("ingest", "--until-caught-up", "--quiet")
    totals: dict[str, int] = {}
    for log in logs:
        for k, v in _summary(log).items():
            totals[k] = totals.get(k, 0) + v
    print(f"seed {seed}: {rounds} stalls, fencing {totals}")


def _check(pe: PipelineEnv, produced: int) -> None:
    n, unique = pe.counts()
    dups = duplicated_offsets(pe)
    assert (n, unique, dups) == (produced, produced, 0), pe.nova("status", "--json").stdout


def _seed() -> int:
    return int(os.environ.get("STALL_TEST_SEED") or random.SystemRandom().randrange(1 << 30))


@pytest.mark.slow
def test_stalled_owner_is_fenced(tmp_path: Path) -> None:
    pe = make_env(tmp_path, "server")
    try:
        stall_rounds(pe, tmp_path, events=60_000, rate=2_000, rounds=3, seed=_seed())
        _check(pe, 60_000)
    finally:
        pe.cleanup()


@pytest.mark.slow
@pytest.mark.long
def test_stalled_owner_is_fenced_six_rounds_at_15k_per_s(tmp_path: Path) -> None:
    pe = make_env(tmp_path, "server")
    try:
        stall_rounds(pe, tmp_path, events=150_000, rate=15_000, rounds=6, seed=_seed())
        _check(pe, 150_000)
    finally:
        pe.cleanup()


# The fencing core, step by step and without timing: two workers, one partition, one server.


@pytest.fixture
def fence_env(tmp_path: Path):  # type: ignore[no-untyped-def]
    from pipelines.clickhouse import open_store

    pe = make_env(tmp_path, "server")
    store = open_store(url=SERVER_URL, database=pe.database)
    yield pe, store
    store.close()
    pe.cleanup()


def _worker(store, pe: PipelineEnv, name: str):  # type: ignore[no-untyped-def]
    from pipelines.ingest.fencing import Fence
    from pipelines.ingest.state import StateStore

    state = StateStore(store, database=pe.database, group_id="g", topic=pe.topic, table="transactions", worker=name)
    fence = Fence(store, state, database=pe.database, table="transactions", worker=name)
    fence.prepare()
    return state, fence


def _rows(pe: PipelineEnv, offsets: range, epoch: int) -> pa.Table:
    n = len(offsets)
    return pa.table(
        {
            "transaction_id": [f"tx-{o}" for o in offsets],
            "_topic": [pe.topic] * n,
            "_partition": pa.array([0] * n, pa.uint32()),
            "_offset": pa.array(list(offsets), pa.uint64()),
            "_epoch": pa.array([epoch] * n, pa.uint64()),
        }
    )


def test_a_successor_claim_stops_the_stalled_owners_insert_in_the_server(fence_env) -> None:  # type: ignore[no-untyped-def]
    from pipelines.ingest.state import PENDING, Range

    pe, store = fence_env
    a_state, a_fence = _worker(store, pe, "host-a-1-0")
    a = a_state.claim([0])
    a_state.write({0: Range(0, 9, 10)}, PENDING, a.epochs)
    # A stalls here, between recording `pending` and inserting. B takes the partition over.
    b_state, b_fence = _worker(store, pe, "host-b-2-0")
    b = b_state.claim([0])
    assert b.epochs[0] > a.epochs[0] and not b.lost
    assert b.inherited[0].state == PENDING and (b.inherited[0].begin_offset, b.inherited[0].end_offset) == (0, 9)
    assert a_fence.owned(a.epochs) == set() and b_fence.owned(b.epochs) == {0}
    assert b_fence.wait_for_inflight()
    assert b_fence.copies(pe.topic, 0, 0, 9) == {}
    b_fence.insert(_rows(pe, range(10), b.epochs[0]), b.epochs)
    # A wakes up and sends its insert as if nothing happened: the server drops its rows.
    a_fence.insert(_rows(pe, range(10), a.epochs[0]), a.epochs)
    assert pe.counts() == (10, 10) and duplicated_offsets(pe) == 0
    # Ownership is read from epochs, not from who wrote last: A's late `committed` changes nothing.
    a_state.write({0: Range(0, 9, 10)}, "committed", a.epochs)
    assert b_state.read([0])[0].epoch == b.epochs[0]
    assert b_fence.owned(b.epochs) == {0}
    a_fence.close()
    b_fence.close()


def test_copies_under_two_epochs_are_repaired_to_the_highest(fence_env) -> None:  # type: ignore[no-untyped-def]
    pe, store = fence_env
    _state, fence = _worker(store, pe, "host-c-3-0")
    table = f"{pe.database}.transactions"
    store.insert_arrow(table, _rows(pe, range(0, 20), 5 << 20))  # a stalled owner's rows (epoch 5)
    store.insert_arrow(table, _rows(pe, range(10, 30), 6 << 20))  # its successor's (epoch 6), overlapping
    store.insert_arrow(table, _rows(pe, range(40, 41), 5 << 20))  # a single copy: kept whatever its epoch
    copies = fence.copies(pe.topic, 0, 0, 50)
    assert fence.repair(pe.topic, 0, copies) == 10
    after = fence.copies(pe.topic, 0, 0, 50)
    assert sorted(after) == [*range(30), 40]
    assert all(len(es) == 1 for es in after.values())
    assert {after[o][0] for o in range(10, 30)} == {6 << 20}
    fence.close()


def test_stage_tables_of_dead_processes_on_this_host_are_dropped(fence_env) -> None:  # type: ignore[no-untyped-def]
    from pipelines.ingest.fencing import STAGE_PREFIX

    pe, store = fence_env
    _state, fence = _worker(store, pe, "host-d-4-0")
    host = fence.stage_name[len(STAGE_PREFIX) :].split("_", 2)[2]
    never_a_pid = 2**22 + 7  # above Linux's largest pid_max
    stale = f"{STAGE_PREFIX}{never_a_pid}_1_{host}"
    other_host = f"{STAGE_PREFIX}{never_a_pid}_1_elsewhere"
    for name in (stale, other_host):
        store.execute(f"CREATE TABLE `{pe.database}`.`{name}` AS `{pe.database}`.transactions ENGINE = Memory")
    fence.prepare()
    names = {r[0] for r in store.query_rows(f"SELECT name FROM system.tables WHERE database = '{pe.database}'")}
    assert stale not in names, "a dead process of this host: dropped"
    assert other_host in names, "another host's process may be alive: kept"
    assert fence.stage_name in names
    fence.close()


def test_a_worker_fenced_on_a_partition_kafka_still_gives_it_rejoins_and_goes_on(fence_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A claim from outside the group's current assignment (a stalled claimer that won a tie) must
    not leave the partition to nobody: the fenced worker rejoins, claims anew and ingests on."""
    from pipelines.ingest.state import StateStore
    from tests.pipeline_env import wait_until

    pe, store = fence_env
    pe.nova("generate", "--count", "10000", "--seed", "41")
    ingest = pe.spawn("ingest", "--quiet", "--json", log=tmp_path / "ingest.log")
    wait_until(lambda: pe.counts()[0] >= 10000, timeout=90, what="the first events ingested")
    group = pe.env["NOVA_PIPELINE__GROUP_ID"]
    stale = StateStore(store, database=pe.database, group_id=group, topic=pe.topic, table="transactions", worker="z")
    partitions = sorted(stale.read())
    stale.claim(partitions)  # every partition the running worker holds, claimed over its head
    pe.nova("generate", "--count", "10000", "--seed", "43")
    wait_until(lambda: pe.counts()[0] >= 20000, timeout=90, what="the running worker to rejoin and ingest on")
    ingest.send_signal(signal.SIGTERM)
    assert ingest.wait(30) == 0
    report = _summary(tmp_path / "ingest.log")
    assert report["fenced_partitions"] >= len(partitions), report
    _check(pe, 20000)
