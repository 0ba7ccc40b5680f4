"""Inserting rows into SQLite on one plain `sqlite3` connection: on the event loop when the database is free,
else from a thread of its own.

The request log is written on every completion, and a request waits for its row's commit. Through SQLAlchemy
and aiosqlite, one commit cost ~0.9 ms of event-loop CPU (statement compilation, a greenlet, three hops to
aiosqlite's thread); through a thread of our own ~0.15 ms, most of it the hand-off; done in place, ~0.05 ms
(a micro-benchmark of `LogWriter.write`, bench/NOTES.md). Doing it in place must never stall the
loop, so that attempt doesn't wait: the connection's busy timeout is 0, and a database locked by another
writer sends the insert to the thread, which waits as long as `busy_timeout` allows. Checkpoints (copying the
WAL back into the database, with an fsync) would stall the loop too: the connection doesn't make them; the
thread does, every `CHECKPOINT_EVERY` commits.
Only inserts go this way; everything else uses the async engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pipeserve.store.inserts import Batch, statement

CHECKPOINT_EVERY = 200  # commits made in place between two checkpoints (SQLite's own default: 1000 pages)
_BUSY = 5  # SQLITE_BUSY: another connection holds the write lock

# Called with each new connection, as SQLAlchemy's "connect" event is: (dbapi connection, record).
ConnectHook = Callable[[Any, Any], None]


class SqliteRows:
    def __init__(self, path: str, hooks: Sequence[ConnectHook]) -> None:
        self.path = path
        self.hooks = hooks  # read at each (re)connection, so hooks added later apply to the next one
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="pipeserve-sqlite-rows")
        # Used in place or in the thread, never both at once: whoever uses it holds `_using`. In place never
        # waits for it (a commit left running in the thread by a timed-out caller may hold it).
        self._conn: sqlite3.Connection | None = None
        self._using = threading.Lock()
        self._busy_timeout = 0  # ms, as the hooks set it; the connection itself runs with 0 in place
        self._since_checkpoint = 0
        self._checkpointing: asyncio.Future[None] | None = None

    def insert_now(self, batches: Sequence[Batch]) -> bool:
        """Insert every batch in one transaction (all or nothing), here and now, unless another connection
        holds the write lock: then nothing is done and the answer is False (`insert` waits for the lock in the
        thread). Raises sqlite3's errors and, for a value that can't be stored, TypeError, ValueError or
        OverflowError."""
        if not self._using.acquire(blocking=False):
            return False
        try:
            self._insert(batches)
        except sqlite3.OperationalError as error:
            if error.sqlite_errorcode & 0xFF == _BUSY and self._busy_timeout > 0:
                return False
            raise
        finally:
            self._using.release()
        self._committed()
        return True

    async def insert(self, batches: Sequence[Batch]) -> None:
        """`insert_now`, or in the thread once the write lock is free (up to the busy timeout)."""
        if not self.insert_now(batches):
            await asyncio.get_running_loop().run_in_executor(self._executor, self._insert_waiting, batches)
            self._committed()

    def _committed(self) -> None:
        self._since_checkpoint += 1
        if self._since_checkpoint >= CHECKPOINT_EVERY and (self._checkpointing is None or self._checkpointing.done()):
            self._since_checkpoint = 0
            self._checkpointing = asyncio.get_running_loop().run_in_executor(self._executor, self._checkpoint_wal)

    async def reconnect(self) -> None:
        """Close the connection; the next insert opens a new one (with the hooks as they are then)."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self._disconnect_now)

    async def close(self) -> None:
        await self.reconnect()
        self._executor.shutdown(wait=True)

    def _insert_waiting(self, batches: Sequence[Batch]) -> None:
        """In the thread: the insert, waiting up to the busy timeout for the write lock."""
        with self._using:
            conn = self._connection()
            conn.execute(f"PRAGMA busy_timeout={self._busy_timeout}")
            try:
                self._insert(batches)
            finally:
                if self._conn is conn:
                    conn.execute("PRAGMA busy_timeout=0")

    def _checkpoint_wal(self) -> None:
        """In the thread: copy what the WAL holds back into the database. On the inserting connection, with
        inserts held off meanwhile (they wait in the thread): a checkpoint that runs while commits go on never
        catches up with them, and the WAL only restarts from its beginning once one has."""
        # A checkpoint that fails is tried again later; the WAL only grows meanwhile.
        with self._using, contextlib.suppress(sqlite3.Error):
            self._connection().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def _insert(self, batches: Sequence[Batch]) -> None:
        conn = self._connection()
        # IMMEDIATE: take the write lock now (waiting up to busy_timeout), not half-way through the inserts.
        conn.execute("BEGIN IMMEDIATE")
        try:
            for table, rows, replay in batches:
                if rows:
                    sql, encode = statement(table, replay, "sqlite")
                    conn.executemany(sql, [encode(row) for row in rows])
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:  # a connection too broken to roll back: start again with a new one
                    self._disconnect()
            raise

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            # isolation_level=None: transactions are the explicit BEGIN and COMMIT above.
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            try:
                for hook in self.hooks:
                    hook(conn, None)
                self._busy_timeout = conn.execute("PRAGMA busy_timeout").fetchall()[0][0]
                conn.execute("PRAGMA busy_timeout=0")
                conn.execute("PRAGMA wal_autocheckpoint=0")
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _disconnect(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()

    def _disconnect_now(self) -> None:
        with self._using:
            self._disconnect()
