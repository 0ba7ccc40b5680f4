"""What a choice's text becomes on the wire: content, tool calls or a legacy function call."""

from __future__ import annotations

from pipeserve.params import ChatParams, ToolCall
from pipeserve.protocol import chat_completions as wire
from pipeserve.structured.tools import AutoCallStream, parse_auto, parse_constrained


def _calls_finish(params: ChatParams, engine_finish: str) -> str:
    """A truncated call keeps `length`, so that the truncation is not hidden."""
    if engine_finish == "length":
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
        content, calls = parse_auto(text, {t.name for t in params.tools})
        if calls:
            message = wire.ResponseMessage(content=content, **_wire_calls(params, calls))  # type: ignore[arg-type]
            return message, _calls_finish(params, engine_finish)
    return wire.ResponseMessage(content=text), engine_finish


class StreamShaper:
    """One choice's deltas in a stream, shaped so that the `openai` SDK's accumulation of them equals the
    plain response: tool calls arrive as a first delta (index, id, type, name) then argument text."""

    def __init__(self, params: ChatParams) -> None:
        self.params = params
        self.calls = 0
        self._auto = AutoCallStream({t.name for t in params.tools}) if params.output == "auto_tools" else None
        self._held = ""  # constrained tool-call JSON, parsed once complete
        # auto mode: whitespace-only content is held until real content comes, and dropped if calls come
        # instead, as the plain response then has content null.
        self._blank = ""
        self._spoke = False

    def first(self) -> wire.ChunkDelta:
        if self.params.output == "tool_json":
            return wire.ChunkDelta(role="assistant")
        return wire.ChunkDelta(role="assistant", content="")

    def feed(self, text: str) -> list[wire.ChunkDelta]:
        if self.params.output == "tool_json":
            self._held += text
            return []
        if self._auto is not None:
            return self._events(self._auto.feed(text))
        return [wire.ChunkDelta(content=text)] if text else []

    def finish(self, engine_finish: str) -> tuple[list[wire.ChunkDelta], str]:
        if self.params.output == "tool_json":
            calls = parse_constrained(self._held)
            if not calls:
                return [wire.ChunkDelta(content=self._held)], engine_finish
            return self._events(list(calls)), _calls_finish(self.params, engine_finish)
        if self._auto is not None:
            deltas = self._events(self._auto.finish())
            if self._blank and not self.calls:
                deltas.insert(0, wire.ChunkDelta(content=self._blank))
            return deltas, _calls_finish(self.params, engine_finish) if self.calls else engine_finish
        return [], engine_finish

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
            if self.params.legacy_functions:
                if self.calls == 0:
                    deltas.append(wire.ChunkDelta(function_call=wire.ChunkFunction(name=event.name, arguments="")))
                    deltas.append(wire.ChunkDelta(function_call=wire.ChunkFunction(arguments=event.arguments)))
            else:
                head = wire.ChunkToolCall(
                    index=self.calls,
                    id=event.id,
                    type="function",
                    function=wire.ChunkFunction(name=event.name, arguments=""),
                )
                body = wire.ChunkToolCall(index=self.calls, function=wire.ChunkFunction(arguments=event.arguments))
                deltas += [wire.ChunkDelta(tool_calls=[head]), wire.ChunkDelta(tool_calls=[body])]
            self.calls += 1
        return deltas
