"""`POST /chat/completions` end to end: the response cache, the generation and the request log."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

from pipeserve.errors import PipeserveError
from pipeserve.params import ChatParams
from pipeserve.protocol import chat_completions as wire
from pipeserve.service.cache import CacheMode, ResponseCache, cache_key, cache_mode, replay
from pipeserve.service.chat import SSE_DONE, ChatService, sse
from pipeserve.service.edge import to_params
from pipeserve.service.recording import Call, Recorder, header_flag, parse_tags, should_log
from pipeserve.validation import validate

log = logging.getLogger("pipeserve.chat")


class ChatCompletions:
    def __init__(self, chat: ChatService, recorder: Recorder, cache: ResponseCache, log_by_default: bool) -> None:
        self.chat = chat
        self.recorder = recorder
        self.cache = cache
        self.log_by_default = log_by_default

    async def handle(
        self, body: dict[str, Any], headers: Mapping[str, str], project: str, key_id: str | None
    ) -> wire.ChatCompletion | AsyncIterator[bytes]:
        store = body.get("store")
        call = Call(project=project, key_id=key_id, source="chat", req_payload=body)
        try:
            call.log = should_log(headers, store if isinstance(store, bool) else None, self.log_by_default)
            header_flag(headers, "op-log-request")
            call.tags = parse_tags(headers)
            # Before validation, so that a rejected request is still found by its metadata.
            call.metadata = {**call.tags, **_string_pairs(body.get("metadata"))}
            params = to_params(validate(wire.ChatCompletionRequest, body))
            mode = cache_mode(headers)
            model_id = self.chat.models.resolve(params.model).config.id
            key = cache_key(body, model_id) if mode.active else ""
            if mode.read:
                hit = await self.cache.get(project, key)
                if hit is not None:
                    return await self._from_cache(call, params, wire.ChatCompletion.model_validate(hit))
            if params.stream:
                return await self.chat.stream(params, call, self._on_stream_end(call, params, mode, key, model_id))
            completion = await self.chat.complete(params, call)
        except PipeserveError as error:
            await self._record_error(call, error)
            raise
        await self._store(call, params, mode, key, model_id, completion, streamed=False)
        return completion

    async def _from_cache(
        self, call: Call, params: ChatParams, completion: wire.ChatCompletion
    ) -> wire.ChatCompletion | AsyncIterator[bytes]:
        call.mark_first_token()
        if not params.stream:
            await self._record(call, completion, streamed=False, cache_hit=True)
            return completion

        async def chunks() -> AsyncIterator[bytes]:
            for chunk in replay(completion, params.include_usage):
                yield sse(chunk.model_dump_json().encode())
            await self._record(call, completion, streamed=True, cache_hit=True, include_usage=params.include_usage)
            yield SSE_DONE

        return chunks()

    def _on_stream_end(self, call: Call, params: ChatParams, mode: CacheMode, key: str, model_id: str) -> Any:
        async def on_end(completion: wire.ChatCompletion | None, error: PipeserveError | None) -> None:
            if completion is not None:
                await self._store(call, params, mode, key, model_id, completion, streamed=True)
            elif error is not None:
                await self._record_error(call, error)

        return on_end

    async def _store(
        self,
        call: Call,
        params: ChatParams,
        mode: CacheMode,
        key: str,
        model_id: str,
        completion: wire.ChatCompletion,
        *,
        streamed: bool,
    ) -> None:
        if mode.write:
            try:
                await self.cache.put(call.project, key, model_id, completion.model_dump(mode="json"))
            except Exception:  # the answer is still good; only a later request misses the cache
                log.exception("could not store a response in the cache")
        await self._record(call, completion, streamed=streamed, include_usage=params.include_usage)

    async def _record(
        self,
        call: Call,
        completion: wire.ChatCompletion,
        *,
        streamed: bool,
        cache_hit: bool = False,
        include_usage: bool = False,
    ) -> None:
        payload = completion.model_dump(mode="json")
        if streamed and not include_usage:
            payload["usage"] = None  # what the openai SDK assembles from chunks without a usage chunk
        usage = completion.usage
        try:
            await self.recorder.record(
                call,
                status_code=200,
                resp_payload=payload,
                cache_hit=cache_hit,
                model=completion.model,
                usage=(usage.prompt_tokens, usage.completion_tokens),
                completion_id=completion.id,
            )
        except Exception:  # the client still gets its answer; the failure is in the server's log
            log.exception("could not log a chat completion")

    async def _record_error(self, call: Call, error: PipeserveError) -> None:
        try:
            await self.recorder.record(call, status_code=error.status_code, error_message=error.message)
        except Exception:
            log.exception("could not log a failed chat completion")


def _string_pairs(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}
