"""Per-choice assembly of the engine's text: stop strings, held-back text and the logprobs that go with it."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeserve.engines.base import TokenLogprob
from pipeserve.engines.llamacpp.reasoning import ThinkSplitter
from pipeserve.engines.llamacpp.slots import TextDelta
from pipeserve.engines.llamacpp.toolcalls import OneCall, first_call_end
from pipeserve.textutil import partial_suffix


@dataclass(slots=True)
class Emitted:
    """What one delta releases to the client."""

    text: str
    logprobs: list[TokenLogprob]
    finish_reason: str | None
    reasoning: str = ""


@dataclass
class ChoiceState:
    """Text of one choice as the client sees it.

    Text that could be the start of a stop string is held back until it can't be; a stop string is never
    emitted. Each token's logprob is released with the first character of its text, and dropped when its
    text lies entirely inside or after a matched stop string. With `one_call` (tool_choice auto with
    parallel_tool_calls false) the choice ends right after its first complete call, as at a stop string
    that is kept.
    """

    index: int
    stop: tuple[str, ...]
    think: ThinkSplitter | None = None  # a reasoning model's thinking goes to `reasoning`, not the text
    one_call: OneCall | None = None
    tokens: int = 0
    reasoning_tokens: int = 0
    finish_reason: str | None = None
    text: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    _held: str = ""
    _received: int = 0
    _emitted: int = 0
    _pending: list[tuple[int, TokenLogprob]] = field(default_factory=list)
    _seen: str = ""  # the answer so far, when looking for the end of a call
    _scan: int | None = 0  # where in it to look next; None once no call can come

    def feed(self, delta: TextDelta) -> Emitted | None:
        if self.finish_reason is not None:
            return None  # already finished by a stop string; the engine's in-flight tokens are dropped
        self.tokens += delta.tokens
        text, thought, thinking = delta.text, "", False
        if self.think is not None:
            thinking = self.think.thinking
            thought, text = self.think.feed(text)
            if delta.finish_reason is not None:
                thought += self.think.flush()
            self.reasoning.append(thought)
        if thinking:
            # Tokens read while thinking are reasoning tokens; their logprobs are not reported (as OpenAI).
            self.reasoning_tokens += delta.tokens
        else:
            for entry in delta.logprobs or ():
                self._pending.append((self._received, entry))
        self._held += text
        self._received += len(text)

        cut = self._stop_at()
        if self.one_call is not None:
            ended = self._call_end(self.one_call, text)
            if ended is not None and (cut is None or ended <= cut):
                return self._release(self._held[:ended], "stop", drop_rest=True, thought=thought)
        if cut is not None:
            return self._release(self._held[:cut], "stop", drop_rest=True, thought=thought)
        if delta.finish_reason is not None:
            return self._release(self._held, delta.finish_reason, drop_rest=False, thought=thought)
        keep = partial_suffix(self._held, self.stop)
        return self._release(self._held[: len(self._held) - keep], None, drop_rest=False, thought=thought)

    def _call_end(self, rule: OneCall, text: str) -> int | None:
        """Where in the held text the first complete call ends, if it has."""
        if self._scan is None:
            return None
        self._seen += text
        end, self._scan = first_call_end(self._seen, rule, self._scan)
        return None if end is None else end - self._emitted

    def _stop_at(self) -> int | None:
        found = [i for i in (self._held.find(s) for s in self.stop) if i >= 0]
        return min(found) if found else None

    def _release(self, text: str, finish: str | None, *, drop_rest: bool, thought: str) -> Emitted:
        self._held = self._held[len(text) :]
        self._emitted += len(text)
        released: list[TokenLogprob] = []
        still: list[tuple[int, TokenLogprob]] = []
        for start, entry in self._pending:
            if start < self._emitted or (finish is not None and not drop_rest):
                released.append(entry)
            elif not drop_rest:
                still.append((start, entry))
        self._pending = still
        if finish is not None:
            self.finish_reason = finish
            self._held = ""
        self.text.append(text)
        self.logprobs.extend(released)
        return Emitted(text, released, finish, thought)

    @property
    def content(self) -> str:
        return "".join(self.text)

    @property
    def reasoning_content(self) -> str | None:
        return "".join(self.reasoning) or None if self.think is not None else None
