"""An engine whose loop stops says so (503s, `problem()`), fails what it held, and comes back by itself."""

from __future__ import annotations

import asyncio

import pytest

from pipeserve.engines.llamacpp.engine import LlamaCppEngine
from pipeserve.engines.llamacpp.scheduler import Scheduler
from pipeserve.errors import EngineUnavailableError, PipeserveError
from pipeserve.params import ChatMessage, ChatParams
from pipeserve.settings import ModelConfig
from tests.waiting import until

MODEL = "SmolLM2-135M-Instruct"


def _params(max_tokens: int = 8) -> ChatParams:
    return ChatParams(model=MODEL, messages=(ChatMessage("user", "Count to twenty."),), max_tokens=max_tokens)


async def _text(engine: LlamaCppEngine, max_tokens: int = 8) -> str:
    generation = await engine.generate(_params(max_tokens))
    return "".join([delta.content async for step in generation for delta in step])


async def test_a_crashed_loop_fails_its_requests_answers_503_and_restarts(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = LlamaCppEngine(ModelConfig(id=MODEL, max_sequences=2, context_size=1024), max_waiting=8)
    await engine.start()
    try:
        assert engine.problem() is None
        assert await _text(engine)

        real_step = Scheduler._step
        crashed = asyncio.Event()
        loop = asyncio.get_running_loop()

        def crash_once(self: Scheduler) -> None:
            if not crashed.is_set():
                loop.call_soon_threadsafe(crashed.set)
                # Not an Exception: nothing inside the loop catches it, as with a bug in the loop itself.
                raise KeyboardInterrupt("simulated crash of the engine loop")
            real_step(self)

        monkeypatch.setattr(Scheduler, "_step", crash_once)
        running = await engine.generate(_params(max_tokens=200))
        with pytest.raises(PipeserveError) as failed:
            async for _ in running:
                pass
        assert failed.value.status_code == 503  # the client is told to retry, not left waiting
        assert crashed.is_set()

        # Until the model is reloaded, requests get a 503 that says why; then the engine serves again.
        try:
            await engine.generate(_params())
        except EngineUnavailableError as error:
            assert "restarting" in error.message
        await until(lambda: engine.problem() is None, 60.0)
        assert engine.restarts == 1
        assert await _text(engine)
        # the snapshot follows the step that finished the request
        await until(lambda: engine.stats().running_sequences == 0 and engine.stats().kv_cells_used == 0, 10)
    finally:
        await engine.close()


async def test_a_failed_step_fails_only_the_requests_then_the_engine_carries_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = LlamaCppEngine(ModelConfig(id=MODEL, max_sequences=2, context_size=1024), max_waiting=8)
    await engine.start()
    try:
        real_step = Scheduler._step
        failures = [RuntimeError("llama_decode returned -3")]

        def fail_once(self: Scheduler) -> None:
            if failures:
                raise failures.pop()
            real_step(self)

        monkeypatch.setattr(Scheduler, "_step", fail_once)
        generation = await engine.generate(_params())
        with pytest.raises(PipeserveError) as failed:
            async for _ in generation:
                pass
        assert "llama_decode returned -3" in failed.value.message
        assert engine.problem() is None and engine.restarts == 0
        assert await _text(engine)
    finally:
        await engine.close()
