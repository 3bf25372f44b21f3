"""Group commit for SQLite: one thread applies queued writes, many per transaction.

The thread takes every write queued so far, runs each inside its own SAVEPOINT (a failing
write is rolled back alone and its error goes to its caller), commits once with the
connection's synchronous setting, and only then resolves the callers' futures. A burst of N
writes costs one fsync instead of N, and nothing is acknowledged before it is on disk.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any

from cloudctl.state.errors import Conflict, StateError

WriteOp = Callable[[sqlite3.Connection], Any]


class GroupCommitWriter:
    def __init__(self, conn: sqlite3.Connection, *, max_batch: int = 1024) -> None:
        """Take over `conn` (opened with check_same_thread=False) and start the writer thread."""
        self._loop = asyncio.get_running_loop()
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self.commits = 0
        self._thread = threading.Thread(
            target=self._run, args=(conn,), name="state-writer", daemon=True
        )
        self._thread.start()

    async def submit(self, op: WriteOp) -> Any:
        future = self._loop.create_future()
        self._queue.put((op, future))
        return await future

    async def stop(self) -> None:
        """Finish the writes already queued, then close the connection."""
        self._queue.put(None)
        await self._loop.run_in_executor(None, self._thread.join)

    def _run(self, conn: sqlite3.Connection) -> None:
        stopping = False
        while not stopping:
            item = self._queue.get()
            if item is None:
                break
            batch = [item]
            while len(batch) < self._max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            outcomes = self._run_batch(conn, batch)
            self._loop.call_soon_threadsafe(_settle, outcomes)
        conn.close()

    def _run_batch(self, conn: sqlite3.Connection, batch: list) -> list:
        outcomes = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op, future in batch:
                conn.execute("SAVEPOINT op")
                try:
                    result = op(conn)
                except Exception as exc:  # the op's own failure stays with its caller
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    if isinstance(exc, sqlite3.IntegrityError):
                        exc = Conflict(f"the change conflicts with the inventory: {exc}")
                    outcomes.append((future, None, exc))
                else:
                    conn.execute("RELEASE op")
                    outcomes.append((future, result, None))
            conn.execute("COMMIT")
            self.commits += 1
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            failure = StateError(f"the state database refused the write: {exc}")
            outcomes = [(future, None, failure) for _, future in batch]
        return outcomes


def _settle(outcomes: list) -> None:
    for future, result, error in outcomes:
        if future.cancelled():
            continue  # the write happened; its caller just stopped waiting
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
