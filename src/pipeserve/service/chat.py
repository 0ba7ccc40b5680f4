"""The chat completion pipeline: params in, a `ChatCompletion` or a stream of chunks out."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import orjson

from pipeserve.engines.base import Generation, TokenLogprob
from pipeserve.errors import EngineError, PipeserveError, UnsupportedParameterError
from pipeserve.params import ChatParams
from pipeserve.protocol import chat_completions as wire
from pipeserve.service.choices import ChoiceState, Emitted
from pipeserve.service.metrics import Metrics
from pipeserve.service.models import ModelRegistry, ServedModel
from pipeserve.service.outputs import StreamShaper, final_message, one_call
from pipeserve.service.reasoning import ThinkSplitter
from pipeserve.service.recording import Call

log = logging.getLogger("pipeserve.chat")

SSE_DONE = b"data: [DONE]\n\n"

# Called once a stream's content is out and before its last bytes: the merged completion (as the `openai`
# SDK assembles it) or the error that ended the stream.
StreamEnd = Callable[[wire.ChatCompletion | None, PipeserveError | None], Awaitable[None]]
# Judges a finished stream's completion (op-criteria); its results go out in one chunk before the usage chunk.
StreamGrade = Callable[[wire.ChatCompletion], Awaitable[wire.ChatCompletion]]


def sse(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


def _nothing() -> None:
    pass


class EventStream:
    """An SSE byte stream that stops its generation however it ends: read to the end, abandoned midway, or
    never read at all (a generator that never started runs no `finally`, so `aclose` releases explicitly)."""

    def __init__(self, chunks: AsyncGenerator[bytes, None], release: Callable[[], None] = _nothing) -> None:
        self._chunks = chunks
        self._release = release

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks

    async def aclose(self) -> None:
        try:
            await self._chunks.aclose()
        finally:
            self._release()


def _wire_logprobs(entries: list[TokenLogprob]) -> list[wire.TokenLogprob]:
    return [
        wire.TokenLogprob(
            token=entry.token,
            bytes=list(entry.bytes),
            logprob=entry.logprob,
            top_logprobs=[wire.TopLogprob(token=t.token, bytes=list(t.bytes), logprob=t.logprob) for t in entry.top],
        )
        for entry in entries
    ]


@dataclass
class _Run:
    """One request in flight: its identity, its generation and the state of each choice."""

    params: ChatParams
    generation: Generation
    id: str
    created: int
    fingerprint: str
    choices: list[ChoiceState]
    metrics: Metrics | None = None
    label: str = ""  # the model id, for metrics
    started: float = 0.0
    call: Call | None = None  # the request's log record, if it has one

    def chunk(self, choices: list[wire.ChunkChoice], usage: wire.Usage | None = None) -> bytes:
        payload = wire.ChatCompletionChunk(
            id=self.id,
            created=self.created,
            model=self.params.model,
            choices=choices,
            usage=usage,
            system_fingerprint=self.fingerprint,
        )
        return sse(payload.model_dump_json().encode())

    def usage(self) -> wire.Usage:
        prompt = self.generation.prompt_tokens
        cached = min(self.generation.cached_tokens, prompt)
        completion = sum(choice.tokens for choice in self.choices)
        reasoning = sum(choice.reasoning_tokens for choice in self.choices)
        return wire.Usage(
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=prompt + completion,
            prompt_tokens_details=wire.PromptTokensDetails(cached_tokens=cached),
            completion_tokens_details=wire.CompletionTokensDetails(
                reasoning_tokens=reasoning, text_tokens=completion - reasoning
            ),
            prompt_cache_hit_tokens=cached,
            prompt_cache_miss_tokens=prompt - cached,
        )

    async def deltas(self) -> AsyncIterator[tuple[int, Emitted]]:
        """Emitted text per choice until every choice has finished; stops the engine's work when done."""
        remaining = len(self.choices)
        last = 0.0
        try:
            async for step in self.generation:
                if self.call is not None:
                    self.call.mark_first_token()
                if self.metrics is not None:
                    now = time.perf_counter()
                    histogram = self.metrics.itl if last else self.metrics.ttft
                    histogram.labels(self.label).observe(now - (last or self.started))
                    last = now
                for delta in step:
                    choice = self.choices[delta.index]
                    emitted = choice.feed(delta)
                    if emitted is None:
                        continue
                    if emitted.finish_reason is not None:
                        remaining -= 1
                        if delta.finish_reason is None:  # a stop string: this choice needs no more tokens
                            self.generation.stop(delta.index, keep_cache=True)
                    yield delta.index, emitted
                if remaining == 0:
                    self.generation.stop(keep_cache=True)
                    return
            if remaining:
                raise EngineError("the engine ended the generation before every choice finished")
        finally:
            self.generation.cancel()  # no-op once finished; frees the sequences of an abandoned request
            if self.metrics is not None:
                usage = self.usage()
                cached = usage.prompt_tokens_details.cached_tokens
                self.metrics.record_usage(self.label, usage.prompt_tokens, cached, usage.completion_tokens)


