"""The batching engine under load: concurrent streams, disconnects, a full queue."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import openai
import pytest

from tests.conftest import MODEL, Server, start_server, stop_server
from tests.greedy import TOLERANCE, assert_same_greedy_path

TOPICS = [
    "ocean",
    "cat",
    "mountain",
    "coffee",
    "train",
    "moon",
    "rain",
    "book",
    "music",
    "garden",
    "winter",
    "bread",
    "river",
    "owl",
    "clock",
    "star",
]


def wait_until_idle(server: Server, timeout: float = 10.0) -> dict:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    while True:
        model = server.health()["models"][0]
        if model["running_sequences"] == 0 and model["waiting_requests"] == 0:
            return model  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, f"engine still busy: {model}"
        time.sleep(0.05)


def _messages(topic: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Write three sentences about the {topic}."}]


async def test_sixteen_concurrent_streams_all_finish_correctly(server: Server) -> None:
    """Each stream, batched with 15 others, computes what the same request computes alone.

    Batching changes floating-point rounding, so greedy texts may part ways at a near-tie; up to there the
    tokens and their log-probabilities must agree, and the first token's distribution always must.
    """
    client = server.async_client()
    alone = {}
    for topic in TOPICS:
        response = await client.chat.completions.create(
            model=MODEL, messages=_messages(topic), max_tokens=40, temperature=0, logprobs=True, top_logprobs=3
        )
        alone[topic] = response.choices[0].logprobs.content  # type: ignore[union-attr]
    peak = 0
    done = False

    async def watch() -> None:
        nonlocal peak
        async with httpx.AsyncClient() as http:
            while not done:
                stats = (await http.get(f"{server.url}/health")).json()["models"][0]
                peak = max(peak, stats["running_sequences"])
                await asyncio.sleep(0.02)

    async def one(topic: str) -> tuple[list, str | None, openai.types.CompletionUsage | None]:  # type: ignore[type-arg]
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=_messages(topic),
            max_tokens=40,
            temperature=0,
            logprobs=True,
            top_logprobs=3,
            stream=True,
            stream_options={"include_usage": True},
        )
        entries, finish, usage = [], None, None
        async for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                entries += choice.logprobs.content if choice.logprobs and choice.logprobs.content else []
                finish = choice.finish_reason or finish
        return entries, finish, usage

    watcher = asyncio.create_task(watch())
    results = await asyncio.gather(*(one(topic) for topic in TOPICS))
    done = True
    await watcher
    assert peak >= 8, f"the engine never ran requests together (peak {peak})"
    for topic, (entries, finish, usage) in zip(TOPICS, results, strict=True):
        reference = alone[topic]
        assert finish in ("stop", "length")
        assert usage is not None and len(entries) <= usage.completion_tokens <= 40
        assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
        first = {t.token: t.logprob for t in entries[0].top_logprobs}
        for candidate in reference[0].top_logprobs:
            if candidate.token in first:
                assert abs(first[candidate.token] - candidate.logprob) < TOLERANCE, topic
        assert_same_greedy_path([e.model_dump() for e in entries], [e.model_dump() for e in reference])
    wait_until_idle(server)


def test_disconnect_mid_stream_frees_the_sequence(server: Server) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Write a very long essay about the history of bread."}],
        "max_tokens": 900,
        "stream": True,
    }
    with httpx.stream("POST", f"{server.v1}/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        received = [next(lines) for _ in range(10)]
        assert any(line.startswith("data: {") for line in received)
        assert server.health()["models"][0]["running_sequences"] == 1
    wait_until_idle(server, timeout=5)
    # the server goes on serving
    response = server.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
    )
    assert response.choices[0].message.content is not None


def test_disconnect_of_a_plain_request_cancels_it(server: Server) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Write a very long essay about the history of clocks."}],
        "max_tokens": 900,
        "n": 2,
    }
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.v1}/chat/completions", json=body, timeout=httpx.Timeout(60, read=1.0))
    wait_until_idle(server, timeout=5)


@pytest.fixture(scope="module")
def small_server(tmp_path_factory: pytest.TempPathFactory) -> Server:
    config = """
