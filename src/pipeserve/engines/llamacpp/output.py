"""What the llama.cpp engine's text becomes: the typed deltas every engine reports.

A model run here writes plain text. Its thinking (between think tags), its `<tool_call>` blocks (tool_choice
auto) and its constrained call JSON (tool_choice required or named) are how this engine renders tools and
reasoning to its models, so they are read back here, and the pipeline above sees content, reasoning and
tool-call fragments as from any other engine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pipeserve.engines.base import Delta, FinishReason, Generation, TokenLogprob, ToolCallFragment
from pipeserve.engines.llamacpp.choices import ChoiceState
from pipeserve.engines.llamacpp.reasoning import ThinkSplitter
from pipeserve.engines.llamacpp.slots import TextDelta
from pipeserve.engines.llamacpp.toolcalls import AutoCallStream, CallReader, OneCall, calls_schema, new_call_id
from pipeserve.errors import EngineError
from pipeserve.params import ChatParams, ToolCall

# What this engine's completion text is: plain content; content that may hold `<tool_call>` blocks (tool_choice
# auto); or JSON tool calls under a constraint (tool_choice required or named).
OutputMode = Literal["text", "auto_tools", "tool_json"]


@dataclass(frozen=True, slots=True)
class Reading:
    """How a request's output is produced and read here: its mode and the JSON schema its text must
    follow (structured content, or the calls of tool_choice required/named), if any."""

    mode: OutputMode
    schema: dict[str, Any] | None


def reading(params: ChatParams) -> Reading:
    content: dict[str, Any] | None = None
    if params.response_format is not None:
        fmt = params.response_format
        content = {"type": "object"} if fmt.type == "json_object" else (fmt.schema or {})
    if params.tool_choice == "required":
        return Reading("tool_json", calls_schema(params.tools, parallel=params.parallel_tool_calls))
    if params.tool_choice == "named":
        chosen = tuple(tool for tool in params.tools if tool.name == params.tool_name)
        return Reading("tool_json", calls_schema(chosen, parallel=False))
    if params.tool_choice == "auto" and params.tools:
        return Reading("auto_tools", content)
    return Reading("text", content)


def call_limit(params: ChatParams) -> int | None:
    """How many calls an answer may make: one when parallel_tool_calls is false (always, for legacy
    functions), else no limit."""
    return None if params.parallel_tool_calls and not params.legacy_functions else 1


def one_call(params: ChatParams) -> OneCall | None:
    """A tool_choice `auto` answer that must end with its first call (parallel_tool_calls false), so that
    generation stops there; None when there's no such limit."""
    if reading(params).mode != "auto_tools" or call_limit(params) is None:
        return None
    return OneCall(frozenset(tool.name for tool in params.tools), leading=params.legacy_functions)


