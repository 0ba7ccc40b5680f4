"""pipeserve in front of llama.cpp's own `llama-server` (built once under build/ from the sources of the installed
llama-cpp-python, as bench/serving.py builds it), serving the embedded model: an OpenAI-compatible upstream that
pipeserve did not write, through the whole pipeline with the official `openai` client."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import openai
import pytest

from pipeserve.engines.llamacpp.options import embedded_gguf_path
from tests.conftest import MODEL, Server, free_port, start_server, stop_server

ROOT = Path(__file__).resolve().parents[2]
UPSTREAM = "via-llama-server"


def _serving() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_serving", ROOT / "bench" / "serving.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = _serving().ensure_llama_server(ROOT / "build" / "llama-server")
    port = free_port()
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    command = [str(binary), "-m", str(embedded_gguf_path()), "--alias", MODEL, "-c", "4096", "-np", "4"]
    command += ["-t", "1", "--no-repack", "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, "llama-server did not start"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        yield f"{url}/v1"
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def front(llama_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    config = f"""
[[models]]
id = "{UPSTREAM}"
engine = "openai"
base_url = "{llama_server}"
model = "{MODEL}"
max_tokens_field = "max_tokens"
supports_n = false
"""
    srv = start_server(tmp_path_factory.mktemp("llama-server-front"), config=config)
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def client(front: Server) -> openai.OpenAI:
    return front.client()


HI = [{"role": "user", "content": "Say hi."}]


def test_an_answer_with_its_usage_and_logprobs(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=UPSTREAM,
        messages=HI,  # type: ignore[arg-type]
        max_tokens=8,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    [choice] = completion.choices
    assert choice.message.content and choice.finish_reason in ("stop", "length")
    assert completion.usage is not None and completion.usage.prompt_tokens > 0
    assert choice.logprobs is not None and choice.logprobs.content
    assert len(choice.logprobs.content[0].top_logprobs) == 2


def test_a_stream_merges_to_what_is_logged(client: openai.OpenAI, front: Server) -> None:
    chunks = list(
        client.chat.completions.create(
            model=UPSTREAM,
            messages=HI,  # type: ignore[arg-type]
            max_tokens=12,
            stream=True,
            extra_headers={"op-log-request": "true"},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    logged = httpx.get(f"{front.v1}/local-testing-only-get-latest-logged-call", timeout=10).json()
    assert logged["respPayload"]["choices"][0]["message"]["content"] == text


def test_json_object_and_n_by_fan_out(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=UPSTREAM,
        messages=[{"role": "user", "content": "Give me a JSON object with a name."}],
        max_tokens=40,
        n=2,
        response_format={"type": "json_object"},
    )
    assert [c.index for c in completion.choices] == [0, 1]
    for choice in completion.choices:
        if choice.finish_reason == "stop":
            assert isinstance(json.loads(choice.message.content or ""), dict)
