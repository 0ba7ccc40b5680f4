"""What a choice's typed deltas become on the wire: stream chunks, and the message they add up to.

One `ChoiceOutput` per choice sees every delta the client is sent, so a plain response and a stream's merged
completion (what is logged and cached) are built the same way, from the same deltas, with the same call ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from pipeserve.engines.base import Delta, TokenLogprob
from pipeserve.params import ChatParams
from pipeserve.protocol import chat_completions as wire


def wire_logprobs(entries: list[TokenLogprob]) -> list[wire.TokenLogprob]:
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
class _Call:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass
class ChoiceOutput:
    """One choice as the client has been sent it, and the stream shaping that goes with it.

    Streams begin as OpenAI's do: a request that can only answer text gets the role with empty content at
    once; one that may call tools gets the role with whatever comes first (content, reasoning, or a call's
    head), because clients merge the other chunks onto the first one. Logprobs of text not sent yet ride
    with the choice's next chunk, or go out at once with empty content when only text can come."""

    index: int
    params: ChatParams
    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    calls: dict[int, _Call] = field(default_factory=dict)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    _role_sent: bool = False
    _waiting: list[TokenLogprob] = field(default_factory=list)
    _held: str = ""  # legacy functions: leading whitespace, until it is known whether a call or content comes

    @property
    def _text_only(self) -> bool:
        return not self.params.tools or self.params.tool_choice == "none"

    def add(self, delta: Delta) -> Delta:
        """Take one delta into the message (a plain response's path); returns the delta as taken."""
        delta = self._legacy(delta) if self.params.legacy_functions else delta
        if delta.content:
            self.content.append(delta.content)
        if delta.reasoning:
            self.reasoning.append(delta.reasoning)
        for fragment in delta.tool_calls:
            call = self.calls.setdefault(fragment.index, _Call())
            call.id = call.id or fragment.id or ""
            call.name = call.name or fragment.name or ""
            call.arguments.append(fragment.arguments)
        if delta.logprobs:
            self.logprobs += delta.logprobs
        if delta.finish_reason is not None:
            self.finish_reason = delta.finish_reason
        return delta

    def _legacy(self, delta: Delta) -> Delta:
        """A legacy-functions answer is a function call or content, never both, as OpenAI's are and as clients
        that merge a stream onto its first chunk assume (the `openpipe` SDK fails on a `function_call` after
        content). An engine may still report both (an upstream given the functions as tools): whatever comes
        first decides, and the other is left out; whitespace at the start waits until it is known which."""
        content, calls, finish = delta.content, delta.tool_calls, delta.finish_reason
        if self.calls:
            content = ""
        elif self.content:  # only content that says something is taken before it is known which comes
            calls = []
        else:
            text, self._held = self._held + content, ""
            if text.strip():
                content, calls = text, []
            elif calls:
                content = ""
            elif finish is not None:
                content = text  # an answer of whitespace alone
            else:
                content, self._held = "", text
        if finish == "tool_calls" and not (self.calls or calls):
            finish = "stop"
        if (content, calls, finish) == (delta.content, delta.tool_calls, delta.finish_reason):
            return delta
        return replace(delta, content=content, tool_calls=calls, finish_reason=finish)

    # --- a stream ------------------------------------------------------------------------------------------
    def opening(self) -> bool:
        """Whether the role goes out (with empty content) before anything is generated; False when the first
        chunk waits for what comes."""
        if not self._text_only:
            return False
        self._role_sent = True
        return True

    def text(self, delta: Delta) -> tuple[str, str] | None:
        """Take a delta that is one piece of text alone (content or reasoning), once the role is out and no
        logprobs wait, and return its field and text: most of a stream's chunks, which the pipeline then
        sends without building models (`_Run.text_chunk`). None, taking nothing, for any other delta."""
        if (
            not self._role_sent
            or self._waiting
            or delta.tool_calls
            or delta.logprobs
            or delta.finish_reason is not None
            or self.params.legacy_functions
        ):
            return None
        if delta.content and not delta.reasoning:
            shaped = ("content", delta.content)
        elif delta.reasoning and not delta.content:
            shaped = ("reasoning_content", delta.reasoning)
        else:
            return None
        self.add(delta)
        return shaped

    def chunk(self, delta: Delta) -> tuple[wire.ChunkDelta, wire.ChoiceLogprobs | None] | None:
        """Take one delta and shape it for a stream: the chunk delta and logprobs to send, or None when
        there is nothing to send yet. The finishing delta gets its own chunk (see `finish`)."""
        delta = self.add(delta)
        if delta.logprobs:
            self._waiting += delta.logprobs
        out = wire.ChunkDelta()
        if delta.reasoning:
            out.reasoning_content = delta.reasoning
        if delta.content:
            out.content = delta.content
        if delta.tool_calls:
            self._calls(out, delta)
        if out == wire.ChunkDelta():
            if not (self._waiting and self._text_only):
                return None
            out.content = ""  # logprobs of text still held back by the engine
        return self._first(out), self._take()

    def bare_finish(self) -> str | None:
        """Once the finishing delta is taken: its finish_reason when the last chunk carries nothing else (the
        role is out, no logprobs wait), as nearly always; None when `finish` must build it."""
        return self.wire_finish if self._role_sent and not self._waiting else None

    def finish(self) -> wire.ChunkChoice:
        """The choice's last chunk: its finish_reason, with any logprobs still waiting. A choice that sent
        nothing carries the role and empty content here, as its plain message has content ""."""
        delta = wire.ChunkDelta() if self._role_sent else self._first(wire.ChunkDelta(content=""))
        return wire.ChunkChoice(
            index=self.index,
            delta=delta,
            finish_reason=self.wire_finish,  # type: ignore[arg-type]
            logprobs=self._take(),
        )

    def _calls(self, out: wire.ChunkDelta, delta: Delta) -> None:
        if self.params.legacy_functions:
            first = [f for f in delta.tool_calls if f.index == 0]
            if first:
                out.function_call = wire.ChunkFunction(
                    name=first[0].name, arguments="".join(f.arguments for f in first)
                )
            return
        out.tool_calls = [
            wire.ChunkToolCall(
                index=f.index,
                id=f.id,
                type="function" if f.id is not None else None,
                function=wire.ChunkFunction(name=f.name, arguments=f.arguments),
            )
            for f in delta.tool_calls
        ]

    def _first(self, delta: wire.ChunkDelta) -> wire.ChunkDelta:
        if self._role_sent:
            return delta
        self._role_sent = True
        return delta.model_copy(update={"role": "assistant"})

    def _take(self) -> wire.ChoiceLogprobs | None:
        if not self._waiting:
            return None
        taken = wire.ChoiceLogprobs(content=wire_logprobs(self._waiting))
        self._waiting = []
        return taken

    # --- the message ---------------------------------------------------------------------------------------
    @property
    def wire_finish(self) -> str:
        finish = self.finish_reason or "stop"
        return "function_call" if finish == "tool_calls" and self.params.legacy_functions else finish

    def message(self) -> wire.ResponseMessage:
        """The message these deltas add up to, as the `openai` SDK merges a stream's chunks."""
        calls = [self.calls[i] for i in sorted(self.calls)]
        content = "".join(self.content) if self.content or not calls else None
        message = wire.ResponseMessage(content=content, reasoning_content="".join(self.reasoning) or None)
        if calls and self.params.legacy_functions:
            first = calls[0]
            message.function_call = wire.ResponseFunctionCall(name=first.name, arguments="".join(first.arguments))
        elif calls:
            message.tool_calls = [
                wire.ResponseToolCall(
                    id=c.id, function=wire.ResponseFunctionCall(name=c.name, arguments="".join(c.arguments))
                )
                for c in calls
            ]
        return message

    def wire_logprobs(self) -> wire.ChoiceLogprobs | None:
        return wire.ChoiceLogprobs(content=wire_logprobs(self.logprobs)) if self.params.logprobs else None
