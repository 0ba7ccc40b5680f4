"""Group commit for log rows: many requests' logs share one transaction, and each waits for its commit.

No write waits for a timer. While one transaction commits, the rows that arrive queue up, and the next
transaction takes all of them: under load a commit carries many rows, when idle it carries one and starts at
once. A caller that awaits `write` knows its row is durable (it survives `kill -9` of the server).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sqlalchemy import insert

from pipeserve.store.db import Database
from pipeserve.store.tables import log_criteria, logs

log = logging.getLogger("pipeserve.store")

MAX_BATCH = 512  # rows per transaction; bounds a commit's time and memory under a burst


class LogWriter:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._pending: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self.commits = 0  # transactions committed, for metrics and the benchmark
        self.rows = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="pipeserve-log-writer")

    async def write(self, row: dict[str, Any]) -> None:
        """Queue `row` and return once it is committed; raises if the database refused it.

        `row["judgements"]`, if present, is a list of `log_criteria` rows (without `log_id`), stored in the
        same transaction as the log.
        """
        if self._task is None or self._task.done():
            raise RuntimeError("the log writer is not running")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((row, future))
        self._wake.set()
        # shield: a client that leaves mid-commit must not cancel the commit other rows share
        await asyncio.shield(future)

    async def close(self) -> None:
        """Commit what is queued, then stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                await self._commit(batch)
            if self._closing:
                return

    async def _commit(self, batch: list[tuple[dict[str, Any], asyncio.Future[None]]]) -> None:
        try:
            async with self.db.begin() as conn:
                rows = [{k: v for k, v in row.items() if k != "judgements"} for row, _ in batch]
                await conn.execute(insert(logs), rows)
                judged = [j | {"log_id": row["id"]} for row, _ in batch for j in row.get("judgements") or ()]
                if judged:
                    await conn.execute(insert(log_criteria), judged)
        except Exception as exc:
            if len(batch) > 1:
                # One bad row must not cost the others their log: retry them one by one.
                for item in batch:
                    await self._commit([item])
                return
            log.exception("could not store a log row")
            _settle(batch, exc)
            return
        self.commits += 1
        self.rows += len(batch)
        _settle(batch, None)


def _settle(batch: list[tuple[dict[str, Any], asyncio.Future[None]]], error: Exception | None) -> None:
    for _, future in batch:
        if future.done():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
