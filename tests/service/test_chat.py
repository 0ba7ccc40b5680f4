"""The chat pipeline over scripted fake engines: completions, SSE streams, errors and cancellation.

`FakeEngine` scripts text as the llama.cpp engine's scheduler produces it, read by that engine's own
`TextGeneration` (stop strings, finish handling); `TypedEngine` scripts typed deltas as a remote engine
reports them (tool-call fragments, reasoning, usage)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable
from dataclasses import replace
from typing import Any

import orjson
import pytest

from pipeserve.engines.base import (
    Capabilities,
    Delta,
    Engine,
    EngineStats,
    Generation,
    TokenLogprob,
    ToolCallFragment,
    TopToken,
    Usage,
)
from pipeserve.engines.llamacpp.output import TextGeneration
from pipeserve.engines.llamacpp.slots import TextDelta
from pipeserve.errors import EngineError, ModelNotFoundError, PipeserveError
from pipeserve.params import ChatMessage, ChatParams, ResponseFormat, SamplingParams, ToolSpec
from pipeserve.protocol import chat_completions as wire
from pipeserve.service.chat import ChatService
from pipeserve.service.models import ModelRegistry, ServedModel
from pipeserve.settings import ModelConfig

Step = list[TextDelta] | PipeserveError
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
        self.think: tuple[str, str] | None = None  # a reasoning model's think tags

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
        generation = TextGeneration(params, lambda choice, keep: self.stops.append((choice, keep)), self.think)
        generation.usage.prompt_tokens = self.prompt_tokens
        self.task = asyncio.create_task(self._feed(generation))
        return generation

    async def _feed(self, generation: TextGeneration) -> None:
        for i, step in enumerate(self.steps):
            await asyncio.sleep(0)
            if isinstance(step, PipeserveError):
                generation.fail(step)
                return
            generation.push_text(step, self.cached, done=self.finish and i == len(self.steps) - 1)


class TypedEngine(FakeEngine):
    """Pushes scripted typed deltas, then the usage the engine reports, as a remote engine does."""

    def __init__(self, steps: list[list[Delta] | PipeserveError], *, usage: Usage | None = None) -> None:
        super().__init__([])
        self.typed = steps
        self.reported = usage or Usage(prompt_tokens=12, completion_tokens=5, cached_tokens=8, reasoning_tokens=2)

    async def generate(self, params: ChatParams) -> Generation:
        self.received.append(params)
        generation = Generation(0, lambda choice, keep: self.stops.append((choice, keep)))
        self.task = asyncio.create_task(self._push(generation))
        return generation

    async def _push(self, generation: Generation) -> None:
        for i, step in enumerate(self.typed):
            await asyncio.sleep(0)
            if isinstance(step, PipeserveError):
                generation.fail(step)
                return
            if i == len(self.typed) - 1:
                generation.usage = self.reported
            generation.push(step, done=i == len(self.typed) - 1)


def service(engine: FakeEngine) -> ChatService:
    config = ModelConfig(id="fake", aliases=["openpipe:fake"])
    return ChatService(ModelRegistry([ServedModel(config=config, engine=engine)]))


def d(index: int, text: str, tokens: int = 1, finish: str | None = None, **kw: Any) -> TextDelta:
    return TextDelta(index=index, text=text, tokens=tokens, finish_reason=finish, **kw)


async def collect(stream: AsyncIterable[bytes]) -> list[bytes]:
    """The stream's events, one by one (a write may carry several)."""
    async with asyncio.timeout(2):
        writes = [write async for write in stream]
    return [event + b"\n\n" for write in writes for event in write.split(b"\n\n")[:-1]]


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


async def test_a_delta_for_no_running_choice_is_an_error_event_then_done() -> None:
    engine = TypedEngine([[Delta(0, content="a")], [Delta(3, content="b")]])
    events = await collect(await service(engine).stream(replace(PARAMS, stream=True)))
    error = orjson.loads(events[-2][6:])["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "engine_error" and "choice 3" in error["message"]
    assert events[-1] == DONE


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_consumer_leaving_early_cancels_the_generation() -> None:
    engine = FakeEngine([[d(0, "a")], [d(0, "b")]], finish=False)
    stream = await service(engine).stream(replace(PARAMS, stream=True))
    chunks = aiter(stream)
    first = await anext(chunks)  # the role goes out with the first step
    assert b'"role":"assistant"' in first and b'"content":"a"' in first
    assert b'"content":"b"' in await anext(chunks)
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
        ({"response_format": ResponseFormat("json_object")}, "response_format"),
    ],
)
async def test_fields_an_engine_cannot_honour_are_a_400(change: dict[str, Any], param: str) -> None:
    engine = PlainEngine([[d(0, "a", finish="stop")]])
    with pytest.raises(PipeserveError) as caught:
        await service(engine).complete(replace(PARAMS, **change))
    assert caught.value.status_code == 400 and caught.value.param == param
    assert engine.received == []
    assert (await service(PlainEngine([[d(0, "a", finish="stop")]])).complete(PARAMS)).choices[0].message.content == "a"


