"""An engine's thread makes every llama.cpp call of its model, and ends while the model is idle: a thread that
has called llama.cpp keeps an OpenMP pool, which throttles the other models' threads while it lives."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from pipeserve.engines.llamacpp import engine as engine_module
from pipeserve.engines.llamacpp import worker
from pipeserve.engines.llamacpp.engine import LlamaCppEngine
from pipeserve.engines.llamacpp.model import LlamaModel
from pipeserve.engines.llamacpp.worker import EngineThread, Turn
from pipeserve.params import ChatMessage, ChatParams, SamplingParams
from pipeserve.settings import ModelConfig
from tests.waiting import until


def _threads(name: str) -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == name]


async def _answer(engine: LlamaCppEngine, question: str) -> tuple[str, str | None]:
    params = ChatParams(
        model=engine.model_id,
        messages=(ChatMessage("user", question),),
        max_tokens=12,
        sampling=SamplingParams(temperature=0.0),
    )
    generation = await engine.generate(params)
    text, finish = "", None
    async for deltas in generation:
        for delta in deltas:
            text += delta.content
            finish = delta.finish_reason or finish
    return text, finish


async def test_an_idle_engine_s_thread_ends_and_the_next_request_brings_one_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(worker, "PARK_AFTER", 0.3)
    monkeypatch.setattr(engine_module, "_STALL_AFTER", 0.5)
    callers: list[threading.Thread] = []
    real_decode = LlamaModel.decode

    def decode(self: LlamaModel) -> int:
        callers.append(threading.current_thread())
        return real_decode(self)

    monkeypatch.setattr(LlamaModel, "decode", decode)
    engine = LlamaCppEngine(ModelConfig(id="m", context_size=1024, max_sequences=2, threads=2), max_waiting=8)
    await engine.start()
    try:
        first = await _answer(engine, "Name a colour.")
        assert first[0] and first[1] in ("length", "stop")
        await until(lambda: not _threads("engine:m"), 10.0)  # parked: its OpenMP pool went with it
        await asyncio.sleep(1.0)  # longer than the stall limit: a parked engine is idle, not stalled
        assert engine.problem() is None
        assert engine.stats().running_sequences == 0
        # Greedy, and the same prompt: the same tokens, from a new thread.
        assert await _answer(engine, "Name a colour.") == first
        assert callers[-1] is not callers[0]
        assert {thread.name for thread in callers} == {"engine:m"}
        assert len(_threads("engine:m")) == 1
    finally:
        await engine.close()
    await until(lambda: not _threads("engine:m"), 10.0)


async def test_a_model_that_fails_to_load_ends_its_thread_and_leaves_the_others_serving(tmp_path: Path) -> None:
    good = LlamaCppEngine(ModelConfig(id="a", context_size=1024, max_sequences=2, threads=2), max_waiting=8)
    await good.start()
    try:
        broken_file = tmp_path / "broken.gguf"
        broken_file.write_bytes(b"GGUF, but not really")
        broken = LlamaCppEngine(ModelConfig(id="b", path=str(broken_file), weights="original"), max_waiting=8)
        with pytest.raises(Exception, match=r"broken\.gguf"):
            await broken.start()
        await until(lambda: not _threads("engine:b"), 10.0)
        assert good.problem() is None
        text, finish = await _answer(good, "Name a colour.")
        assert text and finish in ("length", "stop")
    finally:
        await good.close()


class _Turns:
    def __init__(self, script: list[Turn]) -> None:
        self.script = script  # what the next turns return; then "idle"
        self.turns = 0
        self.threads: list[threading.Thread] = []

    def __call__(self) -> Turn:
        self.turns += 1
        self.threads.append(threading.current_thread())
        return self.script.pop(0) if self.script else "idle"


async def test_a_thread_turns_while_busy_parks_when_idle_and_wakes_for_a_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(worker, "PARK_AFTER", 0.2)
    turns = _Turns(["busy"] * 20)
    thread = EngineThread(turns, "engine:t")
    thread.start()
    await until(lambda: thread.parked, 10.0)
    assert 21 <= turns.turns <= 23  # the busy ones at once, then idle: about one more before parking
    await until(lambda: not _threads("engine:t"), 10.0)
    parked_at = turns.turns
    await asyncio.sleep(0.3)
    assert turns.turns == parked_at  # parked: no turns at all
    thread.wake()
    await until(lambda: turns.turns > parked_at, 0.5)
    assert turns.threads[-1] is not turns.threads[0]  # a new thread, as the old one (and its pool) is gone
    await until(lambda: thread.parked, 10.0)


async def test_a_waiting_engine_keeps_its_thread_a_failing_turn_is_survived_and_done_is_final(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(worker, "PARK_AFTER", 0.1)
    monkeypatch.setattr(worker, "_WAIT_TURN", 0.05)
    state: list[Turn] = ["wait"]
    calls = {"n": 0}

    def turn() -> Turn:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("a bug in the turn")
        return state[0]

    thread = EngineThread(turn, "engine:w")
    thread.start()
    await asyncio.sleep(0.5)
    assert thread.alive and not thread.parked  # a lane to free, a reload to retry: it turns on
    assert calls["n"] >= 5  # about every 0.05 s, the failed third turn included
    state[0] = "done"
    await until(lambda: not thread.alive, 10.0)
    ended = calls["n"]
    thread.wake()  # a command for an engine that is gone starts nothing
    await asyncio.sleep(0.2)
    assert calls["n"] == ended and not thread.alive and not thread.parked
