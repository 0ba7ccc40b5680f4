"""What a choice's text becomes on the wire: content, tool calls or a legacy function call."""

from __future__ import annotations

from pipeserve.params import ChatParams, ToolCall
from pipeserve.protocol import chat_completions as wire
from pipeserve.structured.tools import (
    AutoCallStream,
    CallReader,
    OneCall,
    new_call_id,
    parse_auto,
    parse_constrained,
)


def call_limit(params: ChatParams) -> int | None:
    """How many calls an answer may make: one when parallel_tool_calls is false (always, for legacy
    functions), else no limit."""
    return None if params.parallel_tool_calls and not params.legacy_functions else 1


def one_call(params: ChatParams) -> OneCall | None:
    """For `ChoiceState`: a tool_choice `auto` answer that must end with its first call (parallel_tool_calls
    false), so generation stops there; None when there's no such limit."""
    if params.output != "auto_tools" or call_limit(params) is None:
        return None
    return OneCall(frozenset(tool.name for tool in params.tools), leading=params.legacy_functions)


def _calls_finish(params: ChatParams, engine_finish: str, *, complete: bool = False) -> str:
    """A truncated call keeps `length`, so that the truncation is not hidden; `complete`: the answer ended
    with its last allowed call, so whatever the budget cut came after it and was dropped."""
    if engine_finish == "length" and not complete:
        return "length"
    return "function_call" if params.legacy_functions else "tool_calls"


def _wire_calls(params: ChatParams, calls: list[ToolCall]) -> dict[str, object]:
    if params.legacy_functions:
        first = calls[0]
        return {"function_call": wire.ResponseFunctionCall(name=first.name, arguments=first.arguments)}
    return {
        "tool_calls": [
            wire.ResponseToolCall(id=c.id, function=wire.ResponseFunctionCall(name=c.name, arguments=c.arguments))
            for c in calls
        ]
    }


def final_message(params: ChatParams, text: str, engine_finish: str) -> tuple[wire.ResponseMessage, str]:
    if params.output == "tool_json":
        calls = parse_constrained(text)
        if calls:
            message = wire.ResponseMessage(content=None, **_wire_calls(params, calls))  # type: ignore[arg-type]
            return message, _calls_finish(params, engine_finish)
    if params.output == "auto_tools":
        limit = call_limit(params)
        names = {t.name for t in params.tools}
        content, calls = parse_auto(text, names, limit=limit, leading=params.legacy_functions)
        if calls:
            message = wire.ResponseMessage(content=content, **_wire_calls(params, calls))  # type: ignore[arg-type]
            return message, _calls_finish(params, engine_finish, complete=len(calls) == limit)
    return wire.ResponseMessage(content=text), engine_finish


class StreamShaper:
    """One choice's deltas in a stream, shaped so that the `openai` SDK's accumulation of them equals the
    plain response, and so that the first delta is what clients merge the others onto, as OpenAI sends it:
    the role with empty content for plain text (sent at once), else the role together with whatever is
    known first — the first content, reasoning, or a call's head (index, id, type, name, empty arguments),
    the arguments following as they are generated."""

    def __init__(self, params: ChatParams) -> None:
        self.params = params
        self.calls = 0
        self._limit = call_limit(params)
        names = {t.name for t in params.tools}
        self._auto = None
        if params.output == "auto_tools":
            self._auto = AutoCallStream(names, limit=self._limit, leading=params.legacy_functions)
        self._reader = CallReader() if params.output == "tool_json" else None
        self._held = ""  # constrained call JSON: what comes before any call's name is known
        self._role_sent = False
        # auto mode: whitespace-only content is held until real content comes, and dropped if calls come
        # instead, as the plain response then has content null.
        self._blank = ""
        self._spoke = False

    def opening(self) -> wire.ChunkDelta | None:
        """The delta to send before any text, or None when the first delta waits for what comes first."""
        if self.params.output != "text":
            return None
        self._role_sent = True
        return wire.ChunkDelta(role="assistant", content="")

    def reasoning(self, text: str) -> wire.ChunkDelta:
        return self._first(wire.ChunkDelta(reasoning_content=text))

    def feed(self, text: str) -> list[wire.ChunkDelta]:
        if self._reader is not None:
            self._held += text
            return self._call_events(self._reader.feed(text))
        if self._auto is not None:
            return self._events(self._auto.feed(text))
        return self._with_role([wire.ChunkDelta(content=text)] if text else [])

    def finish(self, engine_finish: str) -> tuple[list[wire.ChunkDelta], str]:
        if self._reader is not None:
            if not self.calls:  # no call was made: the text is returned as content, as in final_message
                return self._with_role([wire.ChunkDelta(content=self._held)]), engine_finish
            return [], _calls_finish(self.params, engine_finish)
        if self._auto is not None:
            deltas = self._events(self._auto.finish())
            if not self.calls and not deltas and (self._blank or not self._role_sent):
                # Content that was only blank, or none at all: the plain response has it as it is.
                deltas = [wire.ChunkDelta(content=self._blank)]
            if self.calls:
                finish = _calls_finish(self.params, engine_finish, complete=self.calls == self._limit)
                return self._with_role(deltas), finish
            return self._with_role(deltas), engine_finish
        return self._with_role([]), engine_finish

    def _first(self, delta: wire.ChunkDelta) -> wire.ChunkDelta:
        if self._role_sent:
            return delta
        self._role_sent = True
        return delta.model_copy(update={"role": "assistant"})

    def _with_role(self, deltas: list[wire.ChunkDelta]) -> list[wire.ChunkDelta]:
        if not self._role_sent:
            deltas = [self._first(deltas[0]), *deltas[1:]] if deltas else [self._first(wire.ChunkDelta())]
        return deltas

    def _call_events(self, events: list[tuple[str, str]]) -> list[wire.ChunkDelta]:
        """Deltas for a constrained call's head and argument text, as `CallReader` reports them."""
        deltas: list[wire.ChunkDelta] = []
        legacy = self.params.legacy_functions
        for kind, text in events:
            if kind == "call":
                self.calls += 1
                if legacy and self.calls > 1:
                    continue
                deltas.append(self._head(text, new_call_id()))
            elif not (legacy and self.calls > 1):
                deltas.append(self._arguments(text))
        return self._with_role(deltas) if deltas else []

    def _head(self, name: str, call_id: str) -> wire.ChunkDelta:
        if self.params.legacy_functions:
            return wire.ChunkDelta(function_call=wire.ChunkFunction(name=name, arguments=""))
        function = wire.ChunkFunction(name=name, arguments="")
        return wire.ChunkDelta(
            tool_calls=[wire.ChunkToolCall(index=self.calls - 1, id=call_id, type="function", function=function)]
        )

    def _arguments(self, text: str) -> wire.ChunkDelta:
        if self.params.legacy_functions:
            return wire.ChunkDelta(function_call=wire.ChunkFunction(arguments=text))
        return wire.ChunkDelta(
            tool_calls=[wire.ChunkToolCall(index=self.calls - 1, function=wire.ChunkFunction(arguments=text))]
        )

    def _events(self, events: list[str | ToolCall]) -> list[wire.ChunkDelta]:
        deltas = []
        for event in events:
            if isinstance(event, str):
                if not self._spoke and not event.strip():
                    self._blank += event
                elif event:
                    self._spoke = True
                    deltas.append(wire.ChunkDelta(content=self._blank + event))
                    self._blank = ""
                continue
            self.calls += 1
            if self.params.legacy_functions and self.calls > 1:
                continue
            deltas += [self._head(event.name, event.id), self._arguments(event.arguments)]
        return self._with_role(deltas) if deltas else []
