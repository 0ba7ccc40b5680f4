"""An idle sequence between two that decode gets a throw-away token for the step (so that llama.cpp computes the
step in one sub-batch), which leaves its cached entries and the others' answers as they were."""

from __future__ import annotations

import asyncio

import llama_cpp as llama

from pipeserve.engines.llamacpp.engine import LlamaCppEngine
from pipeserve.engines.llamacpp.model import LlamaModel
from pipeserve.params import ChatMessage, ChatParams, SamplingParams
from pipeserve.settings import ModelConfig
from tests.greedy import assert_same_greedy_path
from tests.greedy import generate_greedy as _run

MODEL = "SmolLM2-135M-Instruct"


def _params(prompt: str, max_tokens: int, history: tuple[ChatMessage, ...] = ()) -> ChatParams:
    return ChatParams(
        model=MODEL,
        messages=(*history, ChatMessage("user", prompt)),
        max_tokens=max_tokens,
        sampling=SamplingParams(temperature=0.0),
        logprobs=True,
        top_logprobs=3,
    )


def _record_batches(model: LlamaModel) -> list[list[tuple[int, bool]]]:
    """Each decode's (sequence id, wants logits) per token."""
    seen: list[list[tuple[int, bool]]] = []
    decode = model.decode

    def recording() -> int:
        batch = model.batch
        seen.append([(batch.seq_id[i][0], bool(batch.logits[i])) for i in range(batch.n_tokens)])
        return decode()

    model.decode = recording  # type: ignore[method-assign]
    return seen


async def test_an_idle_sequence_between_two_decoding_ones_fills_the_step_and_keeps_its_cache() -> None:
    config = ModelConfig(id=MODEL, max_sequences=3, context_size=3 * 512, long_context=0, solo_lane=False)
    engine = LlamaCppEngine(config, max_waiting=8)
    await engine.start()
    try:
        scheduler = engine._scheduler
        assert scheduler is not None
        long_a, short, long_c = (
            _params("Write three sentences about the ocean.", 24),
            _params("Name a colour.", 2),
            _params("Write three sentences about mountains.", 24),
        )
        alone_a = (await _run(engine, long_a))[1]
        alone_c = (await _run(engine, long_c))[1]
        for slot in scheduler.slots:  # empty streams, none more recently used: the three take ids 0, 1, 2 in order
            slot.clear(scheduler.model)
            slot.last_used = 0.0
        batches = _record_batches(scheduler.model)
        a, b, c = await asyncio.gather(_run(engine, long_a), _run(engine, short), _run(engine, long_c))

        seqs = {slot.seq: slot.tokens for slot in scheduler.slots}
        # The short one finished in the middle stream; the steps after it carried a token for it, without logits.
        filled = [batch for batch in batches if batch == [(0, True), (1, False), (2, True)]]
        assert len(filled) >= 10, batches
        assert [(0, True), (2, True)] not in batches  # never a step split around the idle one
        # ...and its stream holds exactly its tokens afterwards, as every other one.
        for seq, tokens in seqs.items():
            assert llama.llama_memory_seq_pos_max(scheduler.model.memory, seq) + 1 == len(tokens), seq
        assert assert_same_greedy_path(a[1], alone_a) >= 8
        assert assert_same_greedy_path(c[1], alone_c) >= 8
        # Its cache still serves the next turn of its conversation.
        history = (ChatMessage("user", "Name a colour."), ChatMessage("assistant", b[0]))
        _, _, usage = await _run(engine, _params("And another?", 2, history))
        assert usage.cached_tokens >= b[2].prompt_tokens
    finally:
        await engine.close()
