"""The engine interface: what the pipeline needs from anything that generates tokens."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Literal

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


FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]


@dataclass(slots=True)
class ToolCallFragment:
    """Part of one tool call of a choice: its first fragment names the call (`id`, `name`); the argument
    text follows in pieces that concatenate to the JSON text of the arguments."""

    index: int  # the call's position among the choice's tool calls
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(slots=True)
class Delta:
    """What one choice produced in one engine step, already parsed: every engine, local or remote, reports
    content, reasoning and tool calls this way, so the pipeline above parses nothing.

    `logprobs` are those of the tokens behind this delta's content (empty lists allowed). A delta that
    carries a `finish_reason` is the choice's last. A legacy-functions request gets its call as a tool call
    and `tool_calls`; the pipeline renders it as `function_call`."""

    index: int
    content: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCallFragment] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    finish_reason: FinishReason | None = None

    @property
    def empty(self) -> bool:
        return not (self.content or self.reasoning or self.tool_calls or self.logprobs or self.finish_reason)


@dataclass(slots=True)
class Usage:
    """Tokens of one request as the engine counted them; `completion_tokens` includes `reasoning_tokens`."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens whose KV entries were reused rather than computed
    reasoning_tokens: int = 0


ToolChoiceKind = Literal["none", "auto", "required", "named"]


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What an engine can honour; the pipeline answers 400 naming a request field it can't."""

    logprobs: bool = True
    max_top_logprobs: int = 20
    seed: bool = True
    logit_bias: bool = True
    structured_output: bool = True  # response_format json_schema / json_object
    tools: bool = True
    tool_choice: frozenset[ToolChoiceKind] = frozenset({"none", "auto", "required", "named"})
    parallel_tool_calls: bool = True  # honours parallel_tool_calls false
    max_n: int | None = None  # None: any n the engine accepts (it checks its own capacity)
    reasoning: bool = False  # reports reasoning (thinking) apart from the content
    passthrough: bool = False  # forwards the fields of `ChatParams.passthrough` to an upstream that knows them


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

    `usage.prompt_tokens` is known when the generation is returned; the rest is kept up to date by the engine
    as deltas arrive and is final once the iteration ends. Steps pushed while the pipeline was busy come out
    as one: what has already arrived goes to the client together, in one write rather than one per step.
    """

    def __init__(self, prompt_tokens: int, stop: Callable[[int | None, bool], None]) -> None:
        self.usage = Usage(prompt_tokens=prompt_tokens)
        self._items: deque[object] = deque()  # delta lists, then `_END` or the error that ended it
        self._waiter: asyncio.Future[None] | None = None
        self._stop = stop
        self._done = False

    # --- engine side: called on the event loop (engines in threads use call_soon_threadsafe) -------------
    def push(self, deltas: list[Delta], done: bool) -> None:
        if deltas:
            self._items.append(deltas)
        if done:
            self._items.append(_END)
        self._wake()

    def fail(self, error: PipeserveError) -> None:
        self._items.append(error)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # --- pipeline side --------------------------------------------------------------------------------
    def __aiter__(self) -> AsyncIterator[list[Delta]]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[list[Delta]]:
        items = self._items
        while True:
            while not items:
                self._waiter = asyncio.get_running_loop().create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
            item = items.popleft()
            if isinstance(item, list):
                step: list[Delta] = item
                if items and isinstance(items[0], list):
                    step = list(step)  # the engine's own list is left as it was
                    while items and isinstance(items[0], list):
                        step += items.popleft()  # type: ignore[arg-type]
                yield step
                continue
            self._done = True
            if isinstance(item, PipeserveError):
                raise item
            return

    def stop(self, choice: int | None = None, *, keep_cache: bool) -> None:
        """Stop generating one choice or all of them. Idempotent.

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
    # An engine of another server: its being unavailable makes this server degraded (the upstream is down for
    # every replica alike), not unhealthy, so load balancers keep it serving its other models.
    remote: bool = False

    @property
    @abstractmethod
    def context_window(self) -> int | None:
        """The most tokens (prompt + completion) one request may use; None when unknown (an upstream that
        doesn't say)."""

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

    def listed_models(self) -> list[str]:
        """The model names an upstream says it serves (its `GET /models`), for a provider's routes in
        `GET /v1/models`; empty when unknown."""
        return []

    def problem(self) -> str | None:
        """Why the engine can't serve right now (stopped, restarting, stalled), or None when it can.
        Requests then get a 503 and `/health` answers 503 naming it."""
        return None
