"""`POST /chat/completions` end to end: the response cache, the generation, the judges and the request log.

A request is understood once: its `op-*` headers parsed, its body validated and turned into `ChatParams`, its
model resolved; a completion is serialised once for the client and the log (and once more, unjudged, for the
cache when judges ran).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import orjson

from pipeserve.errors import ModelNotFoundError, ModelRateLimitError, PipeserveError, StoreUnavailableError
from pipeserve.params import ChatParams
from pipeserve.protocol import chat_completions as wire
from pipeserve.service.cache import OFF, CacheMode, ResponseCache, cache_key, cache_mode, replay
from pipeserve.service.chat import SSE_DONE, ChatService, EventStream, sse
from pipeserve.service.criteria import Criterion
from pipeserve.service.edge import to_params
from pipeserve.service.grading import Grader, judgement_rows, requested_criteria
from pipeserve.service.limits import Limits
from pipeserve.service.models import ServedModel
from pipeserve.service.rate_limits import RateLimiter, Ticket
from pipeserve.service.recording import Call, Recorder, header_flag, log_decision, parse_tags
from pipeserve.service.stages import StagedRequest, Stages
from pipeserve.validation import validate

log = logging.getLogger("pipeserve.chat")

CLIENT_GONE = 499  # nginx's status for a client that closed the connection: only metrics see it


@dataclass
class _Request:
    """One chat completion request as the pipeline sees it, once its headers and body are understood."""

    body: dict[str, Any]
    call: Call
    params: ChatParams
    served: ServedModel
    mode: CacheMode = OFF
    cache_key: str = ""
    criteria: tuple[Criterion, ...] = ()
    staged: StagedRequest | None = None  # content filtering and speech, when the request has them


class ChatCompletions:
    def __init__(
        self,
        chat: ChatService,
        recorder: Recorder,
        cache: ResponseCache,
        grader: Grader,
        log_by_default: bool,
        limits: Limits | None = None,
        rate_limits: RateLimiter | None = None,
        stages: Stages | None = None,
    ) -> None:
        self.chat = chat
        self.recorder = recorder
        self.cache = cache
        self.grader = grader
        self.log_by_default = log_by_default
        self.limits = limits or Limits()
        self.rate_limits = rate_limits or RateLimiter.off()
        self.stages = stages or Stages([])

    async def handle(
        self, body: dict[str, Any], headers: Mapping[str, str], project: str, key_id: str | None
    ) -> str | EventStream:
        """The answer: a plain completion's JSON, or the stream of a streamed one."""
        call = Call(project=project, key_id=key_id, source="chat", req_payload=body)
        request: _Request | None = None
        try:
            request = await self._understand(body, headers, call)
            answer = await self._answer(request)
        except PipeserveError as error:
            self._count(request, str(error.status_code))
            await self._record_error(call, error)
            raise
        except asyncio.CancelledError:
            self._count(request, str(CLIENT_GONE))
            raise
        self._count(request, "200")
        return answer

    def _count(self, request: _Request | None, status: str) -> None:
        if self.chat.metrics is not None:
            self.chat.metrics.count_request(request.served.config.id if request else "unknown", status)

    async def _understand(self, body: dict[str, Any], headers: Mapping[str, str], call: Call) -> _Request:
        # The logging rule needs op-log-request even when the header is malformed (it then counts as absent),
        # so that the refused request is logged or not as the rest of the request asks.
        try:
            flag, flag_error = header_flag(headers, "op-log-request"), None
        except PipeserveError as error:
            flag, flag_error = None, error
        store = body.get("store")
        call.log = log_decision(flag, store if isinstance(store, bool) else None, self.log_by_default)
        # Before validation, so that a rejected request is still found by its metadata.
        call.tags = parse_tags(headers)
        self.limits.check_keys(call.tags, "op-tags")
        call.metadata = {**call.tags, **_string_pairs(body.get("metadata"))}
        if flag_error is not None:
            raise flag_error
        wire_request = validate(wire.ChatCompletionRequest, body)
        self.limits.check_chat(wire_request)
        params = to_params(wire_request)
        served = self.chat.models.resolve(params.model)
        params, staged = self.stages.prepare(call.project, served, params)
        request = _Request(body=body, call=call, params=params, served=served, mode=cache_mode(headers), staged=staged)
        if request.mode.active:
            request.cache_key = cache_key(body, request.served.config.id)
        refs = requested_criteria(headers)
        if refs:
            request.criteria = tuple(await self.grader.resolve(call.project, refs))
        return request

    async def _answer(self, request: _Request) -> str | EventStream:
        if request.mode.read:
            try:
                hit = await self.cache.get(request.call.project, request.cache_key)
            except StoreUnavailableError:
                # The cache lives in the store: while it is away a read is a miss, and the model answers.
                hit = None
            if hit is not None:
                return await self._from_cache(request, wire.ChatCompletion.model_validate(hit))
        params = request.params
        # Rate limits: admitted on the model that generates, just before it starts; tokens settled at the real
        # usage, concurrency slots held until the answer or stream ends. A model's own limit sends the request
        # to its fallbacks, in order, before it is a 429.
        ticket, params, served = await self._admit(request)
        if params.stream:
            grade = self._stream_grade(request) if request.criteria else None
            on_end = ticket.settling(self._on_stream_end(request))
            stream = await ticket.streaming(self.chat.stream(params, request.call, on_end, grade, served))
            return request.staged.stream(stream) if request.staged is not None else stream
        completion = await ticket.completing(self.chat.complete(params, request.call, served))
        raw = completion.model_dump_json()
        await self._cache_put(request, raw)  # as the model answered: stages run again on a hit
        if request.criteria:
            completion = await self._grade(request, completion, best_first=True)
            raw = completion.model_dump_json()
        if request.staged is not None:  # after the judges, who read the text as written
            completion = await request.staged.complete(completion)
            raw = completion.model_dump_json()
        await self._record(request, completion, raw, streamed=False)
        return raw

    async def _admit(self, request: _Request) -> tuple[Ticket, ChatParams, ServedModel]:
        """The rate-limit ticket of the first model, of the one asked for and its fallbacks, whose own limits
        have room; the 429 of the one asked for when none has."""
        params, served = request.params, request.served
        refused: ModelRateLimitError | None = None
        for name in [None, *served.fallbacks]:
            try:
                if name is not None:
                    served, params = self.chat.models.resolve(name), replace(request.params, model=name)
                return await self.rate_limits.admit(request.call.key_id, served.config.id, params), params, served
            except ModelRateLimitError as error:
                refused = refused or error
            except ModelNotFoundError:
                if name is None:
                    raise
                log.warning("fallback %s of %s is not served; skipped", name, request.params.model)
        assert refused is not None
        raise refused

    async def _grade(
        self, request: _Request, completion: wire.ChatCompletion, *, best_first: bool
    ) -> wire.ChatCompletion:
        if not request.criteria:
            return completion
        grades = await self.grader.grade(list(request.criteria), request.body, completion)
        return grades.apply(completion, best_first=best_first)

    def _stream_grade(self, request: _Request) -> Any:
        async def grade(completion: wire.ChatCompletion) -> wire.ChatCompletion:
            # A stream's choices are already out under their indices: results come without reordering.
            return await self._grade(request, completion, best_first=False)

        return grade

    async def _from_cache(self, request: _Request, completion: wire.ChatCompletion) -> str | EventStream:
        request.call.mark_first_token()
        params = request.params
        if not params.stream:
            completion = await self._grade(request, completion, best_first=True)
            if request.staged is not None:
                completion = await request.staged.complete(completion)
            raw = completion.model_dump_json()
            await self._record(request, completion, raw, streamed=False, cache_hit=True)
            return raw

        async def chunks() -> AsyncGenerator[bytes, None]:
            judged = await self._grade(request, completion, best_first=False)
            for chunk in replay(judged, params.include_usage, criteria=bool(request.criteria)):
                yield sse(chunk.model_dump_json().encode())
            if request.staged is not None:
                judged = request.staged.merged(judged)
            await self._record(request, judged, judged.model_dump_json(), streamed=True, cache_hit=True)
            yield SSE_DONE

        stream = EventStream(chunks())
        return request.staged.stream(stream) if request.staged is not None else stream

    def _on_stream_end(self, request: _Request) -> Any:
        async def on_end(completion: wire.ChatCompletion | None, error: PipeserveError | None) -> None:
            if completion is not None:
                raw = completion.model_dump_json()
                await self._cache_put(request, _unjudged(completion).model_dump_json() if request.criteria else raw)
                if request.staged is not None:  # logged as the client received it
                    completion = request.staged.merged(completion)
                    raw = completion.model_dump_json()
                await self._record(request, completion, raw, streamed=True)
            elif error is not None:
                await self._record_error(request.call, error)

        return on_end

    async def _cache_put(self, request: _Request, raw: str) -> None:
        """The completion as generated (`raw`, its JSON): judges run again on a hit, for whichever criteria
        it asks."""
        if not request.mode.write:
            return
        try:
            await self.cache.put(
                request.call.project, request.cache_key, request.served.config.id, orjson.Fragment(raw)
            )
        except Exception:  # the answer is still good; only a later request misses the cache
            log.exception("could not store a response in the cache")

    async def _record(
        self,
        request: _Request,
        completion: wire.ChatCompletion,
        raw: str,
        *,
        streamed: bool,
        cache_hit: bool = False,
    ) -> None:
        payload: Any
        if streamed and not request.params.include_usage:
            payload = orjson.loads(raw)
            payload["usage"] = None  # what the openai SDK assembles from chunks without a usage chunk
        else:
            payload = orjson.Fragment(raw)  # stored as is: no dict round trip
        usage = completion.usage
        try:
            await self.recorder.record(
                request.call,
                status_code=200,
                resp_payload=payload,
                cache_hit=cache_hit,
                model=completion.model,
                usage=(usage.prompt_tokens, usage.completion_tokens),
                completion_id=completion.id,
                judgements=judgement_rows(completion, request.criteria) if request.criteria else None,
            )
        except Exception:  # the client still gets its answer; the failure is in the server's log
            log.exception("could not log a chat completion")

    async def _record_error(self, call: Call, error: PipeserveError) -> None:
        try:
            await self.recorder.record(call, status_code=error.status_code, error_message=error.message)
        except Exception:
            log.exception("could not log a failed chat completion")


def _unjudged(completion: wire.ChatCompletion) -> wire.ChatCompletion:
    choices = [choice.model_copy(update={"criteria_results": {}}) for choice in completion.choices]
    usage = completion.usage.model_copy(update={"criteria": {}})
    return completion.model_copy(update={"choices": choices, "usage": usage})


def _string_pairs(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}
