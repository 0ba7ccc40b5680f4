"""How many requests one remote model may have in flight, and how many may wait for a turn."""

from __future__ import annotations

import asyncio

from pipeserve.errors import RateLimitError


class Admission:
    """At most `max_concurrent` requests run (None: no limit); up to `max_waiting` more wait in arrival
    order; beyond that a request gets a 429 with `Retry-After`."""

    def __init__(self, model: str, max_concurrent: int | None, max_waiting: int) -> None:
        self.model = model
        self.max_concurrent = max_concurrent
        self.max_waiting = max_waiting
        self.running = 0
        self.waiting = 0
        self._slots = asyncio.Semaphore(max_concurrent) if max_concurrent is not None else None

    async def acquire(self) -> None:
        slots = self._slots
        if slots is not None:
            if slots.locked() and self.waiting >= self.max_waiting:
                raise RateLimitError(
                    f"Model {self.model!r} has {self.running} requests in flight (its `max_concurrent`) and "
                    f"{self.waiting} waiting; retry shortly.",
                    retry_after=1,
                )
            self.waiting += 1
            try:
                await slots.acquire()
            finally:
                self.waiting -= 1
        self.running += 1

    def release(self) -> None:
        self.running -= 1
        if self._slots is not None:
            self._slots.release()
