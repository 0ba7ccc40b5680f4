"""The chat completion pipeline: params in, a `ChatCompletion` or a stream of chunks out."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace

import orjson

from pipeserve.engines.base import Delta, Generation
from pipeserve.errors import EngineError, PipeserveError, UnsupportedParameterError
from pipeserve.params import ChatParams
from pipeserve.protocol import chat_completions as wire
from pipeserve.service.metrics import Metrics
from pipeserve.service.models import ModelRegistry, ServedModel
from pipeserve.service.outputs import ChoiceOutput
from pipeserve.service.recording import Call
from pipeserve.store.db import random_hex

log = logging.getLogger("pipeserve.chat")

SSE_DONE = b"data: [DONE]\n\n"
# Failures of a model that its fallbacks may answer instead: its limits, the upstream's, and its being down.
_FALL_BACK_ON = frozenset({429, 500, 502, 503, 504})

# Called once a stream's content is out and before its last bytes: the merged completion (as the `openai`
# SDK assembles it) or the error that ended the stream.
StreamEnd = Callable[[wire.ChatCompletion | None, PipeserveError | None], Awaitable[None]]
# Judges a finished stream's completion (op-criteria); its results go out in one chunk before the usage chunk.
StreamGrade = Callable[[wire.ChatCompletion], Awaitable[wire.ChatCompletion]]


def sse(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


@functools.lru_cache(maxsize=256)
def _text_choice(index: int, name: str) -> tuple[bytes, bytes]:
    """A chunk choice of one piece of text alone, as the wire model writes it, either side of the text."""
    choice = wire.ChunkChoice(index=index, delta=wire.ChunkDelta.model_validate({name: ""}))
    before, key, after = choice.model_dump_json().encode().partition(b'"%s":""' % name.encode())
    return before + key[:-2], after


@functools.lru_cache(maxsize=256)
def _bare_choice(index: int, finish_reason: str | None) -> bytes:
    """A chunk choice without text: a choice's opening (its role and empty content, `finish_reason` None) or
    its bare finish, as the wire model writes them."""
    delta = wire.ChunkDelta(role="assistant", content="") if finish_reason is None else wire.ChunkDelta()
    choice = wire.ChunkChoice(index=index, delta=delta, finish_reason=finish_reason, logprobs=None)  # type: ignore[arg-type]
    return choice.model_dump_json().encode()


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


@dataclass
class _Run:
    """One request in flight: its identity, its generation and the state of each choice."""

    params: ChatParams
    generation: Generation
    id: str
    created: int
    fingerprint: str
    choices: list[ChoiceOutput]
    metrics: Metrics | None = None
    label: str = ""  # the model id, for metrics
    started: float = 0.0
    call: Call | None = None  # the request's log record, if it has one
    _frame: tuple[bytes, bytes] | None = None  # a chunk's event either side of its choices: see `chunk`

    def chunk(self, choices: list[wire.ChunkChoice], usage: wire.Usage | None = None) -> bytes:
        """A chunk's SSE event. All but the last (usage) chunk of a run differ only in their choices, so the
        wire model writes the rest once per run and each chunk adds its choices' JSON to it."""
        if usage is not None:
            return sse(self._payload(choices, usage).model_dump_json().encode())
        head, tail = self._framed()
        return head + b",".join(choice.model_dump_json().encode() for choice in choices) + tail

    def text_chunk(self, index: int, name: str, text: str) -> bytes:
        """The chunk of one piece of text alone (`name` is its delta's field), byte for byte what `chunk` makes
        of it, without building models: nearly every chunk of a stream is one, and three models built and
        serialised per token (the delta's unset fields dropped in Python) cost ~30 us against ~1 us."""
        head, tail = self._framed()
        before, after = _text_choice(index, name)
        return head + before + orjson.dumps(text) + after + tail

    def bare_chunk(self, index: int, finish_reason: str | None) -> bytes:
        """The chunk of a choice's opening or bare finish (`_bare_choice`), without building models."""
        head, tail = self._framed()
        return head + _bare_choice(index, finish_reason) + tail

    def _framed(self) -> tuple[bytes, bytes]:
        if self._frame is None:
            whole = self._payload([], None).model_dump_json().encode()
            # Quotes inside JSON strings are escaped, so this can only be the key and its empty list.
            head, _, tail = whole.partition(b'"choices":[]')
            self._frame = (b"data: " + head + b'"choices":[', b"]" + tail + b"\n\n")
        return self._frame

    def _payload(self, choices: list[wire.ChunkChoice], usage: wire.Usage | None) -> wire.ChatCompletionChunk:
        return wire.ChatCompletionChunk(
            id=self.id,
            created=self.created,
            model=self.params.model,
            choices=choices,
            usage=usage,
            system_fingerprint=self.fingerprint,
        )

    def usage(self) -> wire.Usage:
        counted = self.generation.usage
        prompt, completion = counted.prompt_tokens, counted.completion_tokens
        cached = min(counted.cached_tokens, prompt)
        reasoning = min(counted.reasoning_tokens, completion)
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

    async def steps(self) -> AsyncIterator[list[Delta]]:
        """The engine's steps until every choice has finished; stops the engine's work however it ends. The
        consumer takes each delta through `check` before its choice does."""
        last = 0.0
        ttft = itl = None
        if self.metrics is not None:
            ttft, itl = self.metrics.latencies(self.label)
        try:
            async for step in self.generation:
                if self.call is not None:
                    self.call.mark_first_token()
                if ttft is not None and itl is not None:
                    now = time.perf_counter()
                    (itl if last else ttft).observe(now - (last or self.started))
                    last = now
                yield step
            if any(choice.finish_reason is None for choice in self.choices):
                raise EngineError("the engine ended the generation before every choice finished")
        finally:
            self.generation.cancel()  # no-op once finished; frees the sequences of an abandoned request
            if self.metrics is not None:
                usage = self.usage()
                cached = usage.prompt_tokens_details.cached_tokens
                self.metrics.record_usage(self.label, usage.prompt_tokens, cached, usage.completion_tokens)

    def check(self, delta: Delta) -> ChoiceOutput:
        """The choice `delta` belongs to; an engine error if that choice is not running (any more)."""
        if not 0 <= delta.index < len(self.choices) or self.choices[delta.index].finish_reason:
            raise EngineError(f"the engine sent a delta for choice {delta.index}, which is not running")
        return self.choices[delta.index]


