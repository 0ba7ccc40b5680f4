"""Inserting log rows into PostgreSQL on one plain asyncpg connection of their own.

A request waits for its log row's commit. Through SQLAlchemy's pool (a pre-ping round trip at checkout, BEGIN,
the INSERT, COMMIT, statement compilation) one commit cost ~0.86 ms here; a prepared INSERT sent with
`executemany` is one round trip, atomic on its own (the rows of one Sync run in one implicit transaction), and
cost ~0.25 ms, ~0.12 ms with `synchronous_commit` off (bench/NOTES.md). Rows of two tables (a log and its
judgements) take an explicit transaction.

The connection is checked before each use (`is_closed`, which notices a server that went away without a round
trip) and dropped after any failure or cancellation, so that a later insert starts on a fresh one rather than on
a connection left in an unknown state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pipeserve.store.inserts import Batch, statement


class PostgresRows:
    def __init__(self, connect_kwargs: Mapping[str, Any], *, synchronous_commit: bool) -> None:
        # asyncpg.connect's arguments, as SQLAlchemy derives them from the store's URL.
        self._connect_kwargs = dict(connect_kwargs)
        settings = dict(self._connect_kwargs.pop("server_settings", None) or {})
        settings.setdefault("application_name", "pipeserve-logs")
        settings["synchronous_commit"] = "on" if synchronous_commit else "off"
        self._server_settings = settings
        self._conn: Any = None  # asyncpg.Connection, imported lazily: SQLite users never load asyncpg

    async def insert(self, batches: Sequence[Batch]) -> None:
        """Insert every batch in one transaction (all or nothing). Raises asyncpg's errors; a connection that
        is closed or broken raises ConnectionResetError (an OSError: the store is unavailable)."""
        import asyncpg

        work = [(table, rows, replay) for table, rows, replay in batches if rows]
        if not work:
            return
        conn = await self._connection()
        try:
            if len(work) == 1:
                await self._insert(conn, *work[0])
            else:
                async with conn.transaction():
                    for table, rows, replay in work:
                        await self._insert(conn, table, rows, replay)
        except BaseException as error:
            self._drop()
            if isinstance(error, asyncpg.InterfaceError) and not isinstance(error, ValueError):
                # "connection is closed", "another operation is in progress": nothing wrong with the rows
                raise ConnectionResetError(str(error)) from error
            raise

    async def reconnect(self) -> None:
        """Close the connection; the next insert opens a new one."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                await conn.close(timeout=1)
            except Exception:
                conn.terminate()

    async def close(self) -> None:
        await self.reconnect()

    async def _connection(self) -> Any:
        if self._conn is not None and self._conn.is_closed():
            self._drop()
        if self._conn is None:
            import asyncpg

            self._conn = await asyncpg.connect(**self._connect_kwargs, server_settings=self._server_settings)
        return self._conn

    @staticmethod
    async def _insert(conn: Any, table: Any, rows: Sequence[dict[str, Any]], replay: bool) -> None:
        sql, encode = statement(table, replay, "postgresql")
        # asyncpg keeps its own cache of prepared statements per connection, keyed by the text.
        await conn.executemany(sql, [encode(row) for row in rows])

    def _drop(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.terminate()
