"""Worker → supervisor status messages, one pipe per worker, safe against `kill -9` mid-message.

A shared `multiprocessing.Queue` is not: its writers share one lock and one pipe, so a worker
killed while writing (status messages carry histograms, tens of KiB, more than the pipe writes
atomically) leaves half a message that blocks the reader forever, or a lock nobody releases that
blocks every other writer. Measured: the 3-worker kill test's supervisor hung on SIGTERM in CI.
Here each worker owns its pipe: a half-written message ends in EOF when the writer dies (the
supervisor closes its copy of the write end), and only that worker's pipe is dropped.

Statuses are snapshots, so the sender keeps only the latest one and sends it from a thread: the
worker's loop never blocks on a slow reader. `close()` sends the last one before returning.
"""

from __future__ import annotations

import queue
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

Message = tuple[int, dict[str, Any]]  # (worker index, a status as a dict, or {"fatal": error})


class StatusSender:
    """The worker's end: `post` a snapshot (latest wins), `close` flushes the last one."""

    def __init__(self, conn: Connection, index: int) -> None:
        self._conn = conn
        self._index = index
        self._pending: dict[str, Any] | None = None
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="status-sender", daemon=True)
        self._thread.start()

    def post(self, data: dict[str, Any]) -> None:
        with self._cond:
            self._pending = data
            self._cond.notify()

    def close(self, last: dict[str, Any] | None = None) -> None:
        """Send `last` (or whatever is pending) and stop; nothing posted before is lost."""
        with self._cond:
            if last is not None:
                self._pending = last
            self._closed = True
            self._cond.notify()
        self._thread.join()
        self._conn.close()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                data, self._pending = self._pending, None
                closing = self._closed
            if data is not None:
                try:
                    self._conn.send((self._index, data))
                except (BrokenPipeError, OSError):  # the supervisor is gone: nobody to tell
                    return
            if closing:
                with self._cond:
                    if self._pending is None:
                        return


class StatusReceiver:
    """The supervisor's end: a reader thread per worker pipe, so a worker stopped mid-message
    (SIGSTOP) holds up nobody; messages are collected in arrival order."""

    def __init__(self) -> None:
        self._inbox: queue.SimpleQueue[Message] = queue.SimpleQueue()
        self._readers: list[threading.Thread] = []

    def add(self, conn: Connection) -> None:
        reader = threading.Thread(target=self._read, args=(conn,), name="status-reader", daemon=True)
        reader.start()
        self._readers.append(reader)

    def finish(self, timeout: float) -> list[Message]:
        """After the workers have exited: wait (up to `timeout`) for their pipes to reach EOF, then drain."""
        deadline = time.monotonic() + timeout
        for reader in self._readers:
            reader.join(max(0.0, deadline - time.monotonic()))
        self._readers = [r for r in self._readers if r.is_alive()]
        return self.drain()

    def drain(self) -> list[Message]:
        """Every complete message received so far."""
        out: list[Message] = []
        while True:
            try:
                out.append(self._inbox.get_nowait())
            except queue.Empty:
                return out

    def _read(self, conn: Connection) -> None:
        try:
            while True:
                self._inbox.put(conn.recv())
        except (EOFError, OSError):  # the worker exited, or died mid-message: its pipe is done
            pass
        finally:
            conn.close()
