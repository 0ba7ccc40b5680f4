"""The solo lane: a sequence decoding alone runs in a second weight format (the one faster for one sequence),
its KV entries moved there and back, and answers as it would have in the batch's format."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import llama_cpp as llama
import pytest

from pipeserve.engines.llamacpp import weights
from pipeserve.engines.llamacpp.engine import LlamaCppEngine
from pipeserve.engines.llamacpp.model import LlamaModel, restream
from pipeserve.engines.llamacpp.options import embedded_gguf_path
from pipeserve.engines.llamacpp.scheduler import Scheduler
from pipeserve.errors import EngineError
from pipeserve.params import ChatMessage, ChatParams, SamplingParams
from pipeserve.settings import ModelConfig
from tests.greedy import assert_same_greedy_path
from tests.greedy import generate_greedy as _greedy

MODEL = "SmolLM2-135M-Instruct"
PROMPT = "Write three sentences about the ocean."


@pytest.fixture(scope="module")
def q8_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The batch's format in these tests: Q8_0; the solo lane's: the shipped Q4_1 (as on machines where one
    sequence decodes fastest in the smallest file)."""
    target = tmp_path_factory.mktemp("weights") / "smollm2.Q8_0.gguf"
    weights.convert(embedded_gguf_path(), target, weights.CONVERSIONS["Q8_0"], threads=os.cpu_count() or 1)
    return target


@contextlib.asynccontextmanager
async def _engine(q8_file: Path, *, solo: bool) -> AsyncIterator[LlamaCppEngine]:
    config = ModelConfig(id=MODEL, max_sequences=4, context_size=4096, long_context=0, solo_lane=solo)
    engine = LlamaCppEngine(config, max_waiting=8)
    shipped = weights.Choice(embedded_gguf_path(), False, "original")
    engine._weights = weights.Choice(q8_file, False, "Q8_0", shipped)  # as `choose` would record it
    await engine.start()
    try:
        yield engine
    finally:
        await engine.close()


def _scheduler(engine: LlamaCppEngine) -> Scheduler:
    assert engine._scheduler is not None
    return engine._scheduler


def _count_decodes(model: LlamaModel) -> list[int]:
    calls = [0]
    decode = model.decode

    def counting() -> int:
        calls[0] += 1
        return decode()

    model.decode = counting  # type: ignore[method-assign]
    return calls


def _params(prompt: str = PROMPT, *, max_tokens: int = 32, history: tuple[ChatMessage, ...] = ()) -> ChatParams:
    return ChatParams(
        model=MODEL,
        messages=(*history, ChatMessage("user", prompt)),
        max_tokens=max_tokens,
        sampling=SamplingParams(temperature=0.0),
        logprobs=True,
        top_logprobs=5,
    )


async def _idle(scheduler: Scheduler) -> None:
    for _ in range(200):
        if not scheduler.busy:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the engine stayed busy")


def _assert_streams_hold_their_tokens(scheduler: Scheduler) -> None:
    """Between requests the batch's streams hold exactly each slot's tokens, and the solo lane nothing."""
    for slot in scheduler.slots:
        held = llama.llama_memory_seq_pos_max(scheduler.model.memory, slot.seq) + 1
        assert held == len(slot.tokens), (slot.seq, held, len(slot.tokens))
    assert scheduler.solo is not None
    assert llama.llama_memory_seq_pos_max(scheduler.solo.memory, 0) == -1


async def test_a_lone_sequence_decodes_in_the_solo_lane_and_answers_as_the_batch_does(q8_file: Path) -> None:
    async with _engine(q8_file, solo=False) as reference:
        assert _scheduler(reference).solo is None
        _, expected, _ = await _greedy(reference, _params())
    async with _engine(q8_file, solo=True) as engine:
        scheduler = _scheduler(engine)
        assert scheduler.solo is not None
        solo_steps, batch_steps = _count_decodes(scheduler.solo), _count_decodes(scheduler.model)
        text, path, usage = await _greedy(engine, _params())
        assert text and usage.completion_tokens == len(path)
        # The prompt in the batch's format (one step), every token after the first in the solo lane.
        assert batch_steps[0] == 1 and solo_steps[0] == len(path) - 1
        assert assert_same_greedy_path(path, expected) >= 8
        await _idle(scheduler)
        _assert_streams_hold_their_tokens(scheduler)


async def test_a_second_request_brings_the_lone_sequence_back_to_the_batch(q8_file: Path) -> None:
    async with _engine(q8_file, solo=True) as engine:
        scheduler = _scheduler(engine)
        assert scheduler.solo is not None
        _, alone, _ = await _greedy(engine, _params(max_tokens=48))
        solo_steps, batch_steps = _count_decodes(scheduler.solo), _count_decodes(scheduler.model)
        started = asyncio.Event()
        first = asyncio.create_task(_greedy(engine, _params(max_tokens=48), steps=started))
        await started.wait()
        solo_before = solo_steps[0]
        _, other, _ = await _greedy(engine, _params("Name a colour.", max_tokens=6))
        _, together, _ = await first
        assert solo_before >= 2  # it had been decoding alone
        assert batch_steps[0] >= 1 + len(other)  # the other prompt, then steps of both in the batch
        assert len(together) == 48 and len(other) >= 1
        # Moved there and back and there again, it still follows its own greedy path (rounding aside).
        assert assert_same_greedy_path(together, alone) >= 4
        await _idle(scheduler)
        _assert_streams_hold_their_tokens(scheduler)


