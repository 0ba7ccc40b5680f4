"""Legacy `functions` through an upstream engine, with the real server and the official `openai` client.

The upstream is given the functions as tools and may answer with content and a call together, which a legacy
answer never is: clients that merge a stream onto its first chunk (the `openpipe` SDK) fail on a
`function_call` that follows content. Whatever the upstream says first decides the answer."""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import Server, start_server, stop_server
from tests.fake_openai import FakeUpstream, Reply, serving

WEATHER = {
    "name": "get_weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
CALL = ("get_weather", ['{"city": ', '"Paris"}'])


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    yield from (upstreams[0] for upstreams in serving(1))


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory, fake: FakeUpstream) -> Iterator[Server]:
    config = f"""
[[models]]
id = "scripted"
engine = "openai"
base_url = "{fake.url}"
max_attempts = 1
"""
    server = start_server(tmp_path_factory.mktemp("legacy"), config=config)
    yield server
    stop_server(server)


@pytest.fixture(autouse=True)
def fresh(fake: FakeUpstream) -> None:
    fake.reset()


def ask(front: Server, *, stream: bool) -> tuple[str, Any]:
    run = uuid.uuid4().hex
    answer = front.client().chat.completions.create(
        model="scripted",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        functions=[WEATHER],  # type: ignore[list-item]
        stream=stream,
        metadata={"run": run},
    )
    return run, list(answer) if stream else answer  # type: ignore[arg-type]


def logged(server: Server, run: str) -> dict[str, Any]:
    conn = sqlite3.connect(server.data_dir / "pipeserve.db")
    try:
        rows = conn.execute("SELECT resp_payload, meta FROM logs").fetchall()
    finally:
        conn.close()
    [payload] = [r[0] for r in rows if json.loads(r[1]).get("run") == run]
    return json.loads(payload)["choices"][0]


@pytest.mark.parametrize("stream", [True, False])
def test_content_before_a_call_keeps_the_answer_content(front: Server, fake: FakeUpstream, stream: bool) -> None:
    fake.script(Reply(pieces=["Let me ", "check."], tool_calls=[CALL], finish="tool_calls"))
    run, answer = ask(front, stream=stream)
    if stream:
        deltas = [chunk.choices[0].delta for chunk in answer if chunk.choices]
        assert deltas[0].role == "assistant" and deltas[0].content == "Let me "
        assert all(delta.function_call is None and delta.tool_calls is None for delta in deltas)
        assert [c.choices[0].finish_reason for c in answer if c.choices][-1] == "stop"
    else:
        message = answer.choices[0].message
        assert (message.content, message.function_call, answer.choices[0].finish_reason) == (
            "Let me check.",
            None,
            "stop",
        )
    choice = logged(front, run)
    assert choice["message"]["content"] == "Let me check." and choice["message"].get("function_call") is None
    assert choice["finish_reason"] == "stop"


@pytest.mark.parametrize("stream", [True, False])
def test_a_call_after_whitespace_is_the_answer(front: Server, fake: FakeUpstream, stream: bool) -> None:
    fake.script(Reply(pieces=["\n"], tool_calls=[CALL], finish="tool_calls"))
    run, answer = ask(front, stream=stream)
    if stream:
        deltas = [chunk.choices[0].delta for chunk in answer if chunk.choices]
        assert deltas[0].role == "assistant"
        assert deltas[0].function_call is not None and deltas[0].function_call.name == "get_weather"
        assert all(not delta.content for delta in deltas)
        arguments = "".join(d.function_call.arguments or "" for d in deltas if d.function_call is not None)
        assert json.loads(arguments) == {"city": "Paris"}
    else:
        message = answer.choices[0].message
        assert message.content is None and message.function_call is not None
        assert json.loads(message.function_call.arguments) == {"city": "Paris"}
    choice = logged(front, run)
    assert choice["finish_reason"] == "function_call"
    assert choice["message"]["function_call"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert not choice["message"].get("content")
