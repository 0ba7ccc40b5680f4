"""The chat pipeline over a scripted fake engine: completions, SSE streams, errors and cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import orjson
import pytest

from pipeserve.engines.base import Capabilities, Delta, Engine, EngineStats, Generation, TokenLogprob, TopToken
from pipeserve.errors import EngineError, ModelNotFoundError, PipeserveError
from pipeserve.params import ChatMessage, ChatParams, SamplingParams
from pipeserve.service.chat import ChatService
from pipeserve.service.models import ModelRegistry, ServedModel
from pipeserve.settings import ModelConfig

Step = list[Delta] | PipeserveError
PARAMS = ChatParams(model="fake", messages=(ChatMessage("user", "Hi"),))
DONE = b"data: [DONE]\n\n"


class FakeEngine(Engine):
    """Pushes one scripted step per loop turn; `finish` ends the generation after the last step."""

    def __init__(self, steps: list[Step], *, prompt_tokens: int = 10, cached: int = 4, finish: bool = True) -> None:
        self.steps = steps
        self.prompt_tokens = prompt_tokens
        self.cached = cached
        self.finish = finish
        self.stops: list[tuple[int | None, bool]] = []
        self.received: list[ChatParams] = []

    @property
    def context_window(self) -> int:
        return 1024

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def stats(self) -> EngineStats:
        return EngineStats(running_sequences=0, waiting_requests=0, kv_cells_used=0, kv_cells_total=0)

    async def generate(self, params: ChatParams) -> Generation:
        self.received.append(params)
        generation = Generation(self.prompt_tokens, lambda choice, keep: self.stops.append((choice, keep)))
        self.task = asyncio.create_task(self._feed(generation))
        return generation

    async def _feed(self, generation: Generation) -> None:
        for i, step in enumerate(self.steps):
            await asyncio.sleep(0)
            if isinstance(step, PipeserveError):
                generation.fail(step)
                return
            generation.push(step, self.cached, done=self.finish and i == len(self.steps) - 1)


def service(engine: FakeEngine) -> ChatService:
    config = ModelConfig(id="fake", aliases=["openpipe:fake"])
    return ChatService(ModelRegistry([ServedModel(config=config, engine=engine)]))


def d(index: int, text: str, tokens: int = 1, finish: str | None = None, **kw: Any) -> Delta:
    return Delta(index=index, text=text, tokens=tokens, finish_reason=finish, **kw)


async def collect(stream: AsyncIterator[bytes]) -> list[bytes]:
    async with asyncio.timeout(2):
        return [event async for event in stream]


def payloads(events: list[bytes]) -> list[dict[str, Any]]:
    assert events[-1] == DONE
    for event in events:
        assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    return [orjson.loads(event[6:]) for event in events[:-1]]


async def test_complete_assembles_content_finish_reason_and_usage() -> None:
    engine = FakeEngine([[d(0, "Hel", 2)], [d(0, "lo", 1, "length")]], prompt_tokens=10, cached=4)
    completion = await service(engine).complete(PARAMS)
    [choice] = completion.choices
    assert (choice.index, choice.message.role, choice.message.content) == (0, "assistant", "Hello")
    assert choice.finish_reason == "length"
    assert choice.logprobs is None
    usage = completion.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (10, 3, 13)
    assert usage.prompt_tokens_details.cached_tokens == 4
    assert (usage.prompt_cache_hit_tokens, usage.prompt_cache_miss_tokens) == (4, 6)
    assert usage.completion_tokens_details.text_tokens == 3
    assert completion.model == "fake"
    assert completion.id.startswith("chatcmpl-")
    assert completion.system_fingerprint is not None and completion.system_fingerprint.startswith("fp_")
    assert engine.received == [PARAMS]


async def test_cached_tokens_never_exceed_the_prompt() -> None:
    engine = FakeEngine([[d(0, "x", 1, "stop")]], prompt_tokens=5, cached=9)
    usage = (await service(engine).complete(PARAMS)).usage
    assert usage.prompt_tokens_details.cached_tokens == 5
    assert (usage.prompt_cache_hit_tokens, usage.prompt_cache_miss_tokens) == (5, 0)


async def test_alias_resolves_and_is_echoed() -> None:
    engine = FakeEngine([[d(0, "x", 1, "stop")]])
    completion = await service(engine).complete(replace(PARAMS, model="openpipe:fake"))
    assert completion.model == "openpipe:fake"


async def test_interleaved_choices() -> None:
    steps: list[Step] = [
        [d(0, "a"), d(1, "x")],
        [d(1, "y")],
        [d(0, "b", 1, "stop"), d(1, "z", 2, "length")],
    ]
    completion = await service(FakeEngine(steps)).complete(replace(PARAMS, n=2))
    assert [(c.index, c.message.content, c.finish_reason) for c in completion.choices] == [
        (0, "ab", "stop"),
        (1, "xyz", "length"),
    ]
    assert completion.usage.completion_tokens == 6


async def test_stop_string_stops_that_choice_and_drops_its_later_tokens() -> None:
    steps: list[Step] = [
        [d(0, "okST"), d(1, "b")],
        [d(0, "OP!"), d(1, "c")],
        [d(0, "late", 5), d(1, "d", 1, "stop")],
    ]
    engine = FakeEngine(steps)
    completion = await service(engine).complete(replace(PARAMS, n=2, stop=("STOP",)))
    assert [(c.message.content, c.finish_reason) for c in completion.choices] == [("ok", "stop"), ("bcd", "stop")]
    assert engine.stops == [(0, True), (None, True)]
    assert completion.usage.completion_tokens == 5


async def test_logprobs_in_a_completion() -> None:
    entry = TokenLogprob(token="Hi", bytes=b"Hi", logprob=-0.1, top=[TopToken(token="Yo", bytes=b"Yo", logprob=-2.0)])
    engine = FakeEngine([[d(0, "Hi", 1, "stop", logprobs=[entry])]])
    completion = await service(engine).complete(replace(PARAMS, logprobs=True, top_logprobs=1))
    logprobs = completion.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None
    assert logprobs.model_dump()["content"] == [
        {
            "token": "Hi",
            "bytes": [72, 105],
            "logprob": -0.1,
            "top_logprobs": [{"token": "Yo", "bytes": [89, 111], "logprob": -2.0}],
        }
    ]


async def test_engine_failure_raises_from_complete() -> None:
    engine = FakeEngine([[d(0, "a")], EngineError("boom")])
    with pytest.raises(EngineError, match="boom"):
        await service(engine).complete(PARAMS)


async def test_engine_ending_before_every_choice_finished_is_an_error() -> None:
    with pytest.raises(EngineError, match="before every choice finished"):
        await service(FakeEngine([[d(0, "a")]])).complete(PARAMS)


async def test_unknown_model_is_a_404() -> None:
    engine = FakeEngine([[d(0, "x", 1, "stop")]])
    for call in (service(engine).complete, service(engine).stream):
        with pytest.raises(ModelNotFoundError) as info:
            await call(replace(PARAMS, model="gpt-9"))
        assert (info.value.status_code, info.value.param, info.value.code) == (404, "model", "model_not_found")
    assert engine.received == []


async def test_stream_events_in_order() -> None:
    engine = FakeEngine([[d(0, "Hel", 1), d(1, "A")], [d(0, "lo", 1, "stop")], [d(1, "B", 1, "length")]])
    events = await collect(await service(engine).stream(replace(PARAMS, n=2, stream=True)))
    chunks = payloads(events)
    assert {c["id"] for c in chunks} == {chunks[0]["id"]}
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "fake" for c in chunks)
    assert all(c["usage"] is None for c in chunks)
    shown = [(c["choices"][0]["index"], c["choices"][0]["delta"], c["choices"][0]["finish_reason"]) for c in chunks]
    assert shown == [
        (0, {"role": "assistant", "content": ""}, None),
        (1, {"role": "assistant", "content": ""}, None),
        (0, {"content": "Hel"}, None),
        (1, {"content": "A"}, None),
        (0, {"content": "lo"}, None),
        (0, {}, "stop"),
        (1, {"content": "B"}, None),
        (1, {}, "length"),
    ]


async def test_stream_with_usage_and_a_stop_string() -> None:
    engine = FakeEngine([[d(0, "ab|")], [d(0, "|cd")]], prompt_tokens=7, cached=2, finish=False)
    params = replace(PARAMS, stream=True, include_usage=True, stop=("||",))
    chunks = payloads(await collect(await service(engine).stream(params)))
    assert [c["choices"][0]["delta"] for c in chunks[:-1]] == [
        {"role": "assistant", "content": ""},
        {"content": "ab"},
        {},
    ]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {
        "prompt_tokens": 7,
        "completion_tokens": 2,
        "total_tokens": 9,
        "prompt_tokens_details": {"cached_tokens": 2, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "text_tokens": 2,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
        "prompt_cache_hit_tokens": 2,
        "prompt_cache_miss_tokens": 5,
        "criteria": {},
    }
    assert engine.stops == [(0, True), (None, True)]


async def test_engine_failure_mid_stream_is_an_error_event_then_done() -> None:
    engine = FakeEngine([[d(0, "a")], EngineError("the engine broke")])
    events = await collect(await service(engine).stream(replace(PARAMS, stream=True)))
    assert events[-1] == DONE
    assert orjson.loads(events[1][6:])["choices"][0]["delta"] == {"content": "a"}
    assert orjson.loads(events[-2][6:]) == {
        "error": {"message": "the engine broke", "type": "server_error", "param": None, "code": "engine_error"}
    }
    assert len(events) == 4


async def test_unexpected_failure_mid_stream_is_an_error_event_then_done() -> None:
    events = await collect(await service(FakeEngine([[d(0, "a")], [d(3, "b")]])).stream(replace(PARAMS, stream=True)))
    error = orjson.loads(events[-2][6:])["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "engine_error" and error["message"].startswith("the stream failed")
    assert events[-1] == DONE


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_consumer_leaving_early_cancels_the_generation() -> None:
    engine = FakeEngine([[d(0, "a")], [d(0, "b")]], finish=False)
    stream = await service(engine).stream(replace(PARAMS, stream=True))
    chunks = aiter(stream)
    assert b'"role":"assistant"' in await anext(chunks)
    assert b'"content":"a"' in await anext(chunks)
    await stream.aclose()
    await settle()
    assert engine.stops == [(None, False)]


async def test_consumer_leaving_after_the_role_chunk_cancels_the_generation() -> None:
    engine = FakeEngine([[d(0, "a")]], finish=False)
    stream = await service(engine).stream(replace(PARAMS, stream=True))
    await anext(aiter(stream))
    await stream.aclose()
    await settle()
    assert engine.stops == [(None, False)]


async def test_a_stream_never_read_still_frees_its_generation() -> None:
    """A client that leaves before the response starts: the generator never ran, so no `finally` of its would."""
    engine = FakeEngine([[d(0, "a")]], finish=False)
    stream = await service(engine).stream(replace(PARAMS, stream=True))
    await stream.aclose()
    await settle()
    assert engine.stops == [(None, False)]


class PlainEngine(FakeEngine):
    capabilities = Capabilities(logprobs=False, seed=False, logit_bias=False, structured_output=False)


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"logprobs": True}, "logprobs"),
        ({"sampling": SamplingParams(seed=3)}, "seed"),
        ({"sampling": SamplingParams(logit_bias=((1, 5.0),))}, "logit_bias"),
        ({"constraint": {"type": "object"}}, "response_format"),
    ],
)
async def test_fields_an_engine_cannot_honour_are_a_400(change: dict[str, Any], param: str) -> None:
    engine = PlainEngine([[d(0, "a", finish="stop")]])
    with pytest.raises(PipeserveError) as caught:
        await service(engine).complete(replace(PARAMS, **change))
    assert caught.value.status_code == 400 and caught.value.param == param
    assert engine.received == []
    assert (await service(PlainEngine([[d(0, "a", finish="stop")]])).complete(PARAMS)).choices[0].message.content == "a"
