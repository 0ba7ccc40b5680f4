"""The upstream's answer to typed deltas and usage: reasoning under either name, tool-call fragments,
logprobs with and without bytes, finish reasons, usage (cached and reasoning tokens, or none at all)."""

from __future__ import annotations

import json

import pytest

from pipeserve.engines.base import ToolCallFragment
from pipeserve.errors import UpstreamError
from pipeserve.params import SamplingParams
from tests.engines.openai.conftest import collect, engine_for, generate, params
from tests.fake_openai import FakeUpstream, Reply


def chunk(delta: dict, finish: str | None = None, index: int = 0) -> str:  # type: ignore[type-arg]
    return json.dumps(
        {"object": "chat.completion.chunk", "choices": [{"index": index, "delta": delta, "finish_reason": finish}]}
    )


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
async def test_reasoning_under_either_name(fake: FakeUpstream, field: str) -> None:
    fake.script(Reply(reasoning=["Let me", " think"], reasoning_field=field, pieces=["42"]))
    async with engine_for(fake.url) as engine:
        answer = await generate(engine)
    assert answer.reasoning() == "Let me think"
    assert answer.content() == "42"
    assert answer.finish() == "stop"


async def test_tool_calls_arrive_as_fragments(fake: FakeUpstream) -> None:
    fake.script(
        Reply(pieces=[], tool_calls=[("weather", ['{"city"', ': "Paris"}']), ("time", ["{}"])], finish="tool_calls")
    )
    async with engine_for(fake.url) as engine:
        answer = await generate(engine)
    fragments = [f for d in answer.deltas for f in d.tool_calls]
    assert fragments == [
        ToolCallFragment(0, "call_0", "weather", ""),
        ToolCallFragment(0, None, None, '{"city"'),
        ToolCallFragment(0, None, None, ': "Paris"}'),
        ToolCallFragment(1, "call_1", "time", ""),
        ToolCallFragment(1, None, None, "{}"),
    ]
    assert answer.finish() == "tool_calls"


async def test_a_legacy_function_call_is_a_tool_call(fake: FakeUpstream) -> None:
    events = [
        chunk({"role": "assistant", "function_call": {"name": "weather", "arguments": ""}}),
        chunk({"function_call": {"arguments": "{}"}}),
        chunk({}, "function_call"),
    ]
    fake.script(Reply(events=events))
    async with engine_for(fake.url) as engine:
        answer = await generate(engine)
    fragments = [f for d in answer.deltas for f in d.tool_calls]
    assert fragments == [ToolCallFragment(0, "call_function", "weather", ""), ToolCallFragment(0, None, None, "{}")]
    assert answer.finish() == "tool_calls"


@pytest.mark.parametrize(("upstream", "ours"), [("length", "length"), ("eos", "stop"), ("something_new", "stop")])
async def test_finish_reasons_are_mapped(fake: FakeUpstream, upstream: str, ours: str) -> None:
    fake.script(Reply(finish=upstream))
    async with engine_for(fake.url) as engine:
        assert (await generate(engine)).finish() == ours


@pytest.mark.parametrize("with_bytes", [True, False])
async def test_logprobs_with_or_without_bytes(fake: FakeUpstream, with_bytes: bool) -> None:
    fake.script(Reply(pieces=["caf\u00e9", "!"], logprobs=True, logprob_bytes=with_bytes))
    async with engine_for(fake.url) as engine:
        answer = await generate(engine, params(logprobs=True, top_logprobs=1))
    tokens = [lp for d in answer.deltas for lp in d.logprobs or []]
    assert [(t.token, t.bytes, t.logprob) for t in tokens] == [
        ("caf\u00e9", "caf\u00e9".encode(), -0.5),
        ("!", b"!", -0.5),
    ]
    assert [(t.top[0].token, t.top[0].bytes) for t in tokens] == [("caf\u00e9", "caf\u00e9".encode()), ("!", b"!")]


async def test_usage_with_cached_and_reasoning_tokens(fake: FakeUpstream) -> None:
    usage = {
        "prompt_tokens": 30,
        "completion_tokens": 12,
        "total_tokens": 42,
        "prompt_tokens_details": {"cached_tokens": 16},
        "completion_tokens_details": {"reasoning_tokens": 5},
    }
    fake.script(Reply(usage=usage))
    async with engine_for(fake.url) as engine:
        answer = await generate(engine)
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (30, 12)
    assert (answer.usage.cached_tokens, answer.usage.reasoning_tokens) == (16, 5)


async def test_deepseek_style_cache_hits(fake: FakeUpstream) -> None:
    fake.script(Reply(usage={"prompt_tokens": 30, "completion_tokens": 2, "prompt_cache_hit_tokens": 24}))
    async with engine_for(fake.url) as engine:
        assert (await generate(engine)).usage.cached_tokens == 24


