"""Per-sequence KV streams: each choice's window, prefix reuse across streams, n > 1 siblings."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import httpx
import pytest
from pydantic import ValidationError

from pipeserve.engines.llamacpp.options import LlamaCppOptions
from tests.conftest import Server, start_server, stop_server
from tests.engines.llamacpp.test_batching import wait_until_idle
from tests.greedy import TOLERANCE, assert_same_greedy_path, path

MODEL = "four"
CONFIG = f"""
[[models]]
id = "{MODEL}"
engine = "llamacpp"
max_sequences = 4
context_size = 2048
long_context = 0  # no long-context lane: the window is each request's limit here
"""
WINDOW = 512


@pytest.fixture(scope="module")
def four(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("four"), config=CONFIG)
    yield server
    stop_server(server)


def post(server: Server, body: dict) -> httpx.Response:  # type: ignore[type-arg]
    return httpx.post(f"{server.v1}/chat/completions", json={"model": MODEL, **body}, timeout=120)


def system_prompt() -> dict[str, str]:
    catalogue = " ".join(f"item-{i}-{uuid.uuid4().hex[:4]}" for i in range(40))
    return {"role": "system", "content": f"You answer questions about this catalogue: {catalogue}"}


def first_logprobs(response: httpx.Response, choice: int = 0) -> dict[str, float]:
    entry = response.json()["choices"][choice]["logprobs"]["content"][0]
    return {alternative["token"]: alternative["logprob"] for alternative in entry["top_logprobs"]}


def assert_close(mine: dict[str, float], reference: dict[str, float]) -> None:
    shared = mine.keys() & reference.keys()
    assert shared, (mine, reference)
    for token in shared:
        assert abs(mine[token] - reference[token]) < TOLERANCE, (token, mine, reference)


def test_options_size_the_streams() -> None:
    assert LlamaCppOptions().window == 1024
    assert LlamaCppOptions(sequence_window=2048, max_sequences=4).total_cells == 8192
    with pytest.raises(ValidationError, match="set only one"):
        LlamaCppOptions(sequence_window=2048, context_size=4096, max_sequences=4)
    with pytest.raises(ValidationError, match="fewer than 64"):
        LlamaCppOptions(context_size=1024, max_sequences=32)


def test_health_and_models_report_the_window(four: Server) -> None:
    stats = four.health()["models"][0]
    assert stats["kv_cells_total"] == 2048
    models = httpx.get(f"{four.v1}/models", timeout=10).json()["data"]
    assert [m.get("context_window") for m in models] == [WINDOW]


def test_a_request_beyond_its_window_is_a_400_that_says_how_to_fix_it(four: Server) -> None:
    hello = [{"role": "user", "content": "Hi"}]
    response = post(four, {"messages": hello, "max_tokens": WINDOW})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert error["param"] == "messages"
    assert f"maximum context length is {WINDOW} tokens" in error["message"]
    assert "max_sequences" in error["message"] and "context_size" in error["message"]
    long_prompt = [{"role": "user", "content": "hello " * 600}]
    response = post(four, {"messages": long_prompt})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"
    # what fits runs to the end of its window
    response = post(four, {"messages": hello, "max_tokens": WINDOW - 40, "temperature": 0})
    assert response.status_code == 200, response.text
    usage = response.json()["usage"]
    assert usage["prompt_tokens"] + usage["completion_tokens"] <= WINDOW
    wait_until_idle(four)


def test_more_choices_than_sequences_is_a_400(four: Server) -> None:
    response = post(four, {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "n": 5})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "n"
    assert "max_sequences" in response.json()["error"]["message"]


def test_choices_share_the_prompt_kv(four: Server) -> None:
    """n=3 prefills once and copies the prompt's stream to the two siblings: all three see the prompt."""
    messages = [system_prompt(), {"role": "user", "content": "What is item 3?"}]
    body = {"messages": messages, "max_tokens": 6, "temperature": 0, "logprobs": True, "top_logprobs": 3}
    alone = post(four, body)
    wait_until_idle(four)
    together = post(four, {**body, "n": 3})
    assert together.status_code == 200, together.text
    reference = first_logprobs(alone)
    choices = together.json()["choices"]
    for choice in range(3):
        assert_close(first_logprobs(together, choice), reference)
        # greedy siblings over the same prompt KV agree (up to rounding in the batch they decode in)
        assert_same_greedy_path(path(choices[choice]), path(choices[0]))
    wait_until_idle(four)


def test_a_finished_sequence_is_a_prefix_cache_for_the_next_request(four: Server) -> None:
    system = system_prompt()
    first = post(four, {"messages": [system, {"role": "user", "content": "What is item 1?"}], "max_tokens": 4})
    wait_until_idle(four)
    second = post(four, {"messages": [system, {"role": "user", "content": "What is item 2?"}], "max_tokens": 4})
    prompt = first.json()["usage"]["prompt_tokens"]
    cached = second.json()["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert prompt - 20 <= cached < prompt, (prompt, cached)
    wait_until_idle(four)


async def test_a_prefix_is_copied_from_a_running_sequence_without_its_tail(four: Server) -> None:
    """The copy takes the whole stream of the running sequence, then drops what the new prompt doesn't share."""
    system = system_prompt()
    question = [system, {"role": "user", "content": "What is item 7?"}]
    body = {"max_tokens": 6, "temperature": 0, "logprobs": True, "top_logprobs": 3}
    reference = post(four, {"messages": question, **body})
    wait_until_idle(four)
    # The long request takes over the reference's idle stream (it shares the system prompt), so the second
    # ask finds the system prompt only in the long request's running stream.
    async with httpx.AsyncClient(timeout=120) as client:
        long_one = asyncio.create_task(
            client.post(
                f"{four.v1}/chat/completions",
                json={
                    "model": MODEL,
                    "messages": [system, {"role": "user", "content": "Describe every item at length."}],
                    "max_tokens": WINDOW - 400,  # the prompt takes ~370 tokens of the window
                    "temperature": 0,
                },
            )
        )
        while four.health()["models"][0]["running_sequences"] == 0:
            assert not long_one.done(), (await long_one).text
            await asyncio.sleep(0.02)
        again = await asyncio.to_thread(post, four, {"messages": question, **body})
        assert not long_one.done()  # it was running while its stream was copied
        assert (await long_one).status_code == 200
    usage = again.json()["usage"]
    assert usage["prompt_tokens_details"]["cached_tokens"] >= usage["prompt_tokens"] - 20
    assert_close(first_logprobs(again), first_logprobs(reference))
    # Computed from a copied prefix while another sequence decodes beside it: the same greedy path as alone,
    # up to batched rounding (tests/greedy.py). A tail left over from the long request would show as a
    # different first-token distribution above, or whole nats apart here.
    assert_same_greedy_path(path(again.json()["choices"][0]), path(reference.json()["choices"][0]))
    wait_until_idle(four)


async def test_more_requests_than_sequences_queue_and_all_finish(four: Server) -> None:
    async with httpx.AsyncClient(timeout=120) as client:
        responses = await asyncio.gather(
            *(
                client.post(
                    f"{four.v1}/chat/completions",
                    json={
                        "model": MODEL,
                        "messages": [{"role": "user", "content": f"Count to {i}."}],
                        "max_tokens": 12,
                        "n": 1 + i % 2,
                    },
                )
                for i in range(10)
            )
        )
    assert [r.status_code for r in responses] == [200] * 10
    assert [len(r.json()["choices"]) for r in responses] == [1 + i % 2 for i in range(10)]
    wait_until_idle(four)
