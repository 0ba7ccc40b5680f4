"""The response cache: `op-cache` writeOnly/readOnly/readWrite, streams replayed, scoped, expiring."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import MODEL, Server, start_server, stop_server
from tests.server.test_request_log import logged_with


@pytest.fixture(scope="module")
def cached(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("cache"), config="cache_ttl_seconds = 3\n")
    yield server
    stop_server(server)


def ask(content: str, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 6} | extra


def post(server: Server, body: dict[str, Any], cache: str | None, **headers: str) -> httpx.Response:
    if cache is not None:
        headers["op-cache"] = cache
    return httpx.post(f"{server.v1}/chat/completions", json=body, headers=headers, timeout=60)


def sse_chunks(response: httpx.Response) -> list[dict[str, Any]]:
    lines = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def test_write_only_then_read_only_hits(cached: Server) -> None:
    body = ask(f"Tell me about {uuid.uuid4().hex}", temperature=1.0)
    first = post(cached, body, "writeOnly").json()
    again = post(cached, body, "readOnly").json()
    assert again == first  # the stored completion, id included
    run = uuid.uuid4().hex
    post(cached, body | {"metadata": {"run": run}}, "readOnly")  # metadata doesn't change the output
    [row] = logged_with(cached, "run", run)
    assert row["cache_hit"] == 1
    assert row["resp_payload"] == first


def test_read_only_misses_store_nothing(cached: Server) -> None:
    body = ask(f"Something new {uuid.uuid4().hex}", temperature=1.0, seed=None)
    miss = post(cached, body, "readOnly").json()
    miss_again = post(cached, body, "readOnly").json()
    assert miss["id"] != miss_again["id"]


def test_read_write_stores_on_a_miss_and_serves_after(cached: Server) -> None:
    body = ask(f"About {uuid.uuid4().hex}", temperature=1.0)
    first = post(cached, body, "readWrite").json()
    assert post(cached, body, "readWrite").json() == first
    assert post(cached, body, None).json()["id"] != first["id"]  # no header: no cache


@pytest.mark.parametrize(
    "change",
    [
        {"temperature": 0.5},
        {"max_tokens": 7},
        {"top_p": 0.9},
        {"seed": 3},
        {"messages": [{"role": "user", "content": "another question"}]},
        {"response_format": {"type": "json_object"}},
        {"logprobs": True},
    ],
)
def test_anything_that_changes_the_output_changes_the_key(cached: Server, change: dict[str, Any]) -> None:
    body = ask(f"Key {uuid.uuid4().hex}", temperature=1.0)
    first = post(cached, body, "writeOnly").json()
    other = post(cached, body | change, "readOnly").json()
    assert other["id"] != first["id"]


def test_a_model_alias_shares_the_entry(cached: Server) -> None:
    body = ask(f"Alias {uuid.uuid4().hex}")
    first = post(cached, body, "writeOnly").json()
    assert post(cached, body | {"model": "openpipe:smollm2-135m-instruct"}, "readOnly").json()["id"] == first["id"]


def test_a_cached_completion_streams_as_chunks_the_sdk_assembles(cached: Server) -> None:
    content = f"Stream {uuid.uuid4().hex}"
    body = ask(content, logprobs=True, top_logprobs=1)
    first = post(cached, body, "writeOnly").json()
    client = cached.client()
    with client.chat.completions.stream(
        model=MODEL,
        messages=body["messages"],
        max_tokens=6,
        logprobs=True,
        top_logprobs=1,
        extra_headers={"op-cache": "readOnly"},
        stream_options={"include_usage": True},
    ) as stream:
        for _ in stream:
            pass
        replayed = stream.current_completion_snapshot
    assert replayed.id == first["id"]
    choice = replayed.choices[0]
    assert choice.message.content == first["choices"][0]["message"]["content"]
    assert choice.finish_reason == first["choices"][0]["finish_reason"]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    assert [t.token for t in choice.logprobs.content] == [
        t["token"] for t in first["choices"][0]["logprobs"]["content"]
    ]
    assert replayed.usage is not None and replayed.usage.completion_tokens == first["usage"]["completion_tokens"]


def test_a_streamed_miss_is_stored_for_plain_requests(cached: Server) -> None:
    body = ask(f"Streamed {uuid.uuid4().hex}", temperature=1.0)
    chunks = sse_chunks(post(cached, body | {"stream": True}, "writeOnly"))
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    hit = post(cached, body, "readOnly").json()
    assert hit["id"] == chunks[0]["id"]
    assert hit["choices"][0]["message"]["content"] == text
    assert hit["usage"]["completion_tokens"] > 0  # stored with usage even though the stream had none


def test_tool_calls_replay(cached: Server) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            },
        }
    ]
    # a fixed seed: the replay is under test, not whether a sampled call happens to fit its budget
    body = ask(f"Weather in Paris? {uuid.uuid4().hex}", tools=tools, tool_choice="required", max_tokens=60, seed=1)
    first = post(cached, body, "writeOnly").json()
    assert first["choices"][0]["message"]["tool_calls"]
    with cached.client().chat.completions.stream(
        model=MODEL,
        messages=body["messages"],
        max_tokens=60,
        seed=1,
        tools=tools,  # type: ignore[arg-type]
        tool_choice="required",
        extra_headers={"op-cache": "readOnly"},
    ) as stream:
        for _ in stream:
            pass
        replayed = stream.current_completion_snapshot
    calls = replayed.choices[0].message.tool_calls
    assert calls is not None
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == [
        (c["id"], c["function"]["name"], c["function"]["arguments"])
        for c in first["choices"][0]["message"]["tool_calls"]
    ]
    assert replayed.choices[0].finish_reason == first["choices"][0]["finish_reason"]


def test_entries_expire(cached: Server) -> None:
    body = ask(f"Expiring {uuid.uuid4().hex}", temperature=1.0)
    first = post(cached, body, "writeOnly").json()
    assert post(cached, body, "readOnly").json()["id"] == first["id"]
    time.sleep(3.2)
    assert post(cached, body, "readOnly").json()["id"] != first["id"]


def test_the_cache_on_postgresql(pg_server: Server) -> None:
    body = ask(f"On PostgreSQL {uuid.uuid4().hex}", temperature=1.0)
    first = post(pg_server, body, "writeOnly").json()
    second = post(pg_server, body, "writeOnly").json()  # overwrites the entry (an upsert)
    assert second["id"] != first["id"]
    assert post(pg_server, body, "readOnly").json() == second
