"""At most max_concurrent run, max_waiting wait in order, the rest get 429."""

from __future__ import annotations

import asyncio

import pytest

from pipeserve.errors import RateLimitError
from pipeserve.upstream import Admission


async def test_admission_queues_in_order_then_refuses() -> None:
    admission = Admission("m", max_concurrent=1, max_waiting=2)
    await admission.acquire()
    order: list[int] = []

    async def wait(i: int) -> None:
        await admission.acquire()
        order.append(i)

    waiters = [asyncio.create_task(wait(i)) for i in range(2)]
    await asyncio.sleep(0)
    assert admission.waiting == 2
    with pytest.raises(RateLimitError):
        await admission.acquire()
    admission.release()
    await waiters[0]
    admission.release()
    await waiters[1]
    assert order == [0, 1] and admission.running == 1 and admission.waiting == 0


async def test_no_limit() -> None:
    admission = Admission("m", max_concurrent=None, max_waiting=0)
    for _ in range(100):
        await admission.acquire()
    assert admission.running == 100
