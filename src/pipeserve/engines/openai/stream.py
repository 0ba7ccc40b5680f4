"""One upstream request's answer, read as it streams: to the first content inside an attempt (so a failure
up to there can still be retried), then event by event for the pump that feeds the generation."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import orjson

from pipeserve.engines.base import Delta, Usage
from pipeserve.engines.openai.normalize import ChunkError, Counted, chunk_deltas, completion_deltas, error_in, usage_of
from pipeserve.errors import UpstreamError
from pipeserve.upstream import (
    Lease,
    Response,
    ServerSentEvent,
    TransportError,
    UpstreamContext,
    UpstreamFailure,
    error_fields,
    failure_from_exception,
    failure_from_status,
    sse_events,
    unreadable,
)

_QUOTED = 200  # characters of an unreadable event quoted in its error
_DRAIN = 0.05  # seconds to wait for the end of a body after `[DONE]`


class UpstreamStream:
    def __init__(self, response: Response, context: UpstreamContext, lease: Lease, choices: int) -> None:
        self.response = response
        self.context = context
        self.lease = lease
        self.choices = choices  # how many choices this request asked for
        self.buffered: list[Delta] = []  # read before the first content, passed on once the attempt succeeds
        self.usage: Usage | None = None  # the upstream's own count, once it sends one
        self.counted = Counted()
        self.finished: set[int] = set()
        self.ended = False
        self.content_seen = False
        self._events: AsyncIterator[ServerSentEvent] | None = None

    async def read_first(self) -> None:
        """Read up to the first content (or the end). Raises `UpstreamFailure`."""
        content_type = self.response.headers.get("content-type", "")
        if "text/event-stream" not in content_type:
            await self._read_whole(content_type)
            return
        self._events = sse_events(self.response.lines())
        while not self.content_seen and not self.ended:
            self.buffered += await self.next()

    async def _read_whole(self, content_type: str) -> None:
        """An upstream that ignored `stream: true` and sent the whole completion as JSON."""
        body = await self.guard(self.response.read())
        try:
            completion = orjson.loads(body)
        except ValueError:
            what = f"a body that is neither an event stream nor JSON ({content_type or 'no content type'})"
            raise unreadable(self.context, f"{what}: {body[:_QUOTED]!r}") from None
        self.buffered = self._accept(completion, whole=True)
        self.ended = True

    async def next(self) -> list[Delta]:
        """The deltas of the next event (none for an event that carries none). Raises `UpstreamFailure`."""
        assert self._events is not None
        try:
            event = await self.guard(anext(self._events))
        except StopAsyncIteration:
            self._end_of_body()
            return []
        data = event.data.strip()
        if data == "[DONE]":
            self.ended = True
            return []
        if not data:
            return []
        try:
            chunk = orjson.loads(data)
        except ValueError:
            raise unreadable(self.context, f"malformed JSON in an event: {data[:_QUOTED]}") from None
        return self._accept(chunk, whole=False)

    def _accept(self, payload: Any, *, whole: bool) -> list[Delta]:
        if not isinstance(payload, dict):
            raise unreadable(self.context, f"an event that is not a JSON object: {str(payload)[:_QUOTED]}")
        failure = error_in(payload)
        if failure is not None:
            raise self._failure(failure)
        try:
            deltas = completion_deltas(payload) if whole else chunk_deltas(payload)
            usage = usage_of(payload.get("usage"))
        except ChunkError as exc:
            raise self._failure(exc) from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise unreadable(self.context, f"a chunk of an unexpected shape ({exc}): {payload!s:.{_QUOTED}}") from None
        if usage is not None:
            self.usage = usage
        for delta in deltas:
            self.counted.add(delta)
            if delta.finish_reason is not None:
                self.finished.add(delta.index)
        if deltas:
            self.content_seen = True
        return deltas

    def _end_of_body(self) -> None:
        """The body ended without `[DONE]`: fine once every choice has finished, else a dropped answer."""
        if len(self.finished) >= self.choices:
            self.ended = True
            return
        where = f"the upstream {self.context.upstream} (model {self.context.model!r})"
        error = UpstreamError(f"{where} closed the stream before the answer ended")
        raise UpstreamFailure(error, retryable=not self.content_seen, replica_fault=True)

    def _failure(self, failure: ChunkError) -> UpstreamFailure:
        """An error the upstream reported inside its 200 stream."""
        status = failure.status
        if not self.content_seen and status is not None and 400 <= status < 500:
            # The upstream refused the request itself (vLLM may say so only once streaming): the client's error.
            return failure_from_status(status, json.dumps(failure.payload).encode(), {}, self.context)
        message = self.context.scrub(error_fields(failure.payload)[0] or json.dumps(failure.payload)[:_QUOTED])
        where = f"the upstream {self.context.upstream} (model {self.context.model!r})"
        error = UpstreamError(f"{where} reported an error while answering: {message}")
        return UpstreamFailure(error, retryable=not self.content_seen, replica_fault=True)

    async def guard(self, awaitable: Any) -> Any:
        """Await a read of the answer, its transport errors as `UpstreamFailure`s (retryable only before any
        content was read)."""
        try:
            return await awaitable
        except TransportError as exc:
            failure = failure_from_exception(exc, self.context)
            if self.content_seen:
                failure.retryable = False
            raise failure from exc

    def take_buffered(self) -> list[Delta]:
        deltas, self.buffered = self.buffered, []
        return deltas

    def close_if_read(self) -> bool:
        """Close an answer that ended and was read to its last byte, at once; False when `close` must."""
        if not self.ended or not self.response.release_if_read():
            return False
        self.lease.close()
        return True

    async def close(self) -> None:
        """Close the HTTP answer (an unfinished one closes its connection: the upstream stops generating)."""
        try:
            # An answer that ended properly may still have its last bytes on the way: wait a moment for
            # them, so that the connection is kept for the next request.
            await self.response.close(drain=_DRAIN if self.ended else 0.0)
        finally:
            self.lease.close()