max_queued_requests = 0

[[models]]
id = "tiny"
engine = "llamacpp"
max_sequences = 16
context_size = 8192
long_context = 0  # no long-context lane: the window is the limit
"""
    server = start_server(tmp_path_factory.mktemp("small"), config=config)
    yield server  # type: ignore[misc]
    stop_server(server)


def test_full_queue_answers_429_with_retry_after(small_server: Server) -> None:
    assert [m["id"] for m in small_server.health()["models"]] == ["tiny"]
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "Write a long essay about rivers."}],
        "max_tokens": 400,
        "n": 16,
        "stream": True,
    }
    with httpx.stream("POST", f"{small_server.v1}/chat/completions", json=body, timeout=60) as busy:
        assert busy.status_code == 200
        lines = busy.iter_lines()  # kept: dropping the iterator would close the stream
        next(lines)
        second = httpx.post(
            f"{small_server.v1}/chat/completions",
            json={"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
            timeout=30,
        )
        assert second.status_code == 429
        assert second.headers["retry-after"] == "1"
        assert second.json()["error"]["type"] == "rate_limit_error"
    wait_until_idle(small_server)
    third = httpx.post(
        f"{small_server.v1}/chat/completions",
        json={"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
        timeout=30,
    )
    assert third.status_code == 200


def test_completion_beyond_the_sequence_window_is_a_400(small_server: Server) -> None:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4000, "n": 16}
    response = httpx.post(f"{small_server.v1}/chat/completions", json=body, timeout=30)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"
    assert "maximum context length is 512 tokens" in response.json()["error"]["message"]


async def test_requests_arriving_together_compute_a_shared_prefix_once(server: Server) -> None:
    client = server.async_client()
    catalogue = " ".join(f"item-{i}-{uuid.uuid4().hex[:4]}" for i in range(70))
    system = {"role": "system", "content": f"You answer questions about this catalogue: {catalogue}"}

    async def ask(i: int) -> openai.types.CompletionUsage:
        response = await client.chat.completions.create(
            model=MODEL,
            messages=[system, {"role": "user", "content": f"Question {i}: what is item {i}?"}],  # type: ignore[list-item]
            max_tokens=4,
        )
        assert response.usage is not None
        return response.usage

    usages = await asyncio.gather(*(ask(i) for i in range(8)))
    prefix = min(u.prompt_tokens for u in usages) - 20
    cached = sorted(u.prompt_tokens_details.cached_tokens for u in usages)  # type: ignore[union-attr]
    # one request computes the catalogue; the seven others reuse its KV entries
    assert cached[0] < 20 and all(c >= prefix for c in cached[1:]), (prefix, cached)
    wait_until_idle(server)


def test_prompts_that_share_only_a_template_opening_keep_each_others_cached_prefix(server: Server) -> None:
    """Two kinds of prompt, alternating: each finds its own earlier prompt still cached, because a request
    that shares only the template's first tokens with an idle sequence does not run in it (and throw its
    cached prompt away) while other sequences are free."""
    run = uuid.uuid4().hex
    systems = {kind: f"You are assistant {kind}-{run}. " + f"Answer about {kind} only. " * 30 for kind in "xy"}

    def cached(kind: str, question: int) -> tuple[int, int]:
        response = httpx.post(
            f"{server.v1}/chat/completions",
            json={
                "model": MODEL,
                "messages": [
                    {"role": "system", "content": systems[kind]},
                    {"role": "user", "content": f"Question {question}?"},
                ],
                "max_tokens": 1,
            },
            timeout=60,
        )
        usage = response.json()["usage"]
        return usage["prompt_tokens_details"]["cached_tokens"], usage["prompt_tokens"]

    for kind in "xy":
        cached(kind, 0)
    for question in (1, 2):
        for kind in "xy":
            hit, prompt = cached(kind, question)
            assert hit >= prompt - 12, (kind, question, hit, prompt)  # all but the question's few tokens
