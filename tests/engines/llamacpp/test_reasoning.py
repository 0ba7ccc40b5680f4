"""A reasoning model's thinking goes to reasoning_content, never into content, and is counted."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from pipeserve.engines.llamacpp.reasoning import ThinkSplitter
from pipeserve.service.chat import ChatService
from pipeserve.service.models import ModelRegistry, ServedModel
from pipeserve.settings import ModelConfig
from tests.service.test_chat import PARAMS, FakeEngine, collect, d, payloads

OUTPUT = "<think>\nThe user greets me. I greet back.\n</think>\n\nHello there!"


def split(text: str, pieces: list[int]) -> tuple[str, str]:
    splitter = ThinkSplitter("<think>", "</think>")
    reasoning, content, position = "", "", 0
    for size in pieces:
        r, c = splitter.feed(text[position : position + size])
        reasoning, content, position = reasoning + r, content + c, position + size
    r, c = splitter.feed(text[position:])
    return reasoning + r + splitter.flush(), content + c


@pytest.mark.parametrize("seed", range(20))
def test_splitting_does_not_depend_on_how_the_text_is_cut(seed: int) -> None:
    rng = random.Random(seed)
    pieces = [rng.randint(1, 5) for _ in range(30)]
    assert split(OUTPUT, pieces) == ("\nThe user greets me. I greet back.\n", "Hello there!")


def test_the_opening_tag_may_be_in_the_prompt_and_unclosed_thinking_is_all_reasoning() -> None:
    assert split("I think.</think>Answer", [3]) == ("I think.", "Answer")
    assert split("Still thinking when cut", [4, 4]) == ("Still thinking when cut", "")


def reasoning_service(engine: FakeEngine) -> ChatService:
    engine.think = ("<think>", "</think>")
    config = ModelConfig(id="fake")
    return ChatService(ModelRegistry([ServedModel(config=config, engine=engine)]))


def steps() -> list[list]:  # type: ignore[type-arg]
    words = ["<think>", "Greet", " back.", "</think>", "\n\n", "Hello", "!"]
    return [[d(0, word, finish="stop" if i == len(words) - 1 else None)] for i, word in enumerate(words)]


async def test_complete_splits_and_counts_reasoning_tokens() -> None:
    completion = await reasoning_service(FakeEngine(steps())).complete(PARAMS)
    message = completion.choices[0].message
    assert message.reasoning_content == "Greet back."
    assert message.content == "Hello!"
    details = completion.usage.completion_tokens_details
    assert details.reasoning_tokens == 4  # <think>, Greet, back., </think>
    assert details.text_tokens == completion.usage.completion_tokens - 4


async def test_stream_sends_reasoning_deltas_apart_from_content() -> None:
    stream = await reasoning_service(FakeEngine(steps())).stream(replace(PARAMS, stream=True))
    deltas = [p["choices"][0]["delta"] for p in payloads(await collect(stream)) if p.get("choices")]
    assert "".join(x.get("reasoning_content", "") for x in deltas) == "Greet back."
    assert "".join(x.get("content", "") for x in deltas) == "Hello!"
    assert all(not ("content" in x and "reasoning_content" in x) for x in deltas)


async def test_models_that_do_not_reason_keep_the_tags_in_content() -> None:
    from tests.service.test_chat import service

    completion = await service(FakeEngine(steps())).complete(PARAMS)
    assert completion.choices[0].message.content == "<think>Greet back.</think>\n\nHello!"
    assert completion.choices[0].message.reasoning_content is None
    assert completion.usage.completion_tokens_details.reasoning_tokens == 0
