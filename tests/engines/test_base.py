"""`Generation`: the queue between an engine and the pipeline."""

from __future__ import annotations

import asyncio

import pytest

from pipeserve.engines.base import Delta, Generation
from pipeserve.errors import EngineError


def generation() -> Generation:
    return Generation(0, lambda choice, keep: None)


async def steps(gen: Generation) -> list[list[Delta]]:
    async with asyncio.timeout(2):
        return [step async for step in gen]


async def test_steps_pushed_while_the_pipeline_was_busy_come_out_as_one_in_order() -> None:
    gen = generation()
    first, second = [Delta(0, content="a")], [Delta(0, content="b"), Delta(1, content="c")]
    gen.push(first, False)
    gen.push(second, False)
    gen.push([Delta(0, finish_reason="stop")], True)
    [merged] = await steps(gen)
    assert [(d.index, d.content, d.finish_reason) for d in merged] == [
        (0, "a", None),
        (0, "b", None),
        (1, "c", None),
        (0, "", "stop"),
    ]
    assert [d.content for d in first] == ["a"] and len(second) == 2  # the engine's lists are left as they were


async def test_a_step_pushed_alone_is_passed_as_it_is_and_each_wait_gets_what_came_since() -> None:
    gen = generation()
    one = [Delta(0, content="a")]
    iterator = aiter(gen)
    gen.push(one, False)
    assert await anext(iterator) is one
    reader = asyncio.ensure_future(anext(iterator))
    await asyncio.sleep(0)
    assert not reader.done()  # nothing queued: the pipeline waits
    gen.push([Delta(0, content="b")], False)
    gen.push([Delta(0, content="c")], False)
    assert [d.content for d in await reader] == ["b", "c"]
    gen.push([], True)
    with pytest.raises(StopAsyncIteration):
        await anext(iterator)


async def test_a_failure_comes_after_the_steps_that_came_before_it() -> None:
    gen = generation()
    gen.push([Delta(0, content="a")], False)
    gen.fail(EngineError("the model failed"))
    gen.push([Delta(0, content="never")], False)
    iterator = aiter(gen)
    assert [d.content for d in await anext(iterator)] == ["a"]
    with pytest.raises(EngineError, match="the model failed"):
        await anext(iterator)