ADD = ToolSpec("add", None, {"type": "object"})
CALL_STEPS: list[list[Delta] | PipeserveError] = [
    [Delta(0, reasoning="Adding.")],
    [Delta(0, tool_calls=[ToolCallFragment(0, "call_1", "add", "")])],
    [Delta(0, tool_calls=[ToolCallFragment(0, arguments='{"a":')])],
    [Delta(0, tool_calls=[ToolCallFragment(0, arguments="1}"), ToolCallFragment(1, "call_2", "add", "{}")])],
    [Delta(0, finish_reason="tool_calls")],
]


async def test_typed_tool_call_fragments_make_the_message_and_the_engines_usage_is_reported() -> None:
    params = replace(PARAMS, tools=(ADD,), tool_choice="auto")
    completion = await service(TypedEngine(CALL_STEPS)).complete(params)
    [choice] = completion.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None and choice.message.reasoning_content == "Adding."
    assert choice.message.tool_calls is not None
    calls = [(c.id, c.function.name, c.function.arguments) for c in choice.message.tool_calls]
    assert calls == [("call_1", "add", '{"a":1}'), ("call_2", "add", "{}")]
    usage = completion.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.prompt_tokens_details.cached_tokens) == (12, 5, 8)
    assert usage.completion_tokens_details.reasoning_tokens == 2


async def test_a_stream_of_typed_fragments_merges_to_the_plain_message() -> None:
    params = replace(PARAMS, tools=(ADD,), tool_choice="auto", stream=True)
    chunks = payloads(await collect(await service(TypedEngine(CALL_STEPS)).stream(params)))
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0] == {"role": "assistant", "reasoning_content": "Adding."}
    assert deltas[1] == {
        "tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "add", "arguments": ""}}]
    }
    assert deltas[2] == {"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_a_legacy_functions_request_gets_its_call_as_function_call() -> None:
    params = replace(PARAMS, tools=(ADD,), tool_choice="auto", legacy_functions=True, parallel_tool_calls=False)
    steps = [step for step in CALL_STEPS if not (isinstance(step, list) and len(step[0].tool_calls) > 1)]
    steps.insert(-1, [Delta(0, tool_calls=[ToolCallFragment(0, arguments="1}")])])
    completion = await service(TypedEngine(steps)).complete(params)
    [choice] = completion.choices
    assert choice.finish_reason == "function_call" and choice.message.tool_calls is None
    assert choice.message.function_call is not None
    assert (choice.message.function_call.name, choice.message.function_call.arguments) == ("add", '{"a":1}')
    chunks = payloads(await collect(await service(TypedEngine(steps)).stream(replace(params, stream=True))))
    heads = [c["choices"][0]["delta"].get("function_call") for c in chunks]
    assert heads[1] == {"name": "add", "arguments": ""}
    assert chunks[-1]["choices"][0]["finish_reason"] == "function_call"


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"tools": (ADD,), "tool_choice": "auto"}, "tools"),
        ({"n": 3}, "n"),
        ({"passthrough": {"service_tier": "flex"}}, "service_tier"),
    ],
)
async def test_capabilities_an_engine_lacks_are_a_400_naming_the_field(change: dict[str, Any], param: str) -> None:
    class NoTools(TypedEngine):
        capabilities = Capabilities(tools=False, max_n=2)

    engine = NoTools(CALL_STEPS)
    with pytest.raises(PipeserveError) as caught:
        await service(engine).complete(replace(PARAMS, **change))
    assert caught.value.status_code == 400 and caught.value.param == param
    assert engine.received == []


TRICKY_TEXT = [
    "plain",
    'a "quoted" \\ path',
    "line\nbreak\ttab\r",
    "\x00\x1f\x7f",
    "é 漢字 🎉",
    "\u2028\u2029",
    "</script>",
]


