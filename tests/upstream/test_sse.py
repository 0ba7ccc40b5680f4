"""Server-sent events from lines, as the spec frames them."""

from __future__ import annotations

from collections.abc import AsyncIterator

from pipeserve.upstream import ServerSentEvent, sse_events


async def lines(*items: str) -> AsyncIterator[str]:
    for item in items:
        yield item


async def events(*items: str) -> list[ServerSentEvent]:
    return [event async for event in sse_events(lines(*items))]


async def test_events_comments_and_multiline_data() -> None:
    got = await events(
        ": keep-alive",
        "",
        'data: {"a": 1}',
        "",
        "event: message_start",
        "data: one",
        "data:two",
        "id: 7",
        "",
        "data: [DONE]",
    )
    assert got == [
        ServerSentEvent(None, '{"a": 1}'),
        ServerSentEvent("message_start", "one\ntwo"),
        ServerSentEvent(None, "[DONE]"),  # the last event needs no blank line
    ]


async def test_carriage_returns_and_blank_runs() -> None:
    assert await events("data: x\r", "\r", "", "", "data: y") == [
        ServerSentEvent(None, "x"),
        ServerSentEvent(None, "y"),
    ]
