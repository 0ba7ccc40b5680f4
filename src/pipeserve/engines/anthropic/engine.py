"""The Anthropic engine: chat completions served by Anthropic's Messages API, over HTTP (`pipeserve.upstream.http`).

Every request streams from Anthropic, whether or not the client streams: one code path, and a client that
leaves stops the upstream work (its stream is closed). `generate` returns once every choice's stream has
begun (`message_start`, which also gives the prompt's tokens), so a request Anthropic refuses, or one that
fails all its retries, is an HTTP error rather than an error event in a stream. `n` > 1 runs n requests
concurrently, one per choice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass, field

import orjson
from pydantic import SecretStr, ValidationError

from pipeserve.engines.anthropic.options import AnthropicOptions
from pipeserve.engines.anthropic.request import Plan, build_request
from pipeserve.engines.anthropic.stream import ChoiceReader, MalformedStream, StreamError
from pipeserve.engines.base import Capabilities, Delta, Engine, EngineStats, Generation
from pipeserve.errors import (
    ContextLengthExceededError,
    EngineError,
    EngineUnavailableError,
    InvalidRequestError,
    PipeserveError,
    StartupError,
    UpstreamTimeoutError,
)
from pipeserve.params import ChatParams
from pipeserve.settings import ModelConfig
from pipeserve.upstream import (
    Admission,
    ConnectionDropped,
    HttpClient,
    Lease,
    ReplicaPool,
    Response,
    RetryPolicy,
    ServerSentEvent,
    Timeouts,
    TransportError,
    UpstreamContext,
    UpstreamFailure,
    failure_from_exception,
    failure_from_status,
    make_client,
    redact_url,
    sse_events,
    unreadable,
    with_retries,
)

log = logging.getLogger("pipeserve.anthropic")

_Events = AsyncIterator[ServerSentEvent]
_DRAIN = 0.05  # seconds to wait for the end of a body after `message_stop`, so its connection is kept


@dataclass(slots=True)
class _Request:
    """One client request: its generation and the upstream request of each choice."""

    generation: Generation
    plan: Plan
    readers: list[ChoiceReader]
    tasks: dict[int, asyncio.Task[None]] = field(default_factory=dict)
    started: list[asyncio.Future[None]] = field(default_factory=list)
    ended: set[int] = field(default_factory=set)  # choices finished or stopped
    failed: bool = False


class AnthropicEngine(Engine):
    remote = True

    def __init__(self, config: ModelConfig, *, max_waiting: int) -> None:
        try:
            self.options = AnthropicOptions.model_validate(config.engine_options)
        except ValidationError as exc:
            raise ValueError(f"model {config.id!r}: invalid anthropic options: {exc}") from exc
        options = self.options
        self.model_id = config.id
        self.upstream_model = options.model or config.id
        self.capabilities = Capabilities(
            logprobs=False,
            max_top_logprobs=0,
            seed=False,
            logit_bias=False,
            reasoning=options.thinking_budget is not None,
        )
        self._context = UpstreamContext(config.id, redact_url(options.base_url), options.api_key_env)
        self._admission = Admission(config.id, options.max_concurrent, max_waiting)
        self._pool = ReplicaPool(config.id, [options.base_url])
        self._retries = RetryPolicy(max_attempts=options.max_attempts)
        self._client: HttpClient | None = None
        self._key = SecretStr("")
        self._requests: set[asyncio.Task[None]] = set()

    # --- lifecycle ---------------------------------------------------------------------------------------
    @property
    def context_window(self) -> int | None:
        return None  # Anthropic refuses a prompt too long for the model itself, with its own message

    async def start(self) -> None:
        key = os.environ.get(self.options.api_key_env, "")
        if not key:
            raise StartupError(
                f"model {self.model_id!r}: the environment variable {self.options.api_key_env} (its "
                "`api_key_env`) is not set; export it with the Anthropic API key before starting pipeserve"
            )
        self._key = SecretStr(key)
        # Some upstreams echo a key they refuse: the context scrubs it from any message quoting them.
        self._context = UpstreamContext(self.model_id, self._context.upstream, self.options.api_key_env, (key,))
        options = self.options
        self._client = make_client(
            Timeouts(connect=options.connect_timeout, read=options.read_timeout, total=options.total_timeout),
            max_connections=options.max_concurrent,
        )

    async def close(self) -> None:
        for task in list(self._requests):
            task.cancel()
        if self._requests:
            await asyncio.gather(*self._requests, return_exceptions=True)
        if self._client is not None:
            await self._client.close()
            self._client = None

    def problem(self) -> str | None:
        if self._client is None:
            return "the engine is not started"
        return self._pool.problem()

    def stats(self) -> EngineStats:
        return EngineStats(
            running_sequences=self._admission.running,
            waiting_requests=self._admission.waiting,
            kv_cells_used=0,
            kv_cells_total=0,
        )

    # --- requests ----------------------------------------------------------------------------------------
    async def generate(self, params: ChatParams) -> Generation:
        problem = self.problem()
        if problem is not None:
            raise EngineUnavailableError(
                f"The model {self.model_id} can't serve right now ({problem}). Retry in a moment; "
                "GET /health shows when it is back."
            )
        plan = build_request(params, self.options, params.upstream_model or self.upstream_model)
        readers = [ChoiceReader(i, plan) for i in range(params.n)]
        request = _Request(Generation(0, lambda choice, _keep: self._stop(request, choice)), plan, readers)
        loop = asyncio.get_running_loop()
        for reader in readers:
            started: asyncio.Future[None] = loop.create_future()
            request.started.append(started)
            task = asyncio.create_task(self._choice(request, reader, started), name=f"{self.model_id}:choice")
            request.tasks[reader.index] = task
            self._requests.add(task)
            task.add_done_callback(self._requests.discard)
        try:
            for started in request.started:
                await asyncio.shield(started)
        except BaseException:
            request.failed = True  # the error goes to the caller, not into the generation
            self._stop(request, None)
            for started in request.started:  # the other choices' outcomes are moot: mark them read
                started.add_done_callback(lambda f: f.cancelled() or f.exception())
            raise
        self._update_usage(request)
        return request.generation

    def _stop(self, request: _Request, choice: int | None) -> None:
        """Stop choices (the client is gone, or has what it wants): their upstream streams are closed."""
        for index, task in request.tasks.items():
            if choice is None or index == choice:
                task.cancel()

    async def _choice(self, request: _Request, reader: ChoiceReader, started: asyncio.Future[None]) -> None:
        """One choice's upstream request, from its turn in admission to its end. Its outcome goes to `started`
        until its first content (so `generate` raises it), then into the generation."""
        acquired = False
        try:
            await self._admission.acquire()
            acquired = True
            await self._stream(request, reader, started)
        except asyncio.CancelledError:  # stopped: by the pipeline, by a failed sibling, or by `close`
            if not started.done():
                started.set_exception(EngineUnavailableError(f"The model {self.model_id} is shutting down."))
            self._ended(request, reader.index, [])
            raise
        except PipeserveError as exc:
            self._settle(request, started, exc)
        except Exception as exc:  # a bug here must not leave the request waiting forever
            log.exception("%s: the request to Anthropic failed unexpectedly", self.model_id)
            self._settle(request, started, EngineError(f"The Anthropic engine failed: {exc!r}"))
        finally:
            if acquired:
                self._admission.release()

    def _settle(self, request: _Request, started: asyncio.Future[None], error: PipeserveError) -> None:
        """A choice failed: before its first content the error is `generate`'s; after, the generation's."""
        if not started.done():
            started.set_exception(error)
        elif not request.failed:
            request.failed = True
            request.generation.fail(error)
            self._stop(request, None)

    async def _stream(self, request: _Request, reader: ChoiceReader, started: asyncio.Future[None]) -> None:
        assert self._client is not None
        total = self.options.total_timeout
        deadline = time.monotonic() + total
        response: Response | None = None
        events: _Events | None = None
        lease: Lease | None = None
        try:
            async with asyncio.timeout(total):
                (response, stream, first), lease = await with_retries(
                    self._pool,
                    self._retries,
                    lambda lease: self._attempt(lease, request.plan, reader),
                    deadline=deadline,
                )
                events = stream
                self._update_usage(request)
                started.set_result(None)
                if reader.finished:
                    self._ended(request, reader.index, first)
                    return
                request.generation.push(first, False)
                async for event in stream:
                    deltas = reader.feed(event.data)
                    self._update_usage(request)
                    if reader.finished:
                        self._ended(request, reader.index, deltas)
                        return
                    if deltas:
                        request.generation.push(deltas, False)
                raise MalformedStream("the event stream ended before message_stop")
        except (StreamError, MalformedStream, TransportError) as exc:
            failure = self._read_failure(exc)
            if lease is not None and failure.replica_fault:
                lease.failed(failure.error.message)  # the stream broke after it began: the breaker counts it
            raise failure.error from None
        except TimeoutError:
            raise UpstreamTimeoutError(
                f"Anthropic took longer than the model's total_timeout ({total:g} s) to answer model "
                f"{self.model_id!r}; retry later, or raise `total_timeout`."
            ) from None
        finally:
            if isinstance(events, AsyncGenerator):  # finished now, not when collected
                with contextlib.suppress(Exception):
                    await events.aclose()
            if response is not None:
                await response.close(drain=_DRAIN if reader.finished else 0.0)
            if lease is not None:
                lease.close()

    async def _attempt(self, lease: Lease, plan: Plan, reader: ChoiceReader) -> tuple[Response, _Events, list[Delta]]:
        """One try: send the request and read up to its first content (with the deltas of that event), so
        that a refusal, an overload or an error event before any content is an error of `generate`, and can
        be retried."""
        assert self._client is not None
        headers = {
            **self.options.headers,
            "x-api-key": self._key.get_secret_value(),
            "anthropic-version": self.options.anthropic_version,
            "accept": "text/event-stream",
        }
        body = orjson.dumps(plan.body)
        try:
            response = await self._client.request("POST", f"{lease.url}/v1/messages", body=body, headers=headers)
        except TransportError as exc:
            raise failure_from_exception(exc, self._context) from None
        reader.reset()
        try:
            if response.status != 200:
                raise self._failure(response.status, await response.read(), response.headers)
            events = sse_events(response.lines())
            async for event in events:
                deltas = reader.feed(event.data)
                if deltas or reader.finished:
                    return response, events, deltas
            raise ConnectionDropped("the stream ended before its first content")
        except (StreamError, MalformedStream, TransportError) as exc:
            await response.close()
            raise self._read_failure(exc) from None
        except BaseException:
            await response.close()
            raise

    def _read_failure(self, exc: StreamError | MalformedStream | TransportError) -> UpstreamFailure:
        """The failure behind an error while reading Anthropic's stream."""
        if isinstance(exc, StreamError):
            return self._failure(exc.status, json.dumps(exc.payload).encode(), {})
        if isinstance(exc, MalformedStream):
            return unreadable(self._context, str(exc))
        return failure_from_exception(exc, self._context)

    def _failure(self, status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamFailure:
        failure = failure_from_status(status, body, headers, self._context)
        error = failure.error
        if type(error) is InvalidRequestError and "prompt is too long" in error.message:
            # Anthropic's wording for a prompt beyond the model's context window.
            failure.error = ContextLengthExceededError(error.message, param="messages")
        return failure

    def _ended(self, request: _Request, index: int, deltas: list[Delta]) -> None:
        if index in request.ended:
            return
        request.ended.add(index)
        done = len(request.ended) == len(request.readers)
        if not request.failed and (deltas or done):
            request.generation.push(deltas, done)

    @staticmethod
    def _update_usage(request: _Request) -> None:
        # One prompt for all the choices: counted once; the completions add up.
        usage, readers = request.generation.usage, request.readers
        usage.prompt_tokens = max(r.prompt_tokens for r in readers)
        usage.cached_tokens = max(r.cached_tokens for r in readers)
        usage.completion_tokens = sum(r.completion_tokens for r in readers)
        usage.reasoning_tokens = sum(r.reasoning_tokens for r in readers)
