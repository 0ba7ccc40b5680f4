"""Clients that give up at every stage of a request leave nothing behind: the engine keeps serving, no
sequence or KV cell stays held, and the next request answers at once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import MODEL, Server, start_server, stop_server

CONFIG = """
[[criteria]]
name = "polite"
instructions = "PASS if the answer is polite, else FAIL."
"""
LONG_PROMPT = " ".join(f"Item {i} is a red box with a blue lid." for i in range(70))  # ~900 tokens


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server of its own: its counts of sequences and cells are this module's alone."""
    server = start_server(tmp_path_factory.mktemp("abandon"), config=CONFIG)
    yield server
    stop_server(server)


def _body(content: str = "Write a long story about a dragon.", **extra: object) -> dict[str, object]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 96, **extra}


async def _give_up(client: httpx.AsyncClient, url: str, body: dict[str, object], timeout: float) -> None:
    with contextlib.suppress(httpx.HTTPError):
        await client.post(url, json=body, timeout=timeout)


async def _read_then_leave(client: httpx.AsyncClient, url: str, body: dict[str, object], lines: int) -> None:
    """Stream, read `lines` SSE lines, then close the connection."""
    async with client.stream("POST", url, json=body, timeout=60) as response:
        seen = 0
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                seen += 1
                if seen >= lines:
                    return


async def _leave_after_finish(client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> None:
    """Stream with op-criteria and leave once the choice has finished: the judge is running then."""
    body = _body(stream=True, max_tokens=8)
    async with client.stream("POST", url, json=body, headers=headers, timeout=60) as response:
        async for line in response.aiter_lines():
            if (
                line.startswith("data: {")
                and json.loads(line[6:])["choices"][:1]
                and any(choice.get("finish_reason") for choice in json.loads(line[6:])["choices"])
            ):
                return


def _raw(server: Server, data: bytes) -> None:
    """Send raw bytes and hang up without reading the answer."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(data)


def _half_body(server: Server) -> bytes:
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Content-Length: 5000\r\n\r\n"
    )
    return head.encode() + b'{"model": "' + MODEL.encode() + b'", "messages": ['


async def _abandon_everywhere(server: Server) -> None:
    url = f"{server.v1}/chat/completions"
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits) as client:
        # Accepted or queued: a burst larger than the 16 sequences, with client timeouts of a few milliseconds
        # up to about a second, three times over (the openpipe SDK's fallback timeout does this).
        for round_ in range(3):
            await asyncio.gather(*(_give_up(client, url, _body(), 0.002 + 0.025 * i) for i in range(40 + round_)))
        # Prefilling: long prompts, abandoned early.
        await asyncio.gather(*(_give_up(client, url, _body(LONG_PROMPT), 0.05 + 0.05 * i) for i in range(6)))
        # Decoding: streams left after a few chunks, plain requests left mid-generation.
        await asyncio.gather(
            *(_read_then_leave(client, url, _body(stream=True), 2 + i) for i in range(8)),
            *(_give_up(client, url, _body(max_tokens=200), 0.3 + 0.1 * i) for i in range(8)),
        )
        # Judging: the completion is done and the judge runs when the client leaves.
        judged = {"op-criteria": '["polite"]'}
        await asyncio.gather(
            *(_leave_after_finish(client, url, judged) for _ in range(4)),
            *(_give_up(client, url, _body(max_tokens=8) | {}, 0.4 + 0.1 * i) for i in range(4)),
        )
    # Before and during the body: garbage, a half-sent body, a bare connection.
    for data in (b"\x16\x03\x01garbage\r\n\r\n", b"GET / HTTP/1.1\r\n", _half_body(server), b""):
        _raw(server, data)


def _wait_idle(server: Server, timeout: float = 60.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        health = server.health()
        model = health["models"][0]
        if model["running_sequences"] == 0 and model["waiting_requests"] == 0 and model["kv_cells_used"] == 0:
            return health  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, f"the engine still holds work nobody waits for: {health}"
        time.sleep(0.1)


def test_clients_abandoning_at_every_stage_leave_the_engine_serving(fresh: Server) -> None:
    asyncio.run(_abandon_everywhere(fresh))
    health = _wait_idle(fresh)
    assert health["status"] == "ok"
    # The next request is served (a wedged engine never answers: the client's timeout is the only bound).
    reply = (
        fresh.client()
        .with_options(timeout=60)
        .chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say hi."}], max_tokens=8)
    )
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage is not None and reply.usage.completion_tokens > 0
    _wait_idle(fresh)
    assert "Traceback" not in fresh.log.read_text(), "a client leaving must not log a server error"


def test_a_request_abandoned_before_acceptance_is_dropped_not_run(fresh: Server) -> None:
    """Many clients leave at once while their requests are handed to the engine; none of them keeps running
    to its max_tokens afterwards."""

    async def burst() -> None:
        async with httpx.AsyncClient() as client:
            url = f"{fresh.v1}/chat/completions"
            await asyncio.gather(*(_give_up(client, url, _body(max_tokens=400), 0.001 * i) for i in range(40)))

    asyncio.run(burst())
    # 400 tokens each for 40 requests would take minutes on two cores; nothing should remain within seconds.
    _wait_idle(fresh, timeout=20)
    assert httpx.get(f"{fresh.url}/health", timeout=10).status_code == 200


def test_the_server_still_answers_after_garbage_on_the_wire(fresh: Server, tmp_path: Path) -> None:
    for data in (b"\x00" * 1024, b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: -1\r\n\r\n", b"\r\n" * 100):
        _raw(fresh, data)
    assert fresh.health()["status"] == "ok"
