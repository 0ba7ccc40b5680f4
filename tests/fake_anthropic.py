"""A fake Anthropic Messages API on a free loopback port: it answers scripted exchanges, built from the
`anthropic` SDK's own types and sent as Anthropic sends them (server-sent events `event: <type>` /
`data: <json>`), and records every request it receives (headers and JSON body)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from anthropic.types import (
    InputJSONDelta,
    Message,
    MessageDeltaUsage,
    RawContentBlockDeltaEvent,
    RawContentBlockStartEvent,
    RawContentBlockStopEvent,
    RawMessageDeltaEvent,
    RawMessageStartEvent,
    RawMessageStopEvent,
    SignatureDelta,
    TextBlock,
    TextDelta,
    ThinkingBlock,
    ThinkingDelta,
    ToolUseBlock,
    Usage,
)
from anthropic.types.raw_message_delta_event import Delta as MessageDelta
from anthropic.types.shared import ErrorResponse
from anthropic.types.shared.error_object import ErrorObject
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

Event = BaseModel | dict[str, Any]


@dataclass
class Exchange:
    """One scripted answer: an HTTP error (`status` != 200 with `body`), or 200 with `events`.

    `hold`: after the events, keep the stream open until the client leaves, sending pings (`hold_pings`) or
    nothing at all."""

    status: int = 200
    events: list[Event] = field(default_factory=list)
    body: Event | None = None
    headers: dict[str, str] = field(default_factory=dict)
    hold: bool = False
    hold_pings: bool = True


@dataclass
class Received:
    headers: dict[str, str]
    body: dict[str, Any]
    disconnected: threading.Event = field(default_factory=threading.Event)  # left before the stream ended


def _json(event: Event) -> str:
    return (
        event.model_dump_json()
        if isinstance(event, BaseModel)
        else TypeAdapter(dict[str, Any]).dump_json(event).decode()
    )


def _sse(event: Event) -> bytes:
    kind = getattr(event, "type", None) if isinstance(event, BaseModel) else event["type"]
    return f"event: {kind}\ndata: {_json(event)}\n\n".encode()


class FakeAnthropic:
    def __init__(self) -> None:
        self.script: deque[Exchange] = deque()
        self.responder: Callable[[dict[str, Any]], Exchange] | None = None
        self.received: list[Received] = []
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        app = Starlette(routes=[Route("/v1/messages", self._messages, methods=["POST"])])
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="fake-anthropic", daemon=True)

    def start(self) -> FakeAnthropic:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the fake Anthropic server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)

    def reset(self) -> None:
        self.script.clear()
        self.responder = None
        self.received.clear()

    def answer(self, *exchanges: Exchange) -> None:
        self.script.extend(exchanges)

    @property
    def last(self) -> dict[str, Any]:
        return self.received[-1].body

    async def _messages(self, request: Request) -> Response:
        received = Received(dict(request.headers), await request.json())
        self.received.append(received)
        if self.responder is not None:
            exchange = self.responder(received.body)
        elif self.script:
            exchange = self.script.popleft()
        else:
            exchange = Exchange(events=reply(text("Hello!")))
        if exchange.status != 200:
            assert exchange.body is not None
            return Response(
                _json(exchange.body), exchange.status, headers=exchange.headers, media_type="application/json"
            )
        return StreamingResponse(
            self._stream(exchange, received), headers=exchange.headers, media_type="text/event-stream"
        )

    @staticmethod
    async def _stream(exchange: Exchange, received: Received) -> AsyncIterator[bytes]:
        ended = False
        try:
            for event in exchange.events:
                yield _sse(event)
            while exchange.hold:
                await asyncio.sleep(0.05)
                if exchange.hold_pings:
                    yield _sse({"type": "ping"})
            ended = True
        finally:
            if not ended:
                received.disconnected.set()


# --- building Anthropic's answers from the SDK's types ---------------------------------------------------------
@dataclass
class Block:
    kind: str  # text, thinking, tool_use
    pieces: tuple[str, ...]
    id: str = ""
    name: str = ""


def text(*pieces: str) -> Block:
    return Block("text", pieces)


def thinking(*pieces: str) -> Block:
    return Block("thinking", pieces)


def tool_use(id: str, name: str, *json_pieces: str) -> Block:
    return Block("tool_use", json_pieces, id, name)


def reply(
    *blocks: Block,
    stop_reason: str = "end_turn",
    input_tokens: int = 12,
    output_tokens: int = 7,
    cache_read: int | None = None,
    cache_creation: int | None = None,
    thinking_tokens: int | None = None,
    model: str = "claude-test",
    pings: bool = True,
) -> list[Event]:
    """The event stream of one message, as Anthropic sends it."""
    start_usage = Usage(
        input_tokens=input_tokens,
        output_tokens=1,
        cache_read_input_tokens=cache_read,
        cache_creation_input_tokens=cache_creation,
    )
    message = Message(
        id="msg_01Fake",
        type="message",
        role="assistant",
        content=[],
        model=model,
        stop_reason=None,
        stop_sequence=None,
        usage=start_usage,
    )
    events: list[Event] = [RawMessageStartEvent(type="message_start", message=message)]
    if pings:
        events.append({"type": "ping"})
    for index, block in enumerate(blocks):
        events += _block_events(index, block)
    details = {"thinking_tokens": thinking_tokens} if thinking_tokens is not None else None
    usage = MessageDeltaUsage.model_validate({"output_tokens": output_tokens, "output_tokens_details": details})
    events.append(
        RawMessageDeltaEvent(
            type="message_delta", delta=MessageDelta(stop_reason=stop_reason, stop_sequence=None), usage=usage
        )
    )
    events.append(RawMessageStopEvent(type="message_stop"))
    return events


def _block_events(index: int, block: Block) -> Iterable[Event]:
    if block.kind == "text":
        yield RawContentBlockStartEvent(
            type="content_block_start", index=index, content_block=TextBlock(type="text", text="")
        )
        for piece in block.pieces:
            yield RawContentBlockDeltaEvent(
                type="content_block_delta", index=index, delta=TextDelta(type="text_delta", text=piece)
            )
    elif block.kind == "thinking":
        start = ThinkingBlock(type="thinking", thinking="", signature="")
        yield RawContentBlockStartEvent(type="content_block_start", index=index, content_block=start)
        for piece in block.pieces:
            yield RawContentBlockDeltaEvent(
                type="content_block_delta",
                index=index,
                delta=ThinkingDelta(type="thinking_delta", thinking=piece),
            )
        yield RawContentBlockDeltaEvent(
            type="content_block_delta",
            index=index,
            delta=SignatureDelta(type="signature_delta", signature="EqQBCgIYAhIM1gbcDa9GJwZA2b3h"),
        )
    else:
        start_tool = ToolUseBlock(type="tool_use", id=block.id, name=block.name, input={})
        yield RawContentBlockStartEvent(type="content_block_start", index=index, content_block=start_tool)
        for piece in ("", *block.pieces):  # Anthropic opens with an empty piece
            yield RawContentBlockDeltaEvent(
                type="content_block_delta",
                index=index,
                delta=InputJSONDelta(type="input_json_delta", partial_json=piece),
            )
    yield RawContentBlockStopEvent(type="content_block_stop", index=index)


def error_body(kind: str, message: str) -> Event:
    """Anthropic's error body: `{"type": "error", "error": {"type", "message"}}`."""
    fields = {"type": kind, "message": message}
    try:
        error = TypeAdapter(ErrorObject).validate_python(fields)
    except ValidationError:  # a type the SDK does not model (request_too_large): the documented shape
        return {"type": "error", "error": fields, "request_id": "req_01Fake"}
    return ErrorResponse(type="error", error=error, request_id="req_01Fake")


def failure(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> Exchange:
    return Exchange(status=status, body=error_body(kind, message), headers=headers or {})