@pytest.mark.parametrize("reasoning", [False, True])
async def test_text_chunks_are_byte_for_byte_the_wire_models_chunks(reasoning: bool) -> None:
    """Text chunks skip the models (`_Run.text_chunk`): what they send must be what the models would."""
    steps: list[list[Delta] | PipeserveError] = [
        [Delta(i % 2, reasoning=text) if reasoning else Delta(i % 2, content=text)]
        for i, text in enumerate(TRICKY_TEXT)
    ]
    steps.append([Delta(0, finish_reason="stop"), Delta(1, finish_reason="stop")])
    params = replace(PARAMS, n=2, stream=True, model="openpipe:fake")
    chat = service(TypedEngine(steps))
    run = await chat._start(params, None, None)
    events = await collect(chat._stream(run, None, None))
    texts = events[2:-3]  # after both choices' role chunks, before the finishes and [DONE]
    assert len(texts) == len(TRICKY_TEXT)
    name = "reasoning_content" if reasoning else "content"
    for i, (event, text) in enumerate(zip(texts, TRICKY_TEXT, strict=True)):
        choice = wire.ChunkChoice(index=i % 2, delta=wire.ChunkDelta.model_validate({name: text}))
        model = wire.ChatCompletionChunk(
            id=run.id, created=run.created, model="openpipe:fake", choices=[choice], system_fingerprint=run.fingerprint
        )
        assert event == b"data: " + model.model_dump_json().encode() + b"\n\n"
        assert orjson.loads(event[6:])["choices"][0]["delta"] == {name: text}


async def test_chunks_of_several_choices_and_the_usage_chunk_are_the_wire_models_chunks() -> None:
    chat = service(TypedEngine([[Delta(0, finish_reason="stop")]]))
    run = await chat._start(replace(PARAMS, n=2, stream=True), None, None)
    choices = [
        wire.ChunkChoice(index=0, delta=wire.ChunkDelta(role="assistant", content="")),
        wire.ChunkChoice(index=1, delta=wire.ChunkDelta(), finish_reason="stop"),
    ]
    usage = run.usage()
    for chosen, counted in [(choices, None), (choices[1:], None), ([], usage)]:
        model = wire.ChatCompletionChunk(
            id=run.id,
            created=run.created,
            model="fake",
            choices=chosen,
            usage=counted,
            system_fingerprint=run.fingerprint,
        )
        assert run.chunk(chosen, counted) == b"data: " + model.model_dump_json().encode() + b"\n\n"


@pytest.mark.parametrize("finish", [None, "stop", "length", "tool_calls"])
async def test_opening_and_bare_finish_chunks_are_the_wire_models_chunks(finish: str | None) -> None:
    """Openings and bare finishes come from cached bytes (`_bare_choice`): they must be what the models write."""
    chat = service(TypedEngine([[Delta(0, finish_reason="stop")]]))
    run = await chat._start(replace(PARAMS, stream=True), None, None)
    delta = wire.ChunkDelta(role="assistant", content="") if finish is None else wire.ChunkDelta()
    choice = wire.ChunkChoice(index=3, delta=delta, finish_reason=finish)  # type: ignore[arg-type]
    assert run.bare_chunk(3, finish) == run.chunk([choice])


async def test_what_arrived_together_goes_out_in_one_write_and_the_usage_with_done() -> None:
    """Steps queued while the pipeline was busy are one write, with the role chunk; the usage chunk, `[DONE]`
    and nothing after are the last write; the events are those the same steps give one by one."""

    class AllAtOnce(TypedEngine):
        async def _push(self, generation: Generation) -> None:
            generation.usage = self.reported
            for i, step in enumerate(self.typed):
                assert not isinstance(step, PipeserveError)
                generation.push(step, done=i == len(self.typed) - 1)

    typed: list[list[Delta] | PipeserveError] = [
        [Delta(0, content="Hel")],
        [Delta(0, content="lo")],
        [Delta(0, content="!", finish_reason="stop")],
    ]
    params = replace(PARAMS, stream=True, include_usage=True)
    together = service(AllAtOnce(typed))
    run = await together._start(params, None, None)
    writes = [write async for write in together._stream(run, None, None)]
    assert len(writes) == 2  # the role, the content and the finish; the usage and [DONE]
    assert writes[-1].endswith(b"\n\n" + DONE) and b'"usage":{' in writes[-1]
    one_by_one = await collect(await service(TypedEngine(typed)).stream(params))
    events = [event + b"\n\n" for write in writes for event in write.split(b"\n\n")[:-1]]
    assert [strip_ids(e) for e in events] == [strip_ids(e) for e in one_by_one]


def strip_ids(event: bytes) -> Any:
    if event == DONE:
        return event
    payload = orjson.loads(event[6:])
    return {k: v for k, v in payload.items() if k not in ("id", "created")}
