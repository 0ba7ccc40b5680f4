"""A fault-injecting fake OpenAI-compatible upstream: a real HTTP server (starlette on uvicorn) on a free
loopback port, in a thread of the test process, scripted per request and recording what it received.

Each `POST /chat/completions` takes the next `Reply` from `upstream.replies` (else `upstream.default`) and
answers with it: streamed chunks built from a script (content pieces, reasoning under either field name,
tool calls in fragments, logprobs with or without bytes, usage or none), or raw event payloads (malformed
JSON, error events), an HTTP error, a slow start, a dropped connection, or a whole JSON completion.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.conftest import free_port


@dataclass
class Reply:
    status: int = 200
    error: dict[str, Any] | None = None  # the body of a non-200 answer
    headers: dict[str, str] = field(default_factory=dict)
    pieces: list[str] = field(default_factory=lambda: ["Hello", " world"])
    reasoning: list[str] = field(default_factory=list)
    reasoning_field: str = "reasoning_content"  # vLLM says "reasoning"
    tool_calls: list[tuple[str, list[str]]] = field(default_factory=list)  # (name, argument fragments)
    logprobs: bool = False
    logprob_bytes: bool = True
    usage: dict[str, Any] | bool | None = True  # True: computed; None/False: no usage chunk
    finish: str = "stop"
    events: list[str] | None = None  # raw data payloads instead of the scripted chunks
    delay_headers: float = 0.0  # seconds before the answer starts (a slow first byte)
    delay_chunks: float = 0.0  # seconds between events
    drop_after: int | None = None  # events sent before the connection is dropped
    done: bool = True  # end with `data: [DONE]`
    whole: bool = False  # answer with a whole JSON completion, ignoring `stream`
    together: bool = False  # every event (and `[DONE]`) in one write, as a fast upstream's answer may arrive

    # --- building the chunks ---------------------------------------------------------------------------------
    def chunk(self, choices: list[dict[str, Any]], **extra: Any) -> str:
        body = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": "up", **extra}
        return json.dumps({**body, "choices": choices})

    def _logprobs(self, text: str) -> dict[str, Any] | None:
        if not self.logprobs:
            return None
        entry: dict[str, Any] = {"token": text, "logprob": -0.5, "top_logprobs": [{"token": text, "logprob": -0.5}]}
        if self.logprob_bytes:
            entry["bytes"] = list(text.encode())
            entry["top_logprobs"][0]["bytes"] = list(text.encode())
        return {"content": [entry]}

    def scripted(self, n: int) -> list[str]:
        events = [self.chunk([{"index": i, "delta": {"role": "assistant", "content": ""}} for i in range(n)])]
        for piece in self.reasoning:
            events += [self.chunk([{"index": i, "delta": {self.reasoning_field: piece}}]) for i in range(n)]
        for piece in self.pieces:
            events += [
                self.chunk([{"index": i, "delta": {"content": piece}, "logprobs": self._logprobs(piece)}])
                for i in range(n)
            ]
        for position, (name, fragments) in enumerate(self.tool_calls):
            for i in range(n):
                first = {"index": position, "id": f"call_{position}", "type": "function", "function": {"name": name}}
                events.append(self.chunk([{"index": i, "delta": {"tool_calls": [first]}}]))
                for fragment in fragments:
                    part = {"index": position, "function": {"arguments": fragment}}
                    events.append(self.chunk([{"index": i, "delta": {"tool_calls": [part]}}]))
        events.append(self.chunk([{"index": i, "delta": {}, "finish_reason": self.finish} for i in range(n)]))
        usage = self.usage_json(n)
        if usage is not None:
            events.append(self.chunk([], usage=usage))
        return events

    def usage_json(self, n: int) -> dict[str, Any] | None:
        if self.usage is True:
            completion = (len(self.pieces) + len(self.reasoning)) * n
            return {"prompt_tokens": 10, "completion_tokens": completion, "total_tokens": 10 + completion}
        return self.usage or None

    def completion(self, n: int) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self.pieces)}
        if self.reasoning:
            message[self.reasoning_field] = "".join(self.reasoning)
        if self.tool_calls:
            message["tool_calls"] = [
                {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": "".join(parts)}}
                for i, (name, parts) in enumerate(self.tool_calls)
            ]
        choices = [{"index": i, "message": message, "finish_reason": self.finish} for i in range(n)]
        return {"id": "chatcmpl-fake", "object": "chat.completion", "choices": choices, "usage": self.usage_json(n)}


@dataclass
class Received:
    body: dict[str, Any]
    headers: dict[str, str]
    at: float  # time.monotonic() on arrival
    completed: bool | None = None  # None while streaming; False if the client closed the stream first


class FakeUpstream:
    def __init__(self, *, honour_n: bool = True) -> None:
        self.honour_n = honour_n
        self.replies: deque[Reply] = deque()
        self.default = Reply()
        self.received: list[Received] = []
        self.models_status = 200
        self.models_body: dict[str, Any] = {"object": "list", "data": [{"id": "up", "object": "model"}]}
        self.models_calls = 0
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def reset(self) -> None:
        self.replies.clear()
        self.default = Reply()
        self.received.clear()
        self.models_status = 200
        self.models_body = {"object": "list", "data": [{"id": "up", "object": "model"}]}
        self.models_calls = 0

    def script(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    # --- the server -------------------------------------------------------------------------------------------
    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
            ]
        )

    async def _models(self, request: Request) -> Response:
        self.models_calls += 1
        if self.models_status != 200:
            return JSONResponse({"error": {"message": "unhealthy"}}, status_code=self.models_status)
        return JSONResponse(self.models_body)

    async def _chat(self, request: Request) -> Response:
        body = await request.json()
        record = Received(body, dict(request.headers), time.monotonic())
        self.received.append(record)
        reply = self.replies.popleft() if self.replies else self.default
        if reply.delay_headers:
            await asyncio.sleep(reply.delay_headers)
            if await request.is_disconnected():
                record.completed = False  # the client went away while waiting for the first byte
                return Response(status_code=499)
        if reply.status != 200:
            record.completed = True
            error = reply.error or {"error": {"message": f"fake failure {reply.status}", "type": "x"}}
            return JSONResponse(error, status_code=reply.status, headers=reply.headers)
        n = int(body.get("n", 1)) if self.honour_n else 1
        if reply.whole:
            record.completed = True
            return JSONResponse(reply.completion(n), headers=reply.headers)
        events = reply.events if reply.events is not None else reply.scripted(n)
        return StreamingResponse(self._stream(reply, events, record), media_type="text/event-stream")

    async def _stream(self, reply: Reply, events: list[str], record: Received) -> AsyncIterator[bytes]:
        if reply.together:
            yield b"".join(f"data: {data}\n\n".encode() for data in events) + (
                b"data: [DONE]\n\n" if reply.done else b""
            )
            record.completed = True
            return
        try:
            for sent, data in enumerate(events):
                if reply.drop_after is not None and sent >= reply.drop_after:
                    record.completed = True
                    raise ConnectionAbortedError("the fake drops the connection, as scripted")
                if sent and reply.delay_chunks:
                    await asyncio.sleep(reply.delay_chunks)
                yield f"data: {data}\n\n".encode()
            if reply.done:
                yield b"data: [DONE]\n\n"
            record.completed = True
        finally:
            if record.completed is None:
                record.completed = False  # the client went away before the end

    def start(self) -> None:
        config = uvicorn.Config(self.app(), host="127.0.0.1", port=self.port, log_level="critical", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the fake upstream did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(10)


def serving(count: int = 1, **kwargs: Any) -> Iterator[list[FakeUpstream]]:
    """Start `count` fake upstreams; a generator for fixtures."""
    upstreams = [FakeUpstream(**kwargs) for _ in range(count)]
    for upstream in upstreams:
        upstream.start()
    try:
        yield upstreams
    finally:
        for upstream in upstreams:
            upstream.stop()


def dead_url() -> str:
    """The base URL of a loopback port nobody listens on: connections are refused."""
    return f"http://127.0.0.1:{free_port()}/v1"