class ChatService:
    def __init__(self, models: ModelRegistry, metrics: Metrics | None = None) -> None:
        self.models = models
        self.metrics = metrics

    async def _start(self, params: ChatParams, call: Call | None, served: ServedModel | None) -> _Run:
        """Start the generation on the model asked for, or on its fallbacks in order when it fails before its
        answer starts (the answer then names the model that served it)."""
        served = served or self.models.resolve(params.model)
        started = time.perf_counter()
        fallbacks = served.fallbacks
        first_error: PipeserveError | None = None
        for name in [None, *fallbacks]:
            try:
                current = served if name is None else self.models.resolve(name)
                wanted = params if name is None else replace(params, model=name)
                if current.upstream_name is not None:
                    wanted = replace(wanted, upstream_model=current.upstream_name)
                _check_capabilities(current, wanted)
                generation = await current.engine.generate(wanted)
                break
            except PipeserveError as error:
                if first_error is None and (not fallbacks or error.status_code not in _FALL_BACK_ON):
                    raise  # the request itself is wrong, or there is nowhere else to go
                first_error = first_error or error
                log.warning("%s failed before answering (%s); trying its next fallback", name or params.model, error)
        else:
            assert first_error is not None
            raise first_error  # every fallback failed too: the model asked for says why
        params, served = wanted, current
        return _Run(
            params=params,
            generation=generation,
            id=f"chatcmpl-{random_hex()}",
            created=int(time.time()),
            fingerprint=served.fingerprint,
            choices=[ChoiceOutput(i, params) for i in range(params.n)],
            metrics=self.metrics,
            label=served.label,
            started=started,
            call=call,
        )

    async def complete(
        self, params: ChatParams, call: Call | None = None, served: ServedModel | None = None
    ) -> wire.ChatCompletion:
        """`served`: the model `params.model` names, if the caller resolved it already."""
        run = await self._start(params, call, served)
        async for step in run.steps():
            for delta in step:
                run.check(delta).add(delta)
        return self._completion(run)

    @staticmethod
    def _completion(run: _Run) -> wire.ChatCompletion:
        choices = [
            wire.Choice(
                index=choice.index,
                message=choice.message(),
                finish_reason=choice.wire_finish,  # type: ignore[arg-type]
                logprobs=choice.wire_logprobs(),
            )
            for choice in run.choices
        ]
        return wire.ChatCompletion(
            id=run.id,
            created=run.created,
            model=run.params.model,
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
        pending = b""
        try:
            try:
                # The role chunks go out with the first step's chunks, in one write: the client has the
                # headers already, and nothing it can read comes sooner.
                pending = b"".join(run.bare_chunk(choice.index, None) for choice in run.choices if choice.opening())
                async for step in run.steps():
                    # One write for what one step brings: steps that arrived while the last was being sent
                    # come merged (`Generation`), and go out together.
                    out = pending + b"".join([self._shaped(run, run.check(delta), delta) for delta in step])
                    if out:
                        yield out
                        pending = b""
                completion = self._completion(run)
                if grade is not None:
                    completion = await grade(completion)
                    yield pending + run.chunk(criteria_choices(completion))
                    pending = b""
                # The usage goes out with `[DONE]`, in the stream's last write, after the log's commit.
                tail = pending + (run.chunk([], completion.usage) if run.params.include_usage else b"")
                ended: tuple[wire.ChatCompletion | None, PipeserveError | None] = (completion, None)
            except PipeserveError as error:
                yield pending + sse(_error_json(error))
                tail, ended = b"", (None, error)
            except Exception as exc:  # an unexpected failure mid-stream still ends the stream properly
                log.exception("stream failed")
                failure = EngineError(f"the stream failed: {exc}")
                yield pending + sse(_error_json(failure))
                tail, ended = b"", (None, failure)
            if on_end is not None:
                await on_end(*ended)
            yield tail + SSE_DONE
        finally:
            run.generation.cancel()  # no-op once finished; a consumer that left early frees its sequences

    @staticmethod
    def _shaped(run: _Run, choice: ChoiceOutput, delta: Delta) -> bytes:
        """The chunks (none, one, or a chunk and the finishing one) that `delta` becomes on the wire."""
        text = choice.text(delta)
        if text is not None:
            return run.text_chunk(choice.index, *text)
        shaped = choice.chunk(delta)
        out = b""
        if shaped is not None:
            delta_out, logprobs = shaped
            out = run.chunk([wire.ChunkChoice(index=choice.index, delta=delta_out, logprobs=logprobs)])
        if delta.finish_reason is not None:
            bare = choice.bare_finish()
            out += run.bare_chunk(choice.index, bare) if bare is not None else run.chunk([choice.finish()])
        return out


def _check_capabilities(served: ServedModel, params: ChatParams) -> None:
    can = served.engine.capabilities
    tools = "functions" if params.legacy_functions else "tools"
    choice = "function_call" if params.legacy_functions else "tool_choice"
    wanted = {
        "logprobs": params.logprobs and not can.logprobs,
        "top_logprobs": params.top_logprobs > can.max_top_logprobs,
        "seed": params.sampling.seed is not None and not can.seed,
        "logit_bias": bool(params.sampling.logit_bias) and not can.logit_bias,
        "response_format": params.response_format is not None and not can.structured_output,
        tools: bool(params.tools) and not can.tools,
        choice: bool(params.tools) and params.tool_choice not in can.tool_choice,
        "parallel_tool_calls": bool(params.tools) and not params.parallel_tool_calls and not can.parallel_tool_calls,
        "n": can.max_n is not None and params.n > can.max_n,
        **{name: not can.passthrough for name in sorted(params.passthrough)},
    }
    for name, missing in wanted.items():
        if missing:
            raise UnsupportedParameterError(
                f"The model {served.config.id} can't honour '{name}'. Remove it or use another model.", param=name
            )


def criteria_choices(completion: wire.ChatCompletion) -> list[wire.ChunkChoice]:
    """The chunk choices that carry the judges' results of a stream (op-criteria)."""
    return [
        wire.ChunkChoice(index=c.index, delta=wire.ChunkDelta(), criteria_results=c.criteria_results)
        for c in completion.choices
    ]


def _error_json(error: PipeserveError) -> bytes:
    return orjson.dumps(error.body())
