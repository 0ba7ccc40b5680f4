"""The engine interface: what the pipeline needs from anything that generates tokens."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from pipeserve.errors import PipeserveError
from pipeserve.params import ChatParams


@dataclass(slots=True)
class TopToken:
    token: str
    bytes: bytes
    logprob: float


@dataclass(slots=True)
class TokenLogprob:
    """The log-probability of one sampled token under the model, with the most likely alternatives."""

    token: str
    bytes: bytes
    logprob: float
    top: list[TopToken]


@dataclass(slots=True)
class Delta:
    """What one choice produced in one engine step."""

    index: int
    text: str
    tokens: int
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None  # "stop" | "length" once the choice is finished


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What an engine can honour; the pipeline answers 400 for a request field it can't."""

    logprobs: bool = True
    max_top_logprobs: int = 20
    seed: bool = True
    logit_bias: bool = True
    structured_output: bool = True


@dataclass(frozen=True, slots=True)
class EngineStats:
    running_sequences: int
    waiting_requests: int
    kv_cells_used: int  # held by running sequences
    kv_cells_total: int
    kv_cells_cached: int = 0  # held by finished sequences, kept as a prefix cache; free for the taking


_END = object()


class Generation:
    """One running request: an async iterator of per-step delta lists, fed by the engine.

    `prompt_tokens` is known when the generation is returned; `cached_tokens` (prompt tokens whose KV
    entries were reused rather than computed) once the first deltas arrive.
    """

    def __init__(self, prompt_tokens: int, stop: Callable[[int | None, bool], None]) -> None:
        self.prompt_tokens = prompt_tokens
        self.cached_tokens = 0
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._stop = stop
        self._done = False

    # --- engine side: called on the event loop (engines in threads use call_soon_threadsafe) -------------
    def push(self, deltas: list[Delta], cached_tokens: int, done: bool) -> None:
        self.cached_tokens = cached_tokens
        self._queue.put_nowait(deltas)
        if done:
            self._queue.put_nowait(_END)

    def fail(self, error: PipeserveError) -> None:
        self._queue.put_nowait(error)

    # --- pipeline side --------------------------------------------------------------------------------
    def __aiter__(self) -> AsyncIterator[list[Delta]]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[list[Delta]]:
        while True:
            item = await self._queue.get()
            if item is _END:
                self._done = True
                return
            if isinstance(item, PipeserveError):
                self._done = True
                raise item
            assert isinstance(item, list)
            yield item

    def stop(self, choice: int | None = None, *, keep_cache: bool) -> None:
        """Stop generating one choice (a stop string matched) or all of them. Idempotent.

        `keep_cache`: the output so far is good, so its KV entries may serve later prompts; a cancelled
        request (client gone) frees them at once.
        """
        if self._done:
            return
        if choice is None:
            self._done = True
        self._stop(choice, keep_cache)

    def cancel(self) -> None:
        self.stop(keep_cache=False)


class Engine(ABC):
    """Runs one model. Implementations live in one module each under `pipeserve.engines`."""

    capabilities: Capabilities = Capabilities()

    @property
    @abstractmethod
    def context_window(self) -> int:
        """The most tokens (prompt + completion) one request may use."""

    @abstractmethod
    async def start(self) -> None:
        """Load the model; called once from the application's lifespan."""

    @abstractmethod
    async def close(self) -> None:
        """Stop generating and free the model."""

    @abstractmethod
    async def generate(self, params: ChatParams) -> Generation:
        """Validate and enqueue a request. Raises a `PipeserveError` for a request that can't run."""

    @abstractmethod
    def stats(self) -> EngineStats: ...

    def problem(self) -> str | None:
        """Why the engine can't serve right now (stopped, restarting, stalled), or None when it can.
        Requests then get a 503 and `/health` answers 503 naming it."""
        return None
