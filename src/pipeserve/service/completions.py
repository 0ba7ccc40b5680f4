"""`POST /chat/completions` end to end: the response cache, the generation, the judges and the request log."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from pipeserve.errors import PipeserveError
from pipeserve.params import ChatParams
from pipeserve.protocol import chat_completions as wire
from pipeserve.service.cache import OFF, CacheMode, ResponseCache, cache_key, cache_mode, replay
from pipeserve.service.chat import SSE_DONE, ChatService, EventStream, sse
from pipeserve.service.criteria import Criterion
from pipeserve.service.edge import to_params
from pipeserve.service.grading import Grader, judgement_rows, requested_criteria
from pipeserve.service.recording import Call, Recorder, header_flag, parse_tags, should_log
from pipeserve.validation import validate

log = logging.getLogger("pipeserve.chat")


@dataclass
class _Request:
    """One chat completion request as the pipeline sees it, once its headers and body are understood."""

    body: dict[str, Any]
    call: Call
    params: ChatParams
    mode: CacheMode = OFF
    cache_key: str = ""
    model_id: str = ""
    criteria: tuple[Criterion, ...] = ()


class ChatCompletions:
    def __init__(
        self,
        chat: ChatService,
        recorder: Recorder,
        cache: ResponseCache,
        grader: Grader,
        log_by_default: bool,
    ) -> None:
        self.chat = chat
        self.recorder = recorder
        self.cache = cache
        self.grader = grader
        self.log_by_default = log_by_default

    async def handle(
        self, body: dict[str, Any], headers: Mapping[str, str], project: str, key_id: str | None
    ) -> wire.ChatCompletion | EventStream:
        store = body.get("store")
        call = Call(project=project, key_id=key_id, source="chat", req_payload=body)
        try:
            call.log = should_log(headers, store if isinstance(store, bool) else None, self.log_by_default)
            header_flag(headers, "op-log-request")
            call.tags = parse_tags(headers)
            # Before validation, so that a rejected request is still found by its metadata.
            call.metadata = {**call.tags, **_string_pairs(body.get("metadata"))}
            request = await self._understand(body, headers, call)
            if request.mode.read:
                hit = await self.cache.get(project, request.cache_key)
                if hit is not None:
                    return await self._from_cache(request, wire.ChatCompletion.model_validate(hit))
            if request.params.stream:
                grade = self._stream_grade(request) if request.criteria else None
                return await self.chat.stream(request.params, call, self._on_stream_end(request), grade)
            completion = await self.chat.complete(request.params, call)
        except PipeserveError as error:
            await self._record_error(call, error)
            raise
        await self._cache_put(request, completion)
        completion = await self._grade(request, completion, best_first=True)
        await self._record(request, completion, streamed=False)
        return completion

    async def _understand(self, body: dict[str, Any], headers: Mapping[str, str], call: Call) -> _Request:
        params = to_params(validate(wire.ChatCompletionRequest, body))
        request = _Request(body=body, call=call, params=params, mode=cache_mode(headers))
        request.model_id = self.chat.models.resolve(params.model).config.id
        if request.mode.active:
            request.cache_key = cache_key(body, request.model_id)
        refs = requested_criteria(headers)
        if refs:
            request.criteria = tuple(await self.grader.resolve(call.project, refs))
        return request

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

    async def _from_cache(
        self, request: _Request, completion: wire.ChatCompletion
    ) -> wire.ChatCompletion | EventStream:
        request.call.mark_first_token()
        params = request.params
        if not params.stream:
            completion = await self._grade(request, completion, best_first=True)
            await self._record(request, completion, streamed=False, cache_hit=True)
            return completion

        async def chunks() -> AsyncGenerator[bytes, None]:
            judged = await self._grade(request, completion, best_first=False)
            for chunk in replay(judged, params.include_usage, criteria=bool(request.criteria)):
                yield sse(chunk.model_dump_json().encode())
            await self._record(request, judged, streamed=True, cache_hit=True)
            yield SSE_DONE

        return EventStream(chunks())

    def _on_stream_end(self, request: _Request) -> Any:
        async def on_end(completion: wire.ChatCompletion | None, error: PipeserveError | None) -> None:
            if completion is not None:
                await self._cache_put(request, _unjudged(completion))
                await self._record(request, completion, streamed=True)
            elif error is not None:
                await self._record_error(request.call, error)

        return on_end

    async def _cache_put(self, request: _Request, completion: wire.ChatCompletion) -> None:
        """The completion as generated: judges run again on a hit, for whichever criteria it asks."""
        if not request.mode.write:
            return
        try:
            await self.cache.put(
                request.call.project, request.cache_key, request.model_id, completion.model_dump(mode="json")
            )
        except Exception:  # the answer is still good; only a later request misses the cache
            log.exception("could not store a response in the cache")

    async def _record(
        self,
        request: _Request,
        completion: wire.ChatCompletion,
        *,
        streamed: bool,
        cache_hit: bool = False,
    ) -> None:
        payload: Any
        if streamed and not request.params.include_usage:
            payload = completion.model_dump(mode="json")
            payload["usage"] = None  # what the openai SDK assembles from chunks without a usage chunk
        else:
            payload = orjson.Fragment(completion.model_dump_json())  # stored as is: no dict round trip
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
