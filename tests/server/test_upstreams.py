"""pipeserve in front of another pipeserve (an OpenAI-compatible upstream), through the whole pipeline: a
configured remote model, a provider's `prefix:<model>` route, fallbacks, upstream errors, logging and the
response cache, and a reload on SIGHUP, with the official `openai` client."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import MODEL, Server, free_port, start_server, stop_server

REMOTE = "remote-smol"


def upstream_config(upstream: Server, *, extra: str = "") -> str:
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    return f"""
[[models]]
id = "{REMOTE}"
engine = "openai"
base_url = "{upstream.v1}"
model = "{MODEL}"

[[models]]
id = "dead"
engine = "openai"
base_url = "{dead}"
max_attempts = 1
fallbacks = ["{REMOTE}"]

[[models]]
id = "dead-alone"
engine = "openai"
base_url = "{dead}"
max_attempts = 1

[[models]]
id = "limited"
engine = "openai"
base_url = "{upstream.v1}"
model = "{MODEL}"
fallbacks = ["{REMOTE}"]

[[rate_limits]]
model = "limited"
requests_per_minute = 1

[[providers]]
prefix = "up"
base_url = "{upstream.v1}"
{extra}
"""


@pytest.fixture(scope="module")
def front(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A pipeserve that serves no model itself: everything goes to the session's embedded-model server."""
    srv = start_server(tmp_path_factory.mktemp("front"), config=upstream_config(server))
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def client(front: Server) -> openai.OpenAI:
    return front.client()


HI = [{"role": "user", "content": "Say hi."}]
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}


def latest_log(front: Server) -> dict[str, Any]:
    response = httpx.get(f"{front.v1}/local-testing-only-get-latest-logged-call", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_a_remote_model_answers_with_the_upstreams_usage(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model=REMOTE, messages=HI, max_tokens=8, temperature=0)  # type: ignore[arg-type]
    assert completion.model == REMOTE
    [choice] = completion.choices
    assert choice.message.content and choice.finish_reason in ("stop", "length")
    assert completion.usage is not None and completion.usage.prompt_tokens > 0
    assert 0 < completion.usage.completion_tokens <= 8


def test_a_providers_route_passes_the_model_name_on(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model=f"up:{MODEL}", messages=HI, max_tokens=4)  # type: ignore[arg-type]
    assert completion.model == f"up:{MODEL}"
    assert completion.choices[0].message.content is not None


def test_models_lists_the_configured_ones_and_what_each_providers_upstream_serves(client: openai.OpenAI) -> None:
    names = [model.id for model in client.models.list()]
    assert names[:4] == [REMOTE, "dead", "dead-alone", "limited"]
    assert f"up:{MODEL}" in names
    assert client.models.retrieve(f"up:{MODEL}").id == f"up:{MODEL}"


def test_an_unknown_model_behind_a_provider_keeps_the_upstreams_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="up:no-such-model", messages=HI, max_tokens=4)  # type: ignore[arg-type]
    assert "no-such-model" in str(caught.value)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nowhere:gpt-4o", messages=HI, max_tokens=4)  # type: ignore[arg-type]


def test_an_upstream_400_keeps_its_message_and_status(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=REMOTE, messages=HI, max_tokens=10**6)  # type: ignore[arg-type]
    assert "context length" in str(caught.value)


def test_an_upstream_that_cant_be_reached_is_a_502_or_falls_back(client: openai.OpenAI, front: Server) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="dead-alone", messages=HI, max_tokens=4)  # type: ignore[arg-type]
    assert caught.value.status_code in (502, 503)
    completion = client.chat.completions.create(model="dead", messages=HI, max_tokens=4)  # type: ignore[arg-type]
    assert completion.model == REMOTE  # the model that answered
    health = httpx.get(f"{front.url}/health", timeout=10)
    assert health.status_code == 200  # an upstream that is down degrades this server; it stays in service


def test_a_models_rate_limit_sends_the_request_to_its_fallback_before_a_429(client: openai.OpenAI) -> None:
    answered = [
        client.chat.completions.create(model="limited", messages=HI, max_tokens=2).model  # type: ignore[arg-type]
        for _ in range(3)
    ]
    assert answered[0] == "limited" and answered[1:] == [REMOTE, REMOTE]


def test_a_stream_is_logged_as_the_client_received_it_with_the_same_call_ids(
    client: openai.OpenAI, front: Server
) -> None:
    stream = client.chat.completions.create(
        model=REMOTE,
        messages=[{"role": "user", "content": "Add 2 and 3."}],
        tools=[ADD],  # type: ignore[list-item]
        tool_choice="required",
        max_tokens=40,
        stream=True,
        extra_headers={"op-log-request": "true"},
    )
    chunks = list(stream)
    ids = [call.id for chunk in chunks for choice in chunk.choices for call in choice.delta.tool_calls or [] if call.id]
    assert ids, "the stream carried no tool call"
    assert chunks[0].choices[0].delta.role == "assistant"
    logged = latest_log(front)
    response = logged.get("respPayload") or logged.get("response") or {}
    logged_ids = [call["id"] for call in response["choices"][0]["message"]["tool_calls"]]
    assert logged_ids == ids


def test_json_schema_and_n_pass_through(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    completion = client.chat.completions.create(
        model=REMOTE,
        messages=HI,  # type: ignore[arg-type]
        n=2,
        max_tokens=20,
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}},
    )
    assert [c.index for c in completion.choices] == [0, 1]
    for choice in completion.choices:
        assert isinstance(json.loads(choice.message.content or ""), dict)


def test_the_response_cache_serves_a_remote_models_answer_again(client: openai.OpenAI) -> None:
    body: dict[str, Any] = {"model": REMOTE, "messages": [{"role": "user", "content": "Cache me."}], "max_tokens": 6}
    first = client.chat.completions.create(**body, extra_headers={"op-cache": "writeOnly"})
    again = client.chat.completions.create(**body, extra_headers={"op-cache": "readOnly"})
    assert again.id == first.id and again.choices[0].message.content == first.choices[0].message.content


def test_sighup_reloads_the_models_without_dropping_a_stream(server: Server, tmp_path: Path) -> None:
    front = start_server(tmp_path, config=upstream_config(server))
    try:
        client = front.client()
        stream = client.chat.completions.create(
            model=REMOTE,
            messages=[{"role": "user", "content": "Write a long story."}],
            max_tokens=60,
            stream=True,
        )
        first = next(iter(stream))
        extra = f'[[models]]\nid = "added"\nengine = "openai"\nbase_url = "{server.v1}"\nmodel = "{MODEL}"\n'
        (tmp_path / "pipeserve.toml").write_text(upstream_config(server, extra=extra))
        front.process.send_signal(signal.SIGHUP)
        rest = list(stream)
        assert first.choices[0].delta.role == "assistant"
        assert rest[-1].choices[0].finish_reason in ("stop", "length")
        deadline = time.monotonic() + 30
        names: list[str] = []
        while time.monotonic() < deadline and "added" not in names:
            names = [model.id for model in client.models.list()]
            time.sleep(0.2)
        assert "added" in names
        assert client.chat.completions.create(model="added", messages=HI, max_tokens=2).choices  # type: ignore[arg-type]
        criterion = {"name": "brief", "instructions": "PASS if short.", "judge_model": "added"}
        created = httpx.post(f"{front.v1}/criteria", json=criterion, timeout=30)
        assert created.status_code in (200, 201), created.text  # a judge served since the reload
    finally:
        stop_server(front)