class ChatService:
    def __init__(self, models: ModelRegistry, metrics: Metrics | None = None) -> None:
        self.models = models
        self.metrics = metrics

    async def _start(self, params: ChatParams, call: Call | None, served: ServedModel | None) -> _Run:
        served = served or self.models.resolve(params.model)
        _check_capabilities(served, params)
        started = time.perf_counter()
        generation = await served.engine.generate(params)
        return _Run(
            params=params,
            generation=generation,
            id=f"chatcmpl-{uuid.uuid4().hex}",
            created=int(time.time()),
            fingerprint=served.fingerprint,
            choices=[ChoiceState(i, params.stop, self._splitter(served), one_call(params)) for i in range(params.n)],
            metrics=self.metrics,
            label=served.config.id,
            started=started,
            call=call,
        )

    @staticmethod
    def _splitter(served: ServedModel) -> ThinkSplitter | None:
        return ThinkSplitter(*served.config.think_tags) if served.config.reasoning else None

    async def complete(
        self, params: ChatParams, call: Call | None = None, served: ServedModel | None = None
    ) -> wire.ChatCompletion:
        """`served`: the model `params.model` names, if the caller resolved it already."""
        run = await self._start(params, call, served)
        async for _ in run.deltas():
            pass
        return self._completion(run)

    @staticmethod
    def _completion(run: _Run) -> wire.ChatCompletion:
        params = run.params
        choices = []
        for choice in run.choices:
            message, finish = final_message(params, choice.content, choice.finish_reason or "stop")
            message.reasoning_content = choice.reasoning_content
            logprobs = wire.ChoiceLogprobs(content=_wire_logprobs(choice.logprobs)) if params.logprobs else None
            choices.append(
                wire.Choice(index=choice.index, message=message, finish_reason=finish, logprobs=logprobs)  # type: ignore[arg-type]
            )
        return wire.ChatCompletion(
            id=run.id,
            created=run.created,
            model=params.model,
            choices=choices,
            usage=run.usage(),
            system_fingerprint=run.fingerprint,
        )

    async def stream(
        self,
        params: ChatParams,
        call: Call | None = None,
        on_end: StreamEnd | None = None,
        grade: StreamGrade | None = None,
        served: ServedModel | None = None,
    ) -> EventStream:
        """Start the generation (errors raise before the first byte), then return the SSE byte stream."""
        run = await self._start(params, call, served)
        return EventStream(self._stream(run, on_end, grade), run.generation.cancel)

    async def _stream(
        self, run: _Run, on_end: StreamEnd | None, grade: StreamGrade | None
    ) -> AsyncGenerator[bytes, None]:
        shapers = [StreamShaper(run.params) for _ in run.choices]
        # Logprobs of text not sent yet (held back, or a call's JSON before its head): they go out with the
        # choice's next delta, so that the stream carries every one the plain response does.
        waiting: list[list[TokenLogprob]] = [[] for _ in run.choices]
        try:
            try:
                for index, shaper in enumerate(shapers):
                    opening = shaper.opening()
                    if opening is not None:
                        yield run.chunk([wire.ChunkChoice(index=index, delta=opening)])
                async for index, emitted in run.deltas():
                    shaper = shapers[index]
                    if emitted.reasoning:
                        yield run.chunk([wire.ChunkChoice(index=index, delta=shaper.reasoning(emitted.reasoning))])
                    deltas = shaper.feed(emitted.text)
                    if run.params.logprobs:
                        waiting[index] += emitted.logprobs
                        if waiting[index] and not deltas and run.params.output == "text":
                            deltas = [wire.ChunkDelta(content="")]  # logprobs of text still held back
                    for delta in deltas:
                        yield run.chunk([wire.ChunkChoice(index=index, delta=delta, logprobs=_take(waiting[index]))])
                    if emitted.finish_reason is not None:
                        tail, finish = shaper.finish(emitted.finish_reason)
                        for delta in tail:
                            yield run.chunk(
                                [wire.ChunkChoice(index=index, delta=delta, logprobs=_take(waiting[index]))]
                            )
                        end = wire.ChunkChoice(
                            index=index,
                            delta=wire.ChunkDelta(),
                            finish_reason=finish,  # type: ignore[arg-type]
                            logprobs=_take(waiting[index]),
                        )
                        yield run.chunk([end])
                completion = self._completion(run)
                if grade is not None:
                    completion = await grade(completion)
                    yield run.chunk(criteria_choices(completion))
                if run.params.include_usage:
                    yield run.chunk([], completion.usage)
                ended: tuple[wire.ChatCompletion | None, PipeserveError | None] = (completion, None)
            except PipeserveError as error:
                yield sse(_error_json(error))
                ended = (None, error)
            except Exception as exc:  # an unexpected failure mid-stream still ends the stream properly
                log.exception("stream failed")
                failure = EngineError(f"the stream failed: {exc}")
                yield sse(_error_json(failure))
                ended = (None, failure)
            if on_end is not None:
                await on_end(*ended)
            yield SSE_DONE
        finally:
            run.generation.cancel()  # no-op once finished; a consumer that left early frees its sequences


def _check_capabilities(served: ServedModel, params: ChatParams) -> None:
    can = served.engine.capabilities
    wanted = {
        "logprobs": params.logprobs and not can.logprobs,
        "top_logprobs": params.top_logprobs > can.max_top_logprobs,
        "seed": params.sampling.seed is not None and not can.seed,
        "logit_bias": bool(params.sampling.logit_bias) and not can.logit_bias,
        "response_format": params.constraint is not None and not can.structured_output,
    }
    for field, missing in wanted.items():
        if missing:
            raise UnsupportedParameterError(
                f"The model {served.config.id} can't honour '{field}'. Remove it or use another model.", param=field
            )


def criteria_choices(completion: wire.ChatCompletion) -> list[wire.ChunkChoice]:
    """The chunk choices that carry the judges' results of a stream (op-criteria)."""
    return [
        wire.ChunkChoice(index=c.index, delta=wire.ChunkDelta(), criteria_results=c.criteria_results)
        for c in completion.choices
    ]


def _take(waiting: list[TokenLogprob]) -> wire.ChoiceLogprobs | None:
    """The waiting logprobs as a chunk's, emptying the list; None when there are none."""
    if not waiting:
        return None
    taken = wire.ChoiceLogprobs(content=_wire_logprobs(waiting))
    waiting.clear()
    return taken


def _error_json(error: PipeserveError) -> bytes:
    return orjson.dumps(error.body())