async def test_without_usage_completion_tokens_are_counted_from_chunks(fake: FakeUpstream) -> None:
    fake.script(Reply(pieces=["a", "b", "c"], reasoning=["r"], usage=None))
    async with engine_for(fake.url) as engine:
        answer = await generate(engine)
    assert answer.content() == "abc"
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.reasoning_tokens) == (0, 4, 1)


async def test_an_upstream_that_ignores_stream_answers_whole(fake: FakeUpstream) -> None:
    fake.script(Reply(whole=True, pieces=["all", " at once"], reasoning=["hmm"], reasoning_field="reasoning"))
    async with engine_for(fake.url) as engine:
        answer = await generate(engine)
    assert (answer.content(), answer.reasoning(), answer.finish()) == ("all at once", "hmm", "stop")
    assert answer.usage.completion_tokens == 3


async def test_n_choices_of_one_stream_keep_their_indices(fake: FakeUpstream) -> None:
    async with engine_for(fake.url) as engine:
        answer = await generate(engine, params(n=3))
    assert fake.received[0].body["n"] == 3
    assert [answer.content(i) for i in range(3)] == ["Hello world"] * 3
    assert [answer.finish(i) for i in range(3)] == ["stop"] * 3
    assert answer.usage.completion_tokens == 6


async def test_without_n_support_choices_fan_out(fakes: list[FakeUpstream]) -> None:
    nless = fakes[1]
    nless.honour_n = False
    try:
        nless.default = Reply(
            usage={"prompt_tokens": 10, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 4}}
        )
        async with engine_for(nless.url, supports_n=False) as engine:
            answer = await generate(engine, params(n=3, sampling=SamplingParams(seed=7)))
    finally:
        nless.honour_n = True
    bodies = [r.body for r in nless.received]
    assert len(bodies) == 3 and all("n" not in b for b in bodies)
    assert sorted(b["seed"] for b in bodies) == [7, 8, 9]
    assert [answer.content(i) for i in range(3)] == ["Hello world"] * 3
    assert [answer.finish(i) for i in range(3)] == ["stop"] * 3
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.cached_tokens) == (10, 6, 4)


async def test_usage_is_final_when_the_last_choice_finishes(fake: FakeUpstream) -> None:
    """The pipeline stops the generation as soon as every choice has finished, then reads the usage: the
    upstream's usage chunk (sent after the finishes) must already count by then."""
    usage = {"prompt_tokens": 21, "completion_tokens": 8, "total_tokens": 29}
    fake.script(Reply(pieces=["a", "b"], usage=usage, delay_chunks=0.05))
    async with engine_for(fake.url) as engine:
        generation = await engine.generate(params(n=2))
        finished: set[int] = set()
        async for step in generation:
            finished |= {d.index for d in step if d.finish_reason}
            if finished == {0, 1}:
                generation.stop(keep_cache=True)
                break
        assert (generation.usage.prompt_tokens, generation.usage.completion_tokens) == (21, 8)


async def test_finishes_come_last_once_each_and_are_made_up_when_missing(fake: FakeUpstream) -> None:
    events = [
        chunk({"content": "a"}, index=0),
        chunk({"content": "b"}, index=1),
        chunk({}, "stop", index=0),
        chunk({"content": "late"}, index=0),  # after its finish: dropped
        chunk({}, "stop", index=0),  # a second finish: dropped
        chunk({"content": "c"}, index=1),  # choice 1 never gets a finish, but the stream ends with [DONE]
        chunk({"content": "ghost"}, index=5),  # a choice nobody asked for
    ]
    fake.script(Reply(events=events))
    async with engine_for(fake.url) as engine:
        answer = await generate(engine, params(n=2))
    assert (answer.content(0), answer.content(1)) == ("a", "bc")
    finishes = [(d.index, d.finish_reason) for d in answer.deltas if d.finish_reason]
    assert sorted(finishes) == [(0, "stop"), (1, "stop")]
    assert all(d.finish_reason for d in answer.deltas[-2:])  # the finishes are the last deltas
    assert answer.indices() == {0, 1}


async def test_a_refusal_is_kept_as_content(fake: FakeUpstream) -> None:
    fake.script(Reply(events=[chunk({"role": "assistant", "refusal": "I can't help with that."}), chunk({}, "stop")]))
    async with engine_for(fake.url) as engine:
        assert (await generate(engine)).content() == "I can't help with that."


async def test_an_upstream_that_ignores_n_is_told_apart_from_an_empty_answer(fakes: list[FakeUpstream]) -> None:
    nless = fakes[1]
    nless.honour_n = False
    nless.default = Reply(finish="stop")
    try:
        async with engine_for(nless.url) as engine:
            generation = await engine.generate(params(n=2))
            with pytest.raises(UpstreamError, match=r"answered 1 of the 2 choices.*supports_n = false"):
                await collect(generation)
    finally:
        nless.honour_n = True


async def test_an_empty_answer_still_finishes(fake: FakeUpstream) -> None:
    fake.script(Reply(pieces=[], finish="stop"))
    async with engine_for(fake.url) as engine:
        answer = await generate(engine)
    assert (answer.content(), answer.finish()) == ("", "stop")
