"""The long-context lane: a request too long for one sequence's window runs, beside the batch, in a context of
its own as long as the model's (SmolLM2: 8,192 tokens), instead of a 400."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

from tests.conftest import MODEL, Server
from tests.greedy import assert_same_greedy_path, path

WINDOW = 1024  # one sequence's window with the default config (16,384 cells, 16 sequences)


def _recipe(steps: int) -> list[dict[str, str]]:
    text = " ".join(f"Step {i}: mix the flour with water and stir well." for i in range(steps))
    return [{"role": "user", "content": text + "\nWhat is this text about? Answer in one sentence."}]


def test_a_prompt_longer_than_a_window_runs_on_an_idle_server(server: Server) -> None:
    reply = server.client().chat.completions.create(model=MODEL, messages=_recipe(150), max_tokens=16)
    assert reply.usage is not None and reply.usage.prompt_tokens > WINDOW + 500
    assert reply.choices[0].finish_reason in ("stop", "length") and reply.choices[0].message.content


def test_the_lane_answers_as_the_batch_does(server: Server) -> None:
    # ~660 prompt tokens: with 24 tokens out the request fits a window; with 600 it needs the lane. The same
    # greedy path, up to rounding (the lane prefills in other chunks): see tests/greedy.py.
    client = server.client()
    asked = {"model": MODEL, "messages": _recipe(45), "temperature": 0, "logprobs": True, "top_logprobs": 5}
    short = client.chat.completions.create(**asked, max_tokens=24)  # type: ignore[call-overload]
    long = client.chat.completions.create(**asked, max_tokens=600)  # type: ignore[call-overload]
    assert short.usage is not None and short.usage.prompt_tokens + 600 > WINDOW
    shared = assert_same_greedy_path(path(long.choices[0]), path(short.choices[0]))
    assert shared >= 4  # the lane reads the same prompt: it does not wander off at once


def test_without_max_tokens_a_long_prompt_gets_the_rest_of_the_model_context(server: Server) -> None:
    # Half a window or more of prompt: the answer may run to the model's context, in the lane.
    stream = server.client().chat.completions.create(
        model=MODEL, messages=_recipe(60), stream=True, stream_options={"include_usage": True}
    )
    usage = None
    for chunk in stream:
        usage = chunk.usage or usage
    assert usage is not None and usage.prompt_tokens > WINDOW // 2


async def test_long_requests_wait_their_turn_while_the_batch_keeps_serving(server: Server) -> None:
    client = server.async_client()

    async def long() -> str | None:
        reply = await client.chat.completions.create(model=MODEL, messages=_recipe(150), max_tokens=8)
        return reply.choices[0].finish_reason

    async def short() -> str | None:
        reply = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Say hi."}], max_tokens=8
        )
        return reply.choices[0].finish_reason

    results = await asyncio.gather(long(), long(), short(), short())
    assert all(finish in ("stop", "length") for finish in results)


def test_beyond_the_model_context_is_a_400(server: Server) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        server.client().chat.completions.create(model=MODEL, messages=_recipe(900), max_tokens=16)
    assert caught.value.code == "context_length_exceeded"
    assert "maximum context length is 8192 tokens" in str(caught.value)


def test_n_above_one_in_the_lane_is_a_400_naming_n(server: Server) -> None:
    body = {"model": MODEL, "messages": _recipe(150), "max_tokens": 8, "n": 2}
    response = httpx.post(f"{server.v1}/chat/completions", json=body, timeout=60)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "n"
    assert "long-context lane" in response.json()["error"]["message"]