class ChoiceDecoder:
    """One choice's text, step by step, as typed deltas: stop strings applied, thinking split off, calls
    picked out. Text that may still turn out to be part of a call (or of a stop string) is held back until
    it can't; a call goes out as its head (id, name) as soon as its name is known, then its arguments.

    Under tool_choice auto, content that is only whitespace is held until real content comes, and dropped
    if calls come instead, so that such an answer has content null, as OpenAI's have."""

    def __init__(self, index: int, params: ChatParams, think: ThinkSplitter | None = None) -> None:
        self.index = index
        self.params = params
        mode = reading(params).mode
        self.state = ChoiceState(index, params.stop, think, one_call(params))
        self.calls = 0
        self._limit = call_limit(params)
        names = {tool.name for tool in params.tools}
        self._auto: AutoCallStream | None = None
        if mode == "auto_tools":
            self._auto = AutoCallStream(names, limit=self._limit, leading=params.legacy_functions)
        self._reader = CallReader() if mode == "tool_json" else None
        self._held = ""  # constrained call JSON: returned as content if it never names a call
        self._blank = ""
        self._spoke = False

    @property
    def finished(self) -> bool:
        return self.state.finish_reason is not None

    def feed(self, raw: TextDelta) -> list[Delta]:
        emitted = self.state.feed(raw)
        if emitted is None:
            return []
        out = [Delta(self.index, reasoning=emitted.reasoning)] if emitted.reasoning else []
        out += self._text(emitted.text)
        if emitted.finish_reason is not None:
            out += self._finish()
        if emitted.logprobs:
            self._attach(out, emitted.logprobs)
        if emitted.finish_reason is not None:
            out.append(Delta(self.index, finish_reason=self._finish_reason(emitted.finish_reason)))
        return out

    def _attach(self, out: list[Delta], logprobs: list[TokenLogprob]) -> None:
        """The logprobs of released text go with the first delta that carries it (thinking has none)."""
        for delta in out:
            if not delta.reasoning:
                delta.logprobs = logprobs
                return
        out.append(Delta(self.index, logprobs=logprobs))

    def _text(self, text: str) -> list[Delta]:
        if self._reader is not None:
            self._held += text
            return self._reader_events(self._reader.feed(text))
        if self._auto is not None:
            return self._auto_events(self._auto.feed(text))
        return [Delta(self.index, content=text)] if text else []

    def _finish(self) -> list[Delta]:
        """What is still held at the end of the choice."""
        if self._reader is not None:
            # No call was named: the text is the answer, as content.
            return [] if self.calls else [Delta(self.index, content=self._held)] if self._held else []
        if self._auto is not None:
            out = self._auto_events(self._auto.finish())
            if not self.calls and not out and self._blank:
                out = [Delta(self.index, content=self._blank)]  # an answer of blank text is that text
            return out
        return []

    def _finish_reason(self, engine_finish: str) -> FinishReason:
        """With calls made, `tool_calls`, unless the budget cut a call short: a truncated call keeps
        `length`, so that the truncation is not hidden. When the answer ended with its last allowed call,
        whatever the budget cut came after it and was dropped."""
        if not self.calls:
            return "length" if engine_finish == "length" else "stop"
        if engine_finish == "length" and not (self._auto is not None and self.calls == self._limit):
            return "length"
        return "tool_calls"

    def _reader_events(self, events: list[tuple[str, str]]) -> list[Delta]:
        out = []
        for kind, text in events:
            if kind == "call":
                self.calls += 1
                if self._counts():
                    out.append(self._head(new_call_id(), text))
            elif self._counts():
                out.append(self._arguments(text))
        return out

    def _auto_events(self, events: list[str | ToolCall]) -> list[Delta]:
        out = []
        for event in events:
            if isinstance(event, str):
                if not self._spoke and not event.strip():
                    self._blank += event
                elif event:
                    self._spoke = True
                    out.append(Delta(self.index, content=self._blank + event))
                    self._blank = ""
                continue
            self.calls += 1
            if self._counts():
                out += [self._head(event.id, event.name), self._arguments(event.arguments)]
        return out

    def _counts(self) -> bool:
        """Legacy functions answer with one call: any further one is dropped."""
        return not (self.params.legacy_functions and self.calls > 1)

    def _head(self, call_id: str, name: str) -> Delta:
        return Delta(self.index, tool_calls=[ToolCallFragment(self.calls - 1, call_id, name, "")])

    def _arguments(self, text: str) -> Delta:
        return Delta(self.index, tool_calls=[ToolCallFragment(self.calls - 1, arguments=text)])


class TextGeneration(Generation):
    """A generation fed with the engine's text, decoded into typed deltas on the event loop. A choice that
    ends early (a stop string, its one allowed call) is stopped in the engine at once; once every choice
    has ended, so is the request, its sequences' KV entries kept as a prefix cache."""

    def __init__(
        self, params: ChatParams, stop: Callable[[int | None, bool], None], think: tuple[str, str] | None
    ) -> None:
        super().__init__(0, stop)
        self._decoders = [ChoiceDecoder(i, params, ThinkSplitter(*think) if think else None) for i in range(params.n)]
        self._ended = False

    def push_text(self, raw: list[TextDelta], cached_tokens: int, done: bool) -> None:
        if self._ended:
            return  # tokens in flight when the last choice ended
        out: list[Delta] = []
        for delta in raw:
            decoder = self._decoders[delta.index]
            if decoder.finished:
                continue
            out += decoder.feed(delta)
            if decoder.finished and delta.finish_reason is None:
                self.stop(delta.index, keep_cache=True)  # ended by its text: it needs no more tokens
        usage = self.usage
        usage.cached_tokens = min(cached_tokens, usage.prompt_tokens)
        usage.completion_tokens = sum(d.state.tokens for d in self._decoders)
        usage.reasoning_tokens = sum(d.state.reasoning_tokens for d in self._decoders)
        if all(d.finished for d in self._decoders):
            self._ended = True
            self.stop(keep_cache=True)
            self.push(out, done=True)
            return
        self.push(out, done=False)
        if done:
            self._ended = True
            self.fail(EngineError("the engine ended the generation before every choice finished"))
