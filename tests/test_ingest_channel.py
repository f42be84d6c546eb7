"""The worker → supervisor status pipe survives a worker killed in the middle of a message."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from multiprocessing.connection import Connection

from pipelines.ingest.channel import StatusReceiver, StatusSender

BIG = "x" * 300_000  # far past what one pipe write carries atomically (and the pipe's 64 KiB buffer)


def _flood(conn: Connection) -> None:
    """Send big messages as fast as possible until killed."""
    n = 0
    while True:
        conn.send((0, {"n": n, "payload": BIG}))
        n += 1


def _report_then_close(conn: Connection) -> None:
    sender = StatusSender(conn, 3)
    for n in range(50):
        sender.post({"n": n})
    sender.close({"n": "last"})


def _start(target: object) -> tuple[mp.process.BaseProcess, StatusReceiver]:
    ctx = mp.get_context("spawn")
    reader, writer = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=target, args=(writer,))
    proc.start()
    writer.close()
    inbox = StatusReceiver()
    inbox.add(reader)
    return proc, inbox


def test_a_worker_killed_mid_message_ends_its_pipe_instead_of_hanging_the_reader() -> None:
    for _ in range(5):
        proc, inbox = _start(_flood)
        time.sleep(0.5)
        # the child is almost surely inside a send; the reader is almost surely inside a recv
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(5)
        started = time.monotonic()
        messages = inbox.finish(5.0)
        assert time.monotonic() - started < 2.0, "the reader must see EOF, not wait for the rest"
        assert not inbox._readers, "the reader thread of a dead worker ends"
        assert messages, "complete messages before the kill arrive"
        assert [m[1]["n"] for m in messages] == list(range(len(messages)))
        assert all(m[1]["payload"] == BIG for m in messages), "no torn message is delivered"


def test_the_last_status_is_delivered_and_snapshots_coalesce() -> None:
    proc, inbox = _start(_report_then_close)
    proc.join(30)
    assert proc.exitcode == 0
    messages = inbox.finish(5.0)
    assert messages[-1] == (3, {"n": "last"})
    assert len(messages) <= 51
