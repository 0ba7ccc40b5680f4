"""Server-sent events, read line by line from a streamed HTTP answer (no buffering of the whole body)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    event: str | None  # the `event:` field (Anthropic names its events; OpenAI-compatible servers don't)
    data: str  # the `data:` lines, joined by newlines


async def sse_events(lines: AsyncIterator[str]) -> AsyncIterator[ServerSentEvent]:
    """Events from the lines of an event stream (`Response.lines()`), per the SSE spec:
    fields up to a blank line; comments (`:`) and `id`/`retry` ignored; a last event without its blank line
    still counts."""
    event: str | None = None
    data: list[str] = []
    async for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data or event is not None:
                yield ServerSentEvent(event, "\n".join(data))
            event, data = None, []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
    if data or event is not None:
        yield ServerSentEvent(event, "\n".join(data))