async def test_a_sequence_finished_in_the_solo_lane_is_a_prefix_cache_for_the_next_turn(q8_file: Path) -> None:
    async with _engine(q8_file, solo=True) as engine:
        answer, path, usage = await _greedy(engine, _params(max_tokens=24))
        history = (ChatMessage("user", PROMPT), ChatMessage("assistant", answer))
        _, _, follow_up = await _greedy(engine, _params("And about rivers?", max_tokens=4, history=history))
        # Its cached prefix runs past the first prompt: tokens decoded in the solo lane came back with it.
        assert follow_up.cached_tokens > usage.prompt_tokens + len(path) // 2


async def test_a_cancelled_lone_sequence_leaves_nothing_behind(q8_file: Path) -> None:
    async with _engine(q8_file, solo=True) as engine:
        scheduler = _scheduler(engine)
        assert scheduler.solo is not None
        solo_steps = _count_decodes(scheduler.solo)
        generation = await engine.generate(_params(max_tokens=200))
        async for _ in generation:
            if solo_steps[0] >= 3:
                generation.cancel()
                break
        await _idle(scheduler)
        _assert_streams_hold_their_tokens(scheduler)
        text, _, _ = await _greedy(engine, _params("Name a colour.", max_tokens=6))
        assert text


async def test_a_sequence_that_cannot_come_back_fails_alone_and_the_engine_serves_on(q8_file: Path) -> None:
    async with _engine(q8_file, solo=True) as engine:
        scheduler = _scheduler(engine)
        assert scheduler.solo is not None
        model = scheduler.model

        mover = scheduler._mover
        move = mover.move

        def refused(source: LlamaModel, seq: int, target: LlamaModel, dest: int) -> bool:
            if target is not model:
                return move(source, seq, target, dest)
            target.seq_clear(dest)  # as SequenceMover leaves a sequence it could not restore
            return False

        started = asyncio.Event()
        first = asyncio.create_task(_greedy(engine, _params(max_tokens=48), steps=started))
        await started.wait()
        mover.move = refused  # type: ignore[method-assign]
        _, other, _ = await _greedy(engine, _params("Name a colour.", max_tokens=6))
        with pytest.raises(EngineError, match="retry"):
            await first
        assert other
        del mover.move  # the class's own again
        text, _, _ = await _greedy(engine, _params("Name a fruit.", max_tokens=6))
        assert text
        await _idle(scheduler)
        _assert_streams_hold_their_tokens(scheduler)


def _restreamed(state: bytes, n_streams: int) -> bytes:
    buffer = (ctypes.c_uint8 * (len(state) + 4 * n_streams)).from_buffer_copy(state + bytes(4 * n_streams))
    length = restream(buffer, len(state), n_streams)
    return bytes(buffer)[:length]


def test_a_saved_state_takes_the_stream_layout_of_the_context_it_goes_to() -> None:
    u32 = struct.Struct("<I")
    header = u32.pack(0xAF143CD8) + u32.pack(3)  # llama.cpp's magic number and the sequence's id
    cells = u32.pack(2) + b"cell data"  # the holding stream's cell count and its cells
    for streams, holder in ((16, 5), (16, 0), (16, 15), (1, 0)):
        state = header + u32.pack(streams) + u32.pack(0) * holder + cells + u32.pack(0) * (streams - holder - 1)
        for target in (1, 4, 16):
            assert _restreamed(state, target) == header + u32.pack(target) + cells + u32.pack(0) * (target - 1)
    empty = header + u32.pack(16) + u32.pack(0) * 16
    assert _restreamed(empty, 1) == header + u32.pack(1) + u32.pack(0)
    with pytest.raises(ValueError):
        _restreamed(header + u32.pack(2) + cells + cells, 1)


def test_a_solo_format_is_kept_only_when_clearly_faster_for_one_sequence() -> None:
    bf16 = weights.Measured("BF16", False, prefill=2200, decode=640, single=120)
    q4 = weights.Measured("original", False, prefill=520, decode=340, single=160)
    q8 = weights.Measured("Q8_0", True, prefill=1100, decode=510, single=130)
    assert weights._solo([bf16, q4, q8], bf16) == q4
    assert weights._solo([bf16, q8], bf16) is None  # 8% faster: within the probe's noise, not worth a copy
    assert weights._solo([bf16], bf16) is None
    failed = weights.Measured("F16", False, failure="exit status -4")
    assert weights._solo([bf16, failed], bf16) is None
