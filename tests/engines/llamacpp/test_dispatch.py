"""The engine thread hands each step's output to the event loop in one hop, for all requests of the step."""

from __future__ import annotations

import asyncio
from typing import Any

from pipeserve.engines.llamacpp.engine import LlamaCppEngine
from pipeserve.params import ChatMessage, ChatParams, SamplingParams
from pipeserve.settings import ModelConfig


async def test_one_hop_to_the_event_loop_carries_every_request_of_a_step() -> None:
    engine = LlamaCppEngine(ModelConfig(id="m", context_size=2048, max_sequences=4, threads=2), max_waiting=8)
    await engine.start()
    loop = asyncio.get_running_loop()
    hops: list[int] = []
    send = loop.call_soon_threadsafe

    def counting(callback: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(callback, "__name__", "") == "_deliver":
            hops.append(len(args[0]))
        return send(callback, *args, **kwargs)

    loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
    try:

        async def one(topic: str) -> tuple[int, str | None]:
            params = ChatParams(
                model="m",
                messages=(ChatMessage("user", f"Write a long story about the {topic}."),),
                max_tokens=8,
                sampling=SamplingParams(temperature=0.0),
            )
            generation = await engine.generate(params)
            finish = None
            async for deltas in generation:
                for delta in deltas:
                    finish = delta.finish_reason or finish
            return generation.usage.completion_tokens, finish

        results = await asyncio.gather(*(one(topic) for topic in ("sea", "moon", "owl")))
    finally:
        loop.call_soon_threadsafe = send  # type: ignore[method-assign]
        await engine.close()
    for tokens, finish in results:
        assert finish in ("stop", "length")
        assert tokens == 8 or finish == "stop"
    # The three requests decode together: most steps deliver to all three through a single hop.
    assert max(hops) == 3
    assert sum(hops) > len(hops)
