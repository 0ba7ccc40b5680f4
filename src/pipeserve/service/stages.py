"""Stages around the chat pipeline: what a request and its answer go through besides the model.

A stage (content filtering, then speech) looks at a request once it is understood and may change its params
(a spoken turn's transcript in place of its audio id) or refuse it (a filtered prompt). For a request it acts
on, it gets a `StageRun` that sees the answer: a plain completion as a whole, a stream chunk by chunk (as the
JSON objects sent, since a stage adds fields and holds back or reshapes content), and a stream's merged
completion (what is logged) at its end. Requests that no stage acts on don't touch this module after
`prepare`, so the plain hot path stays as it is.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

import orjson

from pipeserve.params import ChatParams
from pipeserve.protocol import chat_completions as wire
from pipeserve.service.chat import SSE_DONE, EventStream, sse
from pipeserve.service.models import ServedModel

Chunk = dict[str, Any]  # one stream event as sent: a `chat.completion.chunk`, or `{"error": ...}`


class StageRun(ABC):
    """One request's pass through one stage."""

    @abstractmethod
    async def complete(self, completion: wire.ChatCompletion) -> wire.ChatCompletion:
        """A plain answer, as the client will get it."""

    @abstractmethod
    def stream(self, chunks: AsyncIterator[Chunk]) -> AsyncIterator[Chunk]:
        """A stream's events, as the client will get them. Whatever a choice is owed is sent by the time its
        finishing chunk has gone out: the merged completion is asked for right after."""

    @abstractmethod
    def merged(self, completion: wire.ChatCompletion) -> wire.ChatCompletion:
        """A stream's completion as the model made it → as the client received it (for the request log)."""


class Stage(ABC):
    @abstractmethod
    def prepare(self, project: str, served: ServedModel, params: ChatParams) -> tuple[ChatParams, StageRun | None]:
        """The request's params as the model should get them, and this stage's run (None: nothing to do).
        Raises a `PipeserveError` for a request the stage refuses."""


class StagedRequest:
    """The runs of every stage that acts on one request, in order."""

    def __init__(self, runs: Sequence[StageRun]) -> None:
        self.runs = runs

    async def complete(self, completion: wire.ChatCompletion) -> wire.ChatCompletion:
        for run in self.runs:
            completion = await run.complete(completion)
        return completion

    def merged(self, completion: wire.ChatCompletion) -> wire.ChatCompletion:
        for run in self.runs:
            completion = run.merged(completion)
        return completion

    def stream(self, stream: EventStream) -> EventStream:
        return _StagedStream(stream, self.runs)


class Stages:
    def __init__(self, stages: Sequence[Stage]) -> None:
        self.stages = list(stages)

    def prepare(self, project: str, served: ServedModel, params: ChatParams) -> tuple[ChatParams, StagedRequest | None]:
        runs = []
        for stage in self.stages:
            params, run = stage.prepare(project, served, params)
            if run is not None:
                runs.append(run)
        return params, (StagedRequest(runs) if runs else None)


class _StagedStream(EventStream):
    """The stream's events decoded, passed through each stage's run, and sent again; `[DONE]` stays last."""

    def __init__(self, inner: EventStream, runs: Sequence[StageRun]) -> None:
        self._inner = inner
        self._done = False
        events: AsyncIterator[Chunk] = self._events()
        for run in runs:
            events = run.stream(events)
        super().__init__(self._encode(events))

    async def _events(self) -> AsyncGenerator[Chunk, None]:
        async for raw in self._inner:
            # One write may carry several events; JSON escapes line breaks, so a blank line ends each.
            for event in raw.split(b"\n\n")[:-1]:
                if event == SSE_DONE[:-2]:
                    self._done = True
                    continue
                yield orjson.loads(event.removeprefix(b"data: "))

    async def _encode(self, events: AsyncIterator[Chunk]) -> AsyncGenerator[bytes, None]:
        async for event in events:
            yield sse(orjson.dumps(event))
        if self._done:
            yield SSE_DONE

    async def aclose(self) -> None:
        try:
            await super().aclose()
        finally:
            await self._inner.aclose()
