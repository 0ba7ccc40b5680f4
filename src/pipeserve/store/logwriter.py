"""Group commit for log rows, and what becomes of them while the database is away.

While the store is reachable, many requests' logs share one transaction and each request waits for its row's
commit. No write waits for a timer: while one transaction commits, the rows that arrive queue up, and the next
transaction takes all of them. A caller that awaits `write` then knows its row is durable (it survives
`kill -9` of the server).

When a commit fails because the store can't be reached (a refused or reset connection, a commit that outlives
`timeout`, a full disk), serving must go on: the writer holds the rows instead, and `write` returns as soon as
a row is held. Held rows stay in memory up to `buffer_rows`, then spill to an append-only file (`spill.py`)
up to `spill_bytes`; beyond both, rows are dropped and counted in `dropped`. A retry with backoff writes them,
oldest first, when the store is back, with INSERT ... ON CONFLICT DO NOTHING: a row whose commit was in doubt
(a timeout after the server committed) is never stored twice. Rows held in memory are lost if the process is
killed during an outage; spilled rows are written after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sqlalchemy import text

from pipeserve.errors import StoreUnavailableError
from pipeserve.store.db import Database, describe, is_refused, is_unavailable
from pipeserve.store.inserts import Batch
from pipeserve.store.spill import SpillFile, SpillLockedError
from pipeserve.store.tables import log_criteria, logs

log = logging.getLogger("pipeserve.store")

MAX_BATCH = 512  # rows per transaction; bounds a commit's time and memory under a burst
RETRY_FIRST = 0.2  # seconds before the first retry once the store is away; doubled up to RETRY_MAX
RETRY_MAX = 5.0
STUCK_GIVE_UP = 30.0  # seconds after which a commit left hanging stops blocking new attempts

Row = dict[str, Any]
_Waiting = tuple[Row, "asyncio.Future[None]"]


class LogWriter:
    def __init__(
        self,
        db: Database,
        *,
        spill_path: Path | None = None,
        buffer_rows: int = 1000,
        spill_bytes: int = 1 << 30,
        timeout: float = 5.0,
    ) -> None:
        self.db = db
        self.buffer_rows = buffer_rows
        self.timeout = timeout
        self.available = True  # whether the last attempt to reach the store worked
        self.dropped = 0  # rows lost: nowhere left to hold them, or refused by the store after being held
        self.commits = 0  # transactions committed, for metrics and the benchmark
        self.rows = 0
        self._pending: list[_Waiting] = []  # rows whose writers wait for their commit
        self._moving = 0  # rows out of the lists for a commit or a spill, still not stored
        self._held: deque[Row] = deque()  # oldest first; every spilled row is older than every one here
        self._spill = SpillFile(spill_path, spill_bytes) if spill_path is not None and spill_bytes > 0 else None
        self._file = asyncio.Lock()  # the spill file, and moving rows between it, memory and the store
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._stuck: asyncio.Task[Any] | None = None  # a commit that outlived its deadline, left to end
        self._stuck_since = 0.0
        self._last_drop_log = 0.0

    @property
    def backlog(self) -> int:
        """Rows accepted and not yet committed: waiting for their commit, held in memory, or spilled."""
        spilled = self._spill.rows if self._spill is not None else 0
        return len(self._pending) + self._moving + len(self._held) + spilled

    def start(self) -> None:
        if self._spill is not None:
            try:
                self._spill.open()
            except SpillLockedError as error:
                log.warning("%s: logs held during an outage stay in memory only", error)
                self._spill = None
            else:
                if self._spill.rows:
                    log.info("writing %d logs spilled by an earlier run", self._spill.rows)
                self._drop(self._spill.torn, f"cut short in {self._spill.path} by a crash")
        self._task = asyncio.create_task(self._run(), name="pipeserve-log-writer")

    async def write(self, row: Row) -> None:
        """Commit `row`, or hold it while the store is away; raises if the store refused the row itself.

        `row["judgements"]`, if present, is a list of `log_criteria` rows (without `log_id`), stored in the
        same transaction as the log.
        """
        if self._task is None or self._task.done() or self._closing:
            raise RuntimeError("the log writer is not running")
        if not self.available:
            # shield: a client that leaves while its row is spilled must not leave the row half-moved
            await asyncio.shield(self._hold([row]))
            return
        if self.backlog == 0 and await self._commit_now(row):
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((row, future))
        self._wake.set()
        # A client that leaves cancels only its own future; its row is committed with the others all the same.
        await future

    async def _commit_now(self, row: Row) -> bool:
        """With nothing queued, commit `row` in place if the store can without waiting (SQLite): no hand-off
        to the writer's task. Whether it did (else `row` goes through the queue)."""
        try:
            if not self.db.insert_now(_batches([row], replay=False)):
                return False
        except Exception as error:
            if is_refused(error):
                log.exception("could not store a log row")
                raise
            self._went_away(error)
            self._wake.set()  # the writer's task may be idle (commits went in place): it retries from now on
            await asyncio.shield(self._hold([row]))
            return True
        self.commits += 1
        self.rows += 1
        return True

    async def close(self) -> None:
        """Commit what is queued (or spill it, if the store is away), then stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task

    # --- the writer's task ------------------------------------------------------------------------------------

    async def _run(self) -> None:
        delay = RETRY_FIRST
        while not self._closing or (self._pending and self.available):
            try:
                progressed = await self._step()
            except Exception:  # nothing may stop the writer: every later log depends on it
                log.exception("the log writer failed; it carries on")
                progressed = False
            if progressed:
                delay = RETRY_FIRST
            elif progressed is not None:
                await self._pause(delay)
                delay = min(delay * 2, RETRY_MAX)
        await self._shut_down()

    async def _step(self) -> bool | None:
        """One unit of work: whether it got through to the store (None: there was nothing to do)."""
        if self._pending and self.available:
            await self._commit_waiting(self._take_pending())
            return None if self.available else False
        if self._pending:
            # Queued while the store was there, which went away before their commit (a replay failed): their
            # writers must not wait for it to come back.
            waiting, self._pending = self._pending, []
            await self._hold_waiting(waiting)
        if self._spill is not None and self._spill.rows:
            return await self._replay_spilled()
        if self._held:
            return await self._replay_held()
        if not self.available:
            return await self._probe()
        await self._wake.wait()
        self._wake.clear()
        return None

    def _take_pending(self) -> list[_Waiting]:
        batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
        return batch

    async def _commit_waiting(self, batch: list[_Waiting]) -> None:
        self._moving += len(batch)
        try:
            await self._store([row for row, _ in batch], replay=False)
        except Exception as error:
            self._moving -= len(batch)
            if not is_refused(error):  # the store is away, or failing: nothing to blame the rows for
                self._went_away(error)
                waiting, self._pending = batch + self._pending, []
                await self._hold_waiting(waiting)
                return
            if len(batch) == 1:
                log.exception("could not store a log row")
                _settle(batch, error)
                return
            # One bad row must not cost the others their log: retry them one by one.
            for index, item in enumerate(batch):
                if not self.available:
                    await self._hold_waiting(batch[index:])
                    return
                await self._commit_waiting([item])
            return
        self._moving -= len(batch)
        self.commits += 1
        self.rows += len(batch)
        _settle(batch, None)

    async def _hold_waiting(self, batch: list[_Waiting]) -> None:
        try:
            await self._hold([row for row, _ in batch])
        finally:
            _settle(batch, None)  # their writers stop waiting: the rows are held (or counted as dropped)

    async def _replay_spilled(self) -> bool:
        """Store the oldest spilled rows; whether that worked (the store is there)."""
        async with self._file:
            spill = self._spill
            if spill is None or not spill.rows:
                return True
            rows, offset, bad = await asyncio.to_thread(spill.read, MAX_BATCH)
            if not rows and not bad:  # nothing readable is left where the count says rows are
                offset, bad = spill.size, spill.rows
            if not await self._replay(rows):
                return False
            await asyncio.to_thread(spill.consume, offset, len(rows) + bad)
            self._drop(bad, f"unreadable in {spill.path}")
            return True

    async def _replay_held(self) -> bool:
        """Store the oldest rows held in memory (all spilled rows are older: they go first)."""
        async with self._file:
            rows = [self._held.popleft() for _ in range(min(MAX_BATCH, len(self._held)))]
            self._moving += len(rows)
            stored = False
            try:
                stored = await self._replay(rows)
            finally:
                self._moving -= len(rows)
                if not stored:
                    self._held.extendleft(reversed(rows))
            return stored

    async def _replay(self, rows: list[Row]) -> bool:
        if not rows:
            return True
        try:
            await self._store(rows, replay=True)
        except Exception as error:
            if not is_refused(error):
                self._went_away(error)
                return False
            if len(rows) > 1:
                for row in rows:  # find the one the store refuses; the others are stored (again, harmlessly)
                    if not await self._replay([row]):
                        return False
                return True
            log.exception("a held log row was refused by the store; it is dropped")
            self._drop(1, "refused by the store")
            return True
        self.commits += 1
        self.rows += len(rows)
        self._came_back()
        return True

    async def _probe(self) -> bool:
        try:
            await self._deadline(self._ping(), "connecting")
        except Exception:
            return False
        self._came_back()
        return True

    async def _ping(self) -> None:
        async with self.db.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def _pause(self, delay: float) -> None:
        self._wake.clear()
        if self._closing:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._wake.wait()

    async def _shut_down(self) -> None:
        while self._pending:  # writes that came in before close()
            batch = self._take_pending()
            if self.available:
                await self._commit_waiting(batch)
            else:
                await self._hold_waiting(batch)
        while self._held and self.available and await self._replay_held():
            pass
        async with self._file:
            if self._held:
                await self._spill_held()
                self._drop(len(self._held), "held in memory at shutdown, with no room in a spill file")
                self._held.clear()
            if self._spill is not None:
                if self._spill.rows:
                    log.warning("%d logs stay in %s until the store is back", self._spill.rows, self._spill.path)
                self._spill.close()

    # --- storing ------------------------------------------------------------------------------------------------

    async def _store(self, rows: list[Row], *, replay: bool) -> None:
        batches = _batches(rows, replay=replay)
        if self.db.insert_now(batches):  # done in place, without waiting: no deadline to watch
            return
        await self._deadline(self.db.insert(batches), f"a commit of {len(rows)} logs")

    async def _deadline(self, work: Awaitable[None], what: str) -> None:
        """`work` within `timeout`, else StoreUnavailableError. A hung connection must not hold the writer (nor
        the requests waiting on it), so late work is cancelled and left to end on its own; until it has (or
        STUCK_GIVE_UP seconds have passed), no new attempt starts."""
        if self._stuck is not None and not self._stuck.done():
            hung = time.monotonic() - self._stuck_since
            if hung < max(STUCK_GIVE_UP, 3 * self.timeout):
                _close(work)
                raise StoreUnavailableError("an earlier commit to the store is still hanging")
            log.warning("a commit to the store has hung for %.0fs; trying a new connection", hung)
        task = asyncio.ensure_future(work)
        done, _ = await asyncio.wait({task}, timeout=self.timeout)
        if task in done:
            task.result()
            return
        task.cancel()
        task.add_done_callback(_retrieve)
        self._stuck, self._stuck_since = task, time.monotonic()
        raise StoreUnavailableError(f"{what} took longer than store_timeout_seconds ({self.timeout:g}s)")

    # --- holding ----------------------------------------------------------------------------------------------

    async def _hold(self, rows: list[Row]) -> None:
        self._held.extend(rows)
        over = len(self._held) - self.buffer_rows
        if over <= 0:
            return
        if self._spill is None:
            for _ in range(over):
                self._held.pop()
            self._drop(over, "beyond log_buffer_rows, with no spill file")
            return
        async with self._file:
            if len(self._held) > self.buffer_rows:  # unless another writer spilled them meanwhile
                await self._spill_held()

    async def _spill_held(self) -> None:
        rows = list(self._held)
        self._held.clear()
        self._moving += len(rows)
        try:
            left = await self._to_file(rows)
        finally:
            self._moving -= len(rows)
        if left:  # the file took no more: memory keeps what it may (the oldest, ahead of newer arrivals)
            keep = left[: self.buffer_rows]
            self._held.extendleft(reversed(keep))
            self._drop(len(left) - len(keep), "beyond log_buffer_rows and log_spill_bytes")

    async def _to_file(self, rows: list[Row]) -> list[Row]:
        """Append `rows` to the spill file; the rows it did not take."""
        if self._spill is None:
            return rows
        try:
            return await asyncio.to_thread(self._spill.append, rows)
        except OSError as error:
            log.error("could not spill logs to %s: %s", self._spill.path, error)
            return rows

    def _went_away(self, error: Exception) -> None:
        if not is_unavailable(error):  # not an outage we know: its rows are kept, and its traceback shown
            log.error("storing logs failed; they are held and retried", exc_info=error)
        if self.available:
            where = f"then in {self._spill.path}" if self._spill is not None else "with no spill file"
            log.warning(
                "the store can't be reached (%s); request logs are held (in memory up to %d rows, %s) and written "
                "when it is back",
                describe(error),
                self.buffer_rows,
                where,
            )
        self.available = False

    def _came_back(self) -> None:
        if not self.available:
            log.warning("the store is back; writing %d held logs", self.backlog)
        self.available = True

    def _drop(self, count: int, why: str) -> None:
        if count <= 0:
            return
        self.dropped += count
        now = time.monotonic()
        if now - self._last_drop_log >= 5:  # one line every few seconds, not one per request
            self._last_drop_log = now
            log.error(
                "dropped %d logs (%s); %d dropped since start. Bring the store back, or raise log_buffer_rows "
                "and log_spill_bytes",
                count,
                why,
                self.dropped,
            )


def _batches(rows: list[Row], *, replay: bool) -> list[Batch]:
    """The log rows and their judgements (`row["judgements"]`, given their log's id), for `Database.insert`."""
    values = [{k: v for k, v in row.items() if k != "judgements"} for row in rows]
    judged = [j | {"log_id": row["id"]} for row in rows for j in row.get("judgements") or ()]
    return [(logs, values, replay), (log_criteria, judged, replay)]


def _settle(batch: list[_Waiting], error: Exception | None) -> None:
    for _, future in batch:
        if future.done():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


def _retrieve(task: asyncio.Future[Any]) -> None:
    # The outcome of abandoned work is known to be lost; read it so that asyncio doesn't report it.
    if not task.cancelled():
        task.exception()


def _close(work: Awaitable[None]) -> None:
    close: Callable[[], None] | None = getattr(work, "close", None)
    if close is not None:
        close()  # a coroutine that will never run: say so, rather than warn that it was never awaited
