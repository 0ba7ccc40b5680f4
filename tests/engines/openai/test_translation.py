"""ChatParams to the upstream's request: every field of the contract passes on, as the fake receives it."""

from __future__ import annotations

from pipeserve.params import ChatMessage, ChatParams, ResponseFormat, SamplingParams, ToolCall, ToolSpec
from tests.engines.openai.conftest import MODEL, engine_for, generate, params
from tests.fake_openai import FakeUpstream

WEATHER = ToolSpec("weather", "The weather in a city.", {"type": "object", "properties": {"city": {"type": "string"}}})


async def test_every_field_passes_on(fake: FakeUpstream) -> None:
    request = ChatParams(
        model=MODEL,
        messages=(
            ChatMessage("system", "Be brief."),
            ChatMessage("user", "Weather in Paris?", name="ann"),
            ChatMessage(
                "assistant", "", tool_calls=(ToolCall("call_1", "weather", '{"city": "Paris"}'),), reasoning="hm"
            ),
            ChatMessage("tool", "sunny", tool_call_id="call_1"),
        ),
        n=2,
        max_tokens=50,
        sampling=SamplingParams(
            temperature=0.3, top_p=0.9, presence_penalty=0.5, frequency_penalty=0.25, seed=7, logit_bias=((42, -5.0),)
        ),
        stop=("END",),
        logprobs=True,
        top_logprobs=3,
        user="u-1",
        metadata={"team": "a"},
        store=True,
        tools=(WEATHER,),
        tool_choice="named",
        tool_name="weather",
        parallel_tool_calls=False,
        response_format=ResponseFormat("json_schema", {"type": "object"}, "answer", "An answer", True),
        passthrough={"reasoning_effort": "low", "service_tier": "flex"},
        stream=True,
        include_usage=False,
    )
    async with engine_for(fake.url) as engine:
        await generate(engine, request)
    assert fake.received[0].body == {
        "reasoning_effort": "low",
        "service_tier": "flex",
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Paris?", "name": "ann"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "content": "sunny", "tool_call_id": "call_1"},
        ],
        "n": 2,
        "max_completion_tokens": 50,
        "max_tokens": 50,
        "temperature": 0.3,
        "top_p": 0.9,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.25,
        "seed": 7,
        "logit_bias": {"42": -5.0},
        "stop": ["END"],
        "logprobs": True,
        "top_logprobs": 3,
        "tools": [
            {
                "type": "function",
                "function": {"name": "weather", "parameters": WEATHER.parameters, "description": WEATHER.description},
            }
        ],
        "tool_choice": {"type": "function", "function": {"name": "weather"}},
        "parallel_tool_calls": False,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": {"type": "object"}, "description": "An answer", "strict": True},
        },
        "user": "u-1",
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def test_defaults_are_left_to_the_upstream(fake: FakeUpstream) -> None:
    async with engine_for(fake.url, model="upstream-name") as engine:
        await generate(engine, params("Hi"))
    # A plain request asks for a plain answer.
    assert fake.received[0].body == {"model": "upstream-name", "messages": [{"role": "user", "content": "Hi"}]}


async def test_max_tokens_field_and_tool_choice_kinds(fake: FakeUpstream) -> None:
    async with engine_for(fake.url, max_tokens_field="max_tokens") as engine:
        await generate(engine, params(max_tokens=5, tools=(WEATHER,), tool_choice="required"))
        await generate(engine, params(response_format=ResponseFormat("json_object")))
    first, second = (r.body for r in fake.received)
    assert first["max_tokens"] == 5 and "max_completion_tokens" not in first
    assert first["tool_choice"] == "required" and first["parallel_tool_calls"] is True
    assert second["response_format"] == {"type": "json_object"} and "tools" not in second


async def test_legacy_function_results_answer_the_call_they_follow(fake: FakeUpstream) -> None:
    messages = (
        ChatMessage("user", "Weather?"),
        ChatMessage("assistant", "", tool_calls=(ToolCall("call_function", "weather", "{}"),)),
        ChatMessage("function", "sunny", name="weather"),
    )
    async with engine_for(fake.url) as engine:
        await generate(engine, params(*messages, tools=(WEATHER,), tool_choice="auto", legacy_functions=True))
    sent = fake.received[0].body["messages"]
    assert sent[2] == {"role": "tool", "tool_call_id": "call_function", "content": "sunny"}
    assert fake.received[0].body["tool_choice"] == "auto"


async def test_the_key_is_sent_and_never_shown(fake: FakeUpstream, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    secret = "sk-very-secret-value"
    monkeypatch.setenv("FAKE_UPSTREAM_KEY", secret)
    async with engine_for(fake.url, api_key_env="FAKE_UPSTREAM_KEY", headers={"X-Team": "t1"}) as engine:
        await generate(engine)
        assert secret not in repr(engine)
        assert secret not in repr(engine.options) and secret not in engine.options.model_dump_json()  # type: ignore[attr-defined]
    headers = fake.received[0].headers
    assert headers["authorization"] == f"Bearer {secret}"
    assert headers["x-team"] == "t1"


async def test_extra_body_goes_under_the_requests_own_fields(fake: FakeUpstream) -> None:
    extra = {"top_k": 20, "chat_template_kwargs": {"enable_thinking": False}, "seed": 1, "service_tier": "auto"}
    async with engine_for(fake.url, extra_body=extra) as engine:
        await generate(engine, params(sampling=SamplingParams(seed=5), passthrough={"service_tier": "flex"}))
    body = fake.received[0].body
    assert body["top_k"] == 20 and body["chat_template_kwargs"] == {"enable_thinking": False}
    assert (body["seed"], body["service_tier"]) == (5, "flex")


def test_the_affinity_text_leaves_out_the_last_message_which_each_request_brings_anew() -> None:
    from pipeserve.engines.openai.translate import affinity_text

    system = {"role": "system", "content": "You are a helpful assistant. " * 10}
    one = affinity_text({"messages": [system, {"role": "user", "content": "What is 2+2?"}]}, 2048)
    other = affinity_text({"messages": [system, {"role": "user", "content": "Name a colour."}]}, 2048)
    assert one == other and "2+2" not in one
    alone = affinity_text({"messages": [{"role": "user", "content": "Hi"}]}, 2048)
    assert "Hi" in alone  # a single message is all there is to go by
    assert len(affinity_text({"messages": [system] * 50 + [{"role": "user", "content": "x"}]}, 100)) == 100
