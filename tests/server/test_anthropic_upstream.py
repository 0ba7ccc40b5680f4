"""pipeserve in front of Anthropic's Messages API (the fake server, answering in the `anthropic` SDK's shapes),
through the whole pipeline with the official `openai` client: answers, streamed tool calls logged with the ids
the client got, a provider's `anthropic:<model>` route, and fields Anthropic can't honour."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import Server, start_server, stop_server
from tests.fake_anthropic import Exchange, FakeAnthropic, reply, text, tool_use

KEY_ENV = "FAKE_ANTHROPIC_TEST_KEY"  # not PIPESERVE_*: the test server's environment keeps it


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeAnthropic]:
    server = FakeAnthropic().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def front(fake: FakeAnthropic, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    config = f"""
[[models]]
id = "claude"
engine = "anthropic"
base_url = "{fake.url}"
api_key_env = "{KEY_ENV}"
model = "claude-test"

[[providers]]
prefix = "anthropic"
base_url = "{fake.url}"
api_key_env = "{KEY_ENV}"
"""
    os.environ[KEY_ENV] = "sk-ant-test-secret"
    try:
        srv = start_server(tmp_path_factory.mktemp("anthropic-front"), config=config)
    finally:
        del os.environ[KEY_ENV]
    yield srv
    stop_server(srv)


@pytest.fixture
def client(front: Server, fake: FakeAnthropic) -> Iterator[openai.OpenAI]:
    fake.reset()
    yield front.client()
    fake.reset()


def answer(fake: FakeAnthropic, events: list[Any]) -> None:
    fake.responder = lambda body: Exchange(events=events)


def test_an_answer_and_its_usage_come_back_in_openais_shape(client: openai.OpenAI, fake: FakeAnthropic) -> None:
    answer(fake, reply(text("Hello", " there."), input_tokens=21, output_tokens=4, cache_read=5))
    completion = client.chat.completions.create(
        model="claude",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        max_tokens=50,
    )
    assert completion.choices[0].message.content == "Hello there."
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens == 4
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 5
    sent = fake.last
    assert sent["model"] == "claude-test" and sent["system"] == "Be brief." and sent["max_tokens"] == 50


def test_a_streamed_tool_call_is_logged_with_the_ids_the_client_got(
    client: openai.OpenAI, fake: FakeAnthropic, front: Server
) -> None:
    answer(fake, reply(tool_use("toolu_01A", "add", '{"a": 2', ', "b": 3}'), stop_reason="tool_use"))
    tool: Any = {"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}
    chunks = list(
        client.chat.completions.create(
            model="claude",
            messages=[{"role": "user", "content": "Add 2 and 3."}],
            tools=[tool],
            stream=True,
            extra_headers={"op-log-request": "true"},
        )
    )
    calls = [call for chunk in chunks for choice in chunk.choices for call in choice.delta.tool_calls or []]
    assert calls[0].id and calls[0].function is not None and calls[0].function.name == "add"
    assert "".join(c.function.arguments or "" for c in calls if c.function) == '{"a": 2, "b": 3}'
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    logged = httpx.get(f"{front.v1}/local-testing-only-get-latest-logged-call", timeout=10).json()
    message = logged["respPayload"]["choices"][0]["message"]
    assert [call["id"] for call in message["tool_calls"]] == [calls[0].id]


def test_a_providers_route_asks_anthropic_for_the_named_model(client: openai.OpenAI, fake: FakeAnthropic) -> None:
    answer(fake, reply(text("Hi")))
    completion = client.chat.completions.create(
        model="anthropic:claude-3-5-haiku-latest", messages=[{"role": "user", "content": "Hi"}], max_tokens=5
    )
    assert completion.model == "anthropic:claude-3-5-haiku-latest"
    assert fake.last["model"] == "claude-3-5-haiku-latest"


def test_fields_anthropic_cant_honour_are_a_400_naming_them(client: openai.OpenAI, fake: FakeAnthropic) -> None:
    for field, value in (("logprobs", True), ("seed", 3)):
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(
                model="claude", messages=[{"role": "user", "content": "Hi"}], max_tokens=5, **{field: value}
            )
        assert caught.value.body is not None and caught.value.body["param"] == field  # type: ignore[index]
    assert fake.received == []


def test_an_anthropic_overload_is_a_502_and_its_rate_limit_a_429(client: openai.OpenAI, fake: FakeAnthropic) -> None:
    from tests.fake_anthropic import failure

    fake.responder = lambda body: failure(529, "overloaded_error", "Overloaded")
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "Hi"}], max_tokens=5)
    assert caught.value.status_code == 502
    fake.responder = lambda body: failure(429, "rate_limit_error", "Slow down", {"retry-after": "0"})
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "Hi"}], max_tokens=5)
