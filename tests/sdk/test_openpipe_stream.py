"""Streams merged by the `openpipe` SDK (5.0.0): its OpenAI wrapper merges every chunk onto the first to report
the completion, so the first chunk must carry what later ones add to (a legacy function call's name, a tool
call's head), as OpenAI's streams do. The same holds through pipeserve in front of another pipeserve (an
upstream engine), whose chunks pass through."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from tests.conftest import MODEL, Server, start_server, stop_server
from tests.sdk.test_openpipe_sdk import sdk_python
from tests.server.test_upstreams import REMOTE, upstream_config

ADD_PARAMETERS = {
    "type": "object",
    "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
    "required": ["a", "b"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module", params=["embedded", "upstream"])
def target(
    request: pytest.FixtureRequest, server: Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, str]]:
    """The embedded model's server, or a pipeserve whose model is that server's, as an upstream engine."""
    if request.param == "embedded":
        yield server, MODEL
        return
    front = start_server(tmp_path_factory.mktemp("sdk-front"), config=upstream_config(server))
    yield front, REMOTE
    stop_server(front)


@pytest.fixture(scope="module")
def streamed(target: tuple[Server, str]) -> dict[str, Any]:
    server, model = target
    run = uuid.uuid4().hex
    result = subprocess.run(
        [
            str(sdk_python()),
            str(Path(__file__).with_name("openpipe_stream_flow.py")),
            f"{server.url}/api/v1",
            run,
            model,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    return {"run": run, **json.loads(result.stdout.strip().splitlines()[-1])}


@pytest.mark.parametrize("case", ["legacy_named", "legacy_auto", "tools_required", "tools_auto", "text"])
def test_the_sdk_merges_every_stream(streamed: dict[str, Any], case: str) -> None:
    result = streamed[case]
    assert "error" not in result, result.get("error")
    assert result["first"]["role"] == "assistant"


def test_a_legacy_function_call_merges_onto_its_first_chunk(streamed: dict[str, Any]) -> None:
    first, merged = streamed["legacy_named"]["first"], streamed["legacy_named"]["merged"]
    assert first["function_call"] == {"name": "add", "arguments": ""}
    assert "content" not in first
    assert merged["finish_reason"] == "function_call"
    assert merged["message"]["function_call"]["name"] == "add"
    jsonschema.validate(json.loads(merged["message"]["function_call"]["arguments"]), ADD_PARAMETERS)


def test_a_legacy_auto_answer_merges_as_a_function_call_or_as_content(streamed: dict[str, Any]) -> None:
    first, merged = streamed["legacy_auto"]["first"], streamed["legacy_auto"]["merged"]
    message = merged["message"]
    if "function_call" in message:
        assert first["function_call"]["name"] == message["function_call"]["name"] == "get_weather"
        assert merged["finish_reason"] == "function_call" and not message.get("content")
    else:
        assert first["content"] and message["content"].startswith(first["content"])


def test_tool_calls_merge_onto_the_first_chunk(streamed: dict[str, Any]) -> None:
    first, merged = streamed["tools_required"]["first"], streamed["tools_required"]["merged"]
    [head] = first["tool_calls"]
    assert head["index"] == 0 and head["id"].startswith("call_") and head["function"]["arguments"] == ""
    calls = merged["message"]["tool_calls"]
    assert calls[0]["id"] == head["id"] and calls[0]["function"]["name"] == head["function"]["name"]
    assert merged["finish_reason"] in ("tool_calls", "length")
    for call in calls[:-1] if merged["finish_reason"] == "length" else calls:
        json.loads(call["function"]["arguments"])


def test_the_reported_completions_are_the_merged_ones(target: tuple[Server, str], streamed: dict[str, Any]) -> None:
    server, _ = target
    response = httpx.get(f"{server.v1}/logs", params={"metadata.run": streamed["run"], "limit": "100"}, timeout=30)
    assert response.status_code == 200, response.text
    reported = {
        log["request"]["metadata"]["case"]: log["response"]
        for log in response.json()["data"]
        if log["source"] == "report"
    }
    named = reported["legacy_named"]["choices"][0]["message"]["function_call"]
    assert named == streamed["legacy_named"]["merged"]["message"]["function_call"]
    assert reported["tools_required"]["choices"][0]["message"]["tool_calls"][0]["function"]["name"] in (
        "add",
        "get_weather",
    )
