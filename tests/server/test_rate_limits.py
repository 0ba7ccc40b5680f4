"""Rate limits on the real server (`[[rate_limits]]`): OpenAI's 429 with its headers, the x-ratelimit-* headers
on answers, limits shared through Redis by two pipeserve processes on one PostgreSQL store, and a Redis that goes
away (requests are admitted unchecked, never a 500)."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import (
    MODEL,
    Server,
    create_key,
    create_pg_database,
    drop_pg_database,
    start_server,
    stop_server,
)
from tests.store.tcp_proxy import TcpProxy

HELLO = [{"role": "user", "content": "Hi"}]
# SmolLM2's end-of-text and end-of-turn tokens, banned so that a stream runs until its client leaves.
ENDLESS = {"0": -100, "2": -100}
ERROR_KEYS = {"message", "type", "param", "code"}

LIMITS = """
[[rate_limits]]
key = "rpm"
requests_per_minute = 2

[[rate_limits]]
key = "tpm"
tokens_per_minute = 150

[[rate_limits]]
key = "conc"
concurrent_requests = 1

[[rate_limits]]
key = "*"
model = "*"
requests_per_minute = 1000
tokens_per_minute = 1000000
"""


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, str]]]:
    """A server with limits in its own memory, and a key for each table: rpm, tpm, conc and open."""
    server = start_server(tmp_path_factory.mktemp("rate-limits"), config=LIMITS)
    keys = {name: create_key(server.data_dir, name=name) for name in ("rpm", "tpm", "conc", "open")}
    yield server, keys
    stop_server(server)


def chat(server: Server, key: str | None = None, **body: Any) -> httpx.Response:
    payload = {"model": MODEL, "messages": HELLO, "max_tokens": 1} | body
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{server.v1}/chat/completions", json=payload, headers=headers, timeout=120)


def refusal(response: httpx.Response, kind: str) -> str:
    """The 429's message, once its body and headers are checked to be OpenAI's."""
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert set(error) == ERROR_KEYS
    assert error["type"] == kind and error["code"] == "rate_limit_exceeded" and error["param"] is None
    retry_ms = int(response.headers["retry-after-ms"])
    assert int(response.headers["retry-after"]) == max(1, -(-retry_ms // 1000))
    message: str = error["message"]
    return message


def ratelimit_headers(response: httpx.Response) -> dict[str, str]:
    return {name: value for name, value in response.headers.items() if name.startswith("x-ratelimit-")}


def test_answers_carry_openais_ratelimit_headers(limited: tuple[Server, dict[str, str]]) -> None:
    server, keys = limited
    first, second = chat(server, keys["open"]), chat(server, keys["open"])
    assert first.status_code == 200 and second.status_code == 200, second.text
    headers = ratelimit_headers(second)
    assert set(headers) == {
        f"x-ratelimit-{what}-{kind}" for what in ("limit", "remaining", "reset") for kind in ("requests", "tokens")
    }
    assert headers["x-ratelimit-limit-requests"] == "1000" and headers["x-ratelimit-limit-tokens"] == "1000000"
    # A request frees every 60 ms at 1000 a minute: the count of the last few is all that can be told.
    assert 990 <= int(headers["x-ratelimit-remaining-requests"]) < 1000
    assert re.fullmatch(r"\d+ms|[\d.]+s", headers["x-ratelimit-reset-requests"])
    # A stream's headers come before its first byte.
    payload = {"model": MODEL, "messages": HELLO, "max_tokens": 1, "stream": True}
    auth = {"Authorization": f"Bearer {keys['open']}"}
    with httpx.stream("POST", f"{server.v1}/chat/completions", json=payload, headers=auth, timeout=120) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert stream.headers["x-ratelimit-limit-requests"] == "1000"
        assert stream.read().endswith(b"data: [DONE]\n\n")


def test_requests_per_minute(limited: tuple[Server, dict[str, str]]) -> None:
    server, keys = limited
    answers = [chat(server, keys["rpm"]) for _ in range(2)]
    assert [a.status_code for a in answers] == [200, 200]
    assert [a.headers["x-ratelimit-remaining-requests"] for a in answers] == ["1", "0"]  # the closest limit
    assert answers[0].headers["x-ratelimit-limit-requests"] == "2"
    refused = chat(server, keys["rpm"])
    message = refusal(refused, "requests")
    assert re.fullmatch(
        r"Rate limit reached for all models with key rpm on requests per min \(RPM\): Limit 2, Used 2, "
        r"Requested 1\. Please try again in [\d.]+s\.",
        message,
    ), message
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    # The official client sees OpenAI's error.
    client = server.client(keys["rpm"])
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=1)  # type: ignore[arg-type]
    assert caught.value.status_code == 429 and caught.value.code == "rate_limit_exceeded"
    assert caught.value.type == "requests"
    # Other keys are not limited by this table.
    assert chat(server, keys["open"]).status_code == 200


def test_tokens_per_minute_counts_the_real_usage(limited: tuple[Server, dict[str, str]]) -> None:
    server, keys = limited
    too_large = chat(server, keys["tpm"], max_tokens=500)
    assert refusal(too_large, "tokens").startswith(
        "Request too large for all models with key tpm on tokens per min (TPM): Limit 150, Requested "
    )
    # Each request is admitted on an estimate of a few tokens, then counted at its real usage (the chat template
    # makes it several times that), so that the limit is reached in far fewer requests than the estimates allow.
    used = 0
    for _ in range(10):
        answer = chat(server, keys["tpm"])
        if answer.status_code != 200:
            break
        used += answer.json()["usage"]["total_tokens"]
    message = refusal(answer, "tokens")
    assert re.fullmatch(
        r"Rate limit reached for all models with key tpm on tokens per min \(TPM\): Limit 150, Used \d+, "
        r"Requested \d+\. Please try again in [\d.]+m?s\.",
        message,
    ), message
    assert used > 100  # the real usage was counted
    assert answer.headers["x-ratelimit-limit-tokens"] == "150"


def test_concurrent_requests(limited: tuple[Server, dict[str, str]]) -> None:
    server, keys = limited
    payload = {"model": MODEL, "messages": HELLO, "max_tokens": 900, "stream": True, "logit_bias": ENDLESS}
    auth = {"Authorization": f"Bearer {keys['conc']}"}
    with httpx.stream("POST", f"{server.v1}/chat/completions", json=payload, headers=auth, timeout=120) as held:
        assert held.status_code == 200
        lines = held.iter_lines()  # kept: a dropped iterator closes the response
        assert next(lines).startswith("data: ")  # generating
        message = refusal(chat(server, keys["conc"]), "requests")
        assert message == (
            "Rate limit reached for all models with key conc on concurrent requests: Limit 1, Used 1, "
            "Requested 1. Please try again when one of them has finished."
        )
    # The client left: its slot is freed (as soon as the server notices).
    assert _eventually(lambda: chat(server, keys["conc"])).status_code == 200


# --- two replicas on one Redis and one PostgreSQL database ----------------------------------------------------


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    prefix = f"pipeserve-test-{uuid.uuid4().hex[:10]}:"
    yield prefix
    asyncio.run(_drop_redis_keys(prefix))


async def _drop_redis_keys(prefix: str) -> None:
    from redis.asyncio import Redis

    redis = Redis.from_url("redis://127.0.0.1:6379/0")
    try:
        keys = [key async for key in redis.scan_iter(match=f"{prefix}*")]
        if keys:
            await redis.delete(*keys)
    finally:
        await redis.aclose()


def shared_config(redis_url: str, prefix: str, database_url: str | None = None) -> str:
    lines = [f'redis_url = "{redis_url}"', f'redis_key_prefix = "{prefix}"', "redis_timeout_seconds = 1.0"]
    if database_url:
        lines.append(f'database_url = "{database_url}"')
    rules = '[[rate_limits]]\nkey = "*"\nmodel = "*"\nrequests_per_minute = {rpm}\nconcurrent_requests = 1\n'
    return "\n".join(lines) + "\n\n" + rules


def test_two_replicas_share_their_limits_through_redis(tmp_path: Path, redis_prefix: str) -> None:
    database = asyncio.run(create_pg_database())
    config = shared_config("redis://127.0.0.1:6379/0", redis_prefix, database).format(rpm=3)
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
    one = start_server(tmp_path / "one", config=config)
    try:
        two = start_server(tmp_path / "two", config=config)
        try:
            # A request in flight on one replica holds the only slot on both.
            payload = {"model": MODEL, "messages": HELLO, "max_tokens": 900, "stream": True, "logit_bias": ENDLESS}
            with httpx.stream("POST", f"{one.v1}/chat/completions", json=payload, timeout=120) as held:
                assert held.status_code == 200
                lines = held.iter_lines()  # kept: a dropped iterator closes the response
                assert next(lines).startswith("data: ")
                refusal(chat(two), "requests")
            # Requests per minute, counted across both: that stream was the first of three.
            assert _eventually(lambda: chat(two)).status_code == 200
            assert chat(one).status_code == 200
            message = refusal(chat(two), "requests")
            assert "on requests per min (RPM): Limit 3, Used 3, Requested 1." in message
            refusal(chat(one), "requests")
        finally:
            stop_server(two)
    finally:
        stop_server(one)
        asyncio.run(drop_pg_database(database))


def metrics(server: Server) -> dict[str, float]:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line.startswith("pipeserve_rate_limit_")
    }


def test_a_redis_that_goes_away_lets_requests_through(tmp_path: Path, redis_prefix: str) -> None:
    proxy = TcpProxy(target_port=6379).start()
    try:
        config = shared_config(f"redis://127.0.0.1:{proxy.port}/0", redis_prefix).format(rpm=1)
        server = start_server(tmp_path, config=config)
        try:
            assert chat(server).status_code == 200
            refusal(chat(server), "requests")  # counted in Redis
            assert metrics(server)["pipeserve_rate_limit_backend_up"] == 1
            for outage in (proxy.refuse, proxy.hang):  # Redis refuses connections; then it hangs
                outage()
                for _ in range(3):
                    answer = chat(server)
                    assert answer.status_code == 200, answer.text  # admitted unchecked
                    assert not ratelimit_headers(answer)
                assert metrics(server)["pipeserve_rate_limit_backend_up"] == 0
                proxy.forward()
                # Back: the limit holds again (its counter may have restarted).
                refusal(_eventually(lambda: chat(server), until=lambda r: r.status_code == 429), "requests")
                assert metrics(server)["pipeserve_rate_limit_backend_up"] == 1
            assert metrics(server)["pipeserve_rate_limit_unchecked_requests_total"] >= 6
            log = server.log.read_text()
            assert "Redis can't be reached" in log and "Redis is back" in log
        finally:
            stop_server(server)
    finally:
        proxy.stop()


def _eventually(
    send: Callable[[], httpx.Response],
    until: Callable[[httpx.Response], bool] = lambda response: response.status_code == 200,
    timeout: float = 60.0,
) -> httpx.Response:
    """Send until the answer is the one wanted: a slot or Redis comes back when the server notices, not at once.
    No timing is asserted, only the outcome."""
    deadline = time.monotonic() + timeout
    while True:
        response = send()
        if until(response) or time.monotonic() > deadline:
            return response
        time.sleep(0.2)
