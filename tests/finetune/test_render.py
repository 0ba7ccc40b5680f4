"""Training examples are the requests the llama.cpp engine serves, token for token, with the loss on the
assistant's tokens only (no torch needed)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from pipeserve.engines.llamacpp.options import embedded_gguf_path
from pipeserve.errors import InvalidRequestError
from pipeserve.finetune.render import IGNORE, Renderer, Vocabulary, render_all
from tests.conftest import MODEL

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "weather",
            "description": "The weather in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
CALL = {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}


@pytest.fixture(scope="module")
def renderer() -> Iterator[Renderer]:
    vocabulary = Vocabulary(embedded_gguf_path())
    yield Renderer(vocabulary)
    vocabulary.close()


def trained_text(renderer: Renderer, ids: list[int], labels: list[int]) -> list[str]:
    """The trained stretches of an example, as text (one string per contiguous run)."""
    runs: list[str] = []
    current: list[int] = []
    for token, label in zip(ids, labels, strict=True):
        if label != IGNORE:
            assert label == token
            current.append(token)
        elif current:
            runs.append("".join(renderer.vocabulary.text(t) for t in current))
            current = []
    if current:
        runs.append("".join(renderer.vocabulary.text(t) for t in current))
    return runs


def test_only_the_answer_and_its_end_of_turn_are_trained(renderer: Renderer) -> None:
    entry = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there!"}]}
    example = renderer.example(entry)
    assert renderer.vocabulary.text(renderer.end_of_turn) == "<|im_end|>"
    assert trained_text(renderer, example.ids, example.labels) == ["Hello there!<|im_end|>"]
    prompt = "".join(renderer.vocabulary.text(t) for t in example.ids[: example.prompt_length])
    # SmolLM2's template adds its default system message when there is none, as served.
    assert prompt.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_earlier_assistant_turns_are_trained_too(renderer: Renderer) -> None:
    entry = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "One?"},
            {"role": "assistant", "content": "1"},
            {"role": "user", "content": "Two?"},
            {"role": "assistant", "content": "2"},
        ]
    }
    example = renderer.example(entry)
    assert trained_text(renderer, example.ids, example.labels) == ["1<|im_end|>", "2<|im_end|>"]


def test_tool_calls_are_rendered_as_the_served_model_writes_them(renderer: Renderer) -> None:
    conversation = [{"role": "user", "content": "Weather in Oslo?"}, {"role": "assistant", "tool_calls": [CALL]}]
    auto = renderer.example({"messages": conversation, "tools": TOOLS})
    prompt = "".join(renderer.vocabulary.text(t) for t in auto.ids[: auto.prompt_length])
    assert "You can call the following tools" in prompt and '"name": "weather"' in prompt
    assert trained_text(renderer, auto.ids, auto.labels) == [
        '<tool_call>{"name": "weather", "arguments": {"city": "Oslo"}}</tool_call><|im_end|>'
    ]
    # Under tool_choice required the engine decodes the calls' JSON itself, without the tags.
    required = renderer.example({"messages": conversation, "tools": TOOLS, "tool_choice": "required"})
    assert trained_text(renderer, required.ids, required.labels) == [
        '[{"name": "weather", "arguments": {"city": "Oslo"}}]<|im_end|>'
    ]
    # Under tool_choice none the tools are not shown to the model, as served.
    none = renderer.example(
        {
            "messages": [conversation[0], {"role": "assistant", "content": "Sunny."}],
            "tools": TOOLS,
            "tool_choice": "none",
        }
    )
    assert "You can call" not in "".join(renderer.vocabulary.text(t) for t in none.ids)


def test_a_rejected_message_is_rendered_against_the_same_prompt(renderer: Renderer) -> None:
    entry = {
        "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
        "rejected_message": {"content": "Go away."},
    }
    example = renderer.example(entry)
    assert example.rejected is not None
    assert "".join(renderer.vocabulary.text(t) for t in example.rejected) == "Go away.<|im_end|>"
    assert "".join(renderer.vocabulary.text(t) for t in example.answer) == "Hello!<|im_end|>"


def test_entries_longer_than_the_limit_are_left_out(renderer: Renderer) -> None:
    short = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    long = {"messages": [{"role": "user", "content": "word " * 400}, {"role": "assistant", "content": "Hello"}]}
    kept, too_long = render_all(renderer, [short, long, short], max_length=200)
    assert len(kept) == 2 and too_long == 1


def test_an_entry_the_engine_would_refuse_is_an_error(renderer: Renderer) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}
    entry: dict[str, Any] = {
        "messages": [{"role": "user", "content": [image]}, {"role": "assistant", "content": "A cat."}]
    }
    with pytest.raises(InvalidRequestError, match="text only"):
        renderer.example(entry)


def test_the_prompt_has_as_many_tokens_as_the_server_counts(renderer: Renderer, client: openai.OpenAI) -> None:
    """The served engine's own count of prompt tokens for the same conversations."""
    conversations: list[dict[str, Any]] = [
        {"messages": [{"role": "user", "content": "Alice is 31 and lives in Paris."}]},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]},
        {"messages": [{"role": "user", "content": "Weather in Oslo?"}], "tools": TOOLS},
    ]
    for conversation in conversations:
        reply = client.chat.completions.create(model=MODEL, max_completion_tokens=1, **conversation)
        entry = {"messages": [*conversation["messages"], {"role": "assistant", "content": "x"}]}
        entry |= {"tools": conversation["tools"]} if "tools" in conversation else {}
        example = renderer.example(entry)
        assert reply.usage is not None and example.prompt_length == reply.usage.prompt_tokens
