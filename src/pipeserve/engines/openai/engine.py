"""The `openai` engine: a model served by an OpenAI-compatible upstream (vLLM, SGLang, llama-server, OpenAI,
another pipeserve), over one or more replicas."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from typing import Any

import orjson
from pydantic import ValidationError

from pipeserve.engines.base import Capabilities, Engine, EngineStats, Generation
from pipeserve.engines.openai.options import OpenAIOptions
from pipeserve.engines.openai.run import Run
from pipeserve.engines.openai.stream import UpstreamStream
from pipeserve.engines.openai.translate import affinity_text, request_body
from pipeserve.errors import EngineUnavailableError, StartupError, UpstreamTimeoutError
from pipeserve.params import ChatParams
from pipeserve.settings import ModelConfig
from pipeserve.upstream import (
    Admission,
    HttpClient,
    Lease,
    Replica,
    ReplicaPool,
    RetryPolicy,
    Timeouts,
    TransportError,
    UpstreamContext,
    affinity_key,
    failure_from_exception,
    failure_from_status,
    make_client,
    with_retries,
)

log = logging.getLogger("pipeserve.openai")

_JSON = {"Content-Type": "application/json"}
_MAX_LISTED = 1000
_HEALTH_READ_TIMEOUT = 10.0  # seconds: a health check needs a prompt answer, not a generation's patience


class OpenAIEngine(Engine):
    # What an OpenAI-compatible upstream honours; one that refuses a field answers 400, passed on as such.
    capabilities = Capabilities(reasoning=True, passthrough=True)
    remote = True

    def __init__(self, config: ModelConfig, *, max_waiting: int) -> None:
        try:
            self.options = OpenAIOptions.model_validate(config.engine_options)
        except ValidationError as exc:
            raise ValueError(f"model {config.id!r}: invalid options of the openai engine: {exc}") from exc
        options = self.options
        self.model_id = config.id
        self.upstream_model = options.model or config.id
        self.pool = ReplicaPool(
            config.id,
            options.urls,
            breaker_threshold=options.breaker_threshold,
            breaker_cooldown=options.breaker_cooldown,
            affinity_slack=options.affinity_slack,
        )
        self.admission = Admission(config.id, options.max_concurrent, max_waiting)
        self.policy = RetryPolicy(options.max_attempts, options.retry_base_delay, options.retry_max_delay)
        self._max_model_len = options.max_model_len
        self._listed: list[str] = []  # what the upstream's GET /models names, for a provider's routes
        self._client: HttpClient | None = None
        self._runs: set[Run] = set()
        self._warned_no_usage = False
        self._secrets: tuple[str, ...] = ()  # the key, scrubbed from quoted upstream text

    def __repr__(self) -> str:
        return f"OpenAIEngine(model={self.model_id!r}, upstreams={[r.display for r in self.pool.replicas]})"

    # --- lifecycle ---------------------------------------------------------------------------------------
    async def start(self) -> None:
        options = self.options
        headers = dict(options.headers)
        if options.api_key_env is not None:
            key = os.environ.get(options.api_key_env)
            if not key:
                raise StartupError(
                    f"model {self.model_id!r}: the environment variable {options.api_key_env} (its `api_key_env`) "
                    "is not set; export it with the upstream's API key, or remove `api_key_env` if it needs none"
                )
            headers["Authorization"] = f"Bearer {key}"
            self._secrets = (key,)
        self._client = make_client(
            Timeouts(options.connect_timeout, options.read_timeout, options.total_timeout), headers=headers
        )
        if options.health_interval > 0:
            await self.pool.check_health(self._probe)
            self.pool.start_health_checks(self._probe, options.health_interval)
        elif self._max_model_len is None:
            for replica in self.pool.replicas:  # no health checks: just learn the context window if we can
                try:
                    await self._probe(replica)
                    break
                except Exception as exc:
                    log.info("%s: %s did not tell its context window: %s", self.model_id, replica.display, exc)
        problem = self.pool.problem()
        if problem is not None:
            log.warning(
                "%s: starting without a usable upstream (%s); requests get 503 until one is", self.model_id, problem
            )

    async def close(self) -> None:
        await self.pool.stop_health_checks()
        closing = EngineUnavailableError(f"The model {self.model_id} is shutting down; retry on another replica.")
        for run in list(self._runs):
            await run.abort(closing)
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def _probe(self, replica: Replica) -> None:
        """A replica's health check: any answer of its `GET /models` but a 5xx or a refusal of our key is alive
        (a server without that route still serves). Reads the context window while it is unknown."""
        client = self._require_client()
        context = self._context(replica)
        try:
            response = await client.request("GET", f"{replica.url}/models", read_timeout=_HEALTH_READ_TIMEOUT)
            try:
                body = await response.read()
            finally:
                await response.close()
        except TransportError as exc:
            raise RuntimeError(failure_from_exception(exc, context).error.message) from exc
        if response.status in (401, 403) or response.status >= 500:
            failure = failure_from_status(response.status, body, response.headers, context)
            raise RuntimeError(failure.error.message)
        if response.status != 200:
            return
        try:
            entries = orjson.loads(body).get("data") or []
        except (ValueError, AttributeError):
            return
        if not isinstance(entries, list):
            return
        self._listed = _listed(entries)
        if self._max_model_len is None:
            self._max_model_len = _context_window(entries, self.upstream_model)
            if self._max_model_len is not None:
                log.info("%s: upstream context window: %d tokens", self.model_id, self._max_model_len)

    def listed_models(self) -> list[str]:
        return list(self._listed)

    # --- requests -------------------------------------------------------------------------------------------
    @property
    def context_window(self) -> int | None:
        return self._max_model_len

    def problem(self) -> str | None:
        if self._client is None:
            return "the engine is not running"
        return self.pool.problem()

    def stats(self) -> EngineStats:
        return EngineStats(
            running_sequences=self.admission.running,
            waiting_requests=self.admission.waiting,
            kv_cells_used=0,
            kv_cells_total=0,
        )

    def replicas(self) -> list[dict[str, Any]]:
        """Per-replica counters for /health: outstanding, requests, failures, breaker state, health."""
        return self.pool.snapshot()

    async def generate(self, params: ChatParams) -> Generation:
        problem = self.problem()
        if problem is not None:
            raise EngineUnavailableError(
                f"The model {self.model_id} can't serve right now ({problem}). "
                "Retry in a moment; GET /health shows when it is back."
            )
        options = self.options
        fan_out = params.n > 1 and not options.supports_n
        bodies = [self._body(params, i if fan_out else None) for i in range(params.n if fan_out else 1)]
        chars = options.affinity_prefix_chars
        affinity = affinity_key(affinity_text(bodies[0], chars), chars) if chars else None
        await self.admission.acquire()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + options.total_timeout
        try:
            async with asyncio.timeout_at(deadline):
                streams = await self._open_all(bodies, affinity, deadline - loop.time() + time.monotonic())
        except TimeoutError:
            self.admission.release()
            raise self.total_timeout_error() from None
        except BaseException:
            self.admission.release()
            raise
        run = Run(
            self,
            streams,
            choices=params.n,
            fan_out=fan_out,
            deadline=deadline,
            on_end=self._run_ended,
        )
        self._runs.add(run)
        run.start()
        return run.generation

    def _run_ended(self, run: Run) -> None:
        self._runs.discard(run)
        self.admission.release()
        if run.without_usage and not self._warned_no_usage:
            self._warned_no_usage = True
            log.warning(
                "%s: the upstream sends no usage; completion tokens are counted from the chunks (one token each) "
                "and prompt tokens are unknown (0)",
                self.model_id,
            )

    def total_timeout_error(self) -> UpstreamTimeoutError:
        return UpstreamTimeoutError(
            f"The upstream of model {self.model_id!r} did not finish within its total_timeout "
            f"({self.options.total_timeout:g} s); retry later, or raise `total_timeout`."
        )

    def _body(self, params: ChatParams, fan_index: int | None) -> dict[str, Any]:
        options = self.options
        if fan_index is not None and params.sampling.seed is not None:  # one seed would give n identical choices
            sampling = dataclasses.replace(params.sampling, seed=params.sampling.seed + fan_index)
            params = dataclasses.replace(params, sampling=sampling)
        return request_body(
            params,
            model=params.upstream_model or self.upstream_model,
            max_tokens_field=options.max_tokens_field,
            n=None if fan_index is None else 1,
            extra=options.extra_body,
        )

    async def _open_all(
        self, bodies: list[dict[str, Any]], affinity: str | None, deadline: float
    ) -> list[UpstreamStream]:
        """Open every upstream request (one, or n for a fan-out) up to its first content; if one fails, close
        the others."""
        if len(bodies) == 1:  # in this task: `_open` closes what it opened when it fails or is cancelled
            return [await self._open(bodies[0], affinity, deadline)]
        tasks = [asyncio.create_task(self._open(body, affinity, deadline)) for body in bodies]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for result in results:
                if isinstance(result, UpstreamStream):
                    await result.close()
            raise

    async def _open(self, body: dict[str, Any], affinity: str | None, deadline: float) -> UpstreamStream:
        client = self._require_client()
        choices = int(body.get("n", 1))
        streamed = bool(body.get("stream"))
        payload = orjson.dumps(body)

        async def attempt(lease: Lease) -> UpstreamStream:
            context = self._context(lease.replica)
            try:
                # A plain answer comes whole at the end: no read can come sooner than the generation's end,
                # which the total timeout bounds.
                read_timeout = None if streamed else self.options.total_timeout
                response = await client.request(
                    "POST", f"{lease.url}/chat/completions", body=payload, headers=_JSON, read_timeout=read_timeout
                )
            except TransportError as exc:
                raise failure_from_exception(exc, context) from exc
            stream = UpstreamStream(response, context, lease, choices)
            try:
                if response.status != 200:
                    raw = await stream.guard(response.read())
                    raise failure_from_status(response.status, raw, response.headers, context)
                await stream.read_first()
            except BaseException:
                await asyncio.shield(response.close())
                raise
            return stream

        stream, _ = await with_retries(self.pool, self.policy, attempt, deadline=deadline, affinity=affinity)
        return stream

    def _context(self, replica: Replica) -> UpstreamContext:
        return UpstreamContext(self.model_id, replica.display, self.options.api_key_env, self._secrets)

    def _require_client(self) -> HttpClient:
        if self._client is None:
            raise EngineUnavailableError(f"The model {self.model_id} is not running.")
        return self._client


def _listed(entries: list[Any]) -> list[str]:
    """The model ids of an upstream's `GET /models` answer (at most a thousand)."""
    ids = [e["id"] for e in entries if isinstance(e, dict) and isinstance(e.get("id"), str)]
    return ids[:_MAX_LISTED]


def _context_window(entries: list[Any], model: str) -> int | None:
    """The context window an upstream's `GET /models` reports for `model` (vLLM and SGLang: `max_model_len`;
    some gateways: `context_length` or `context_window`)."""
    entries = [e for e in entries if isinstance(e, dict)]
    matching = [e for e in entries if e.get("id") == model] or (entries if len(entries) == 1 else [])
    for entry in matching:
        for key in ("max_model_len", "context_length", "context_window"):
            value = entry.get(key)
            if isinstance(value, int) and value > 0:
                return value
    return None
