"""Anthropic's stream events of one choice, read as typed deltas.

Anthropic streams content blocks: text, thinking (reported as reasoning), and tool_use, whose input arrives
as pieces of JSON text (`input_json_delta`), passed on as argument fragments as they come. The tool that
carries a `response_format` answer is read as content instead. Signatures, citations and server-tool blocks
carry nothing an OpenAI client reads and are skipped.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from pipeserve.engines.anthropic.request import Plan
from pipeserve.engines.base import Delta, FinishReason, ToolCallFragment

_FINISH: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",  # a server tool's long turn paused: the answer so far is complete text
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

_WRAPPER = re.compile(r'^\s*\{\s*"value"\s*:\s*')

# Anthropic's error types, with the HTTP status each stands for, so that an `error` event inside a stream
# is read like the same error before it.
ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


class StreamError(Exception):
    """An `error` event: Anthropic failed the request after answering 200."""

    def __init__(self, status: int, payload: dict[str, Any]) -> None:
        super().__init__(str(payload))
        self.status = status
        self.payload = payload


class MalformedStream(Exception):
    """Events that can't be read: not JSON, or a block delta without its block."""


@dataclass(slots=True)
class _Block:
    kind: str  # text, thinking, tool, answer (the response_format tool), other
    call: int = -1  # the tool call's index among the choice's calls
    arguments: bool = False  # some argument text was passed on


class ChoiceReader:
    """Feeds on the events of one upstream request and yields the deltas of choice `index`."""

    def __init__(self, index: int, plan: Plan) -> None:
        self.index = index
        self.plan = plan
        self.reset()

    def reset(self) -> None:
        """Forget what an earlier attempt read (a retry starts the message over)."""
        self.blocks: dict[int, _Block] = {}
        self.calls = 0
        self.answer: list[str] = []  # a wrapped response_format answer, unwrapped once complete
        self.finished = False  # message_stop seen
        self.stop_reason: str | None = None
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.completion_tokens = 0
        self.reasoning_tokens = 0

    def feed(self, data: str) -> list[Delta]:
        try:
            event = json.loads(data)
        except ValueError:
            raise MalformedStream(f"an event that is not JSON: {data[:200]!r}") from None
        try:
            return self._event(event)
        except (AttributeError, TypeError, KeyError, ValueError) as exc:  # fields of unexpected types
            raise MalformedStream(f"an event of an unexpected shape ({exc!r}): {data[:200]!r}") from None

    def _event(self, event: dict[str, Any]) -> list[Delta]:
        kind = event.get("type")
        if kind == "message_start":
            self._usage(event.get("message", {}).get("usage") or {})
        elif kind == "content_block_start":
            return self._block_start(event)
        elif kind == "content_block_delta":
            return self._block_delta(event)
        elif kind == "content_block_stop":
            return self._block_stop(event)
        elif kind == "message_delta":
            self.stop_reason = (event.get("delta") or {}).get("stop_reason") or self.stop_reason
            self._usage(event.get("usage") or {})
        elif kind == "message_stop":
            self.finished = True
            return [Delta(self.index, finish_reason=self.finish_reason())]
        elif kind == "error":
            error = event.get("error") or {}
            raise StreamError(ERROR_STATUS.get(str(error.get("type")), 500), event)
        # ping, and event types newer than this code: nothing to pass on
        return []

    def finish_reason(self) -> FinishReason:
        reason = _FINISH.get(self.stop_reason or "", "stop")
        if reason == "tool_calls" and self.calls == 0:
            return "stop"  # only the response_format tool was called: its input is the content
        return reason

    def _usage(self, usage: dict[str, Any]) -> None:
        # message_delta's counts are cumulative; absent fields keep what message_start said.
        fresh = usage.get("input_tokens")
        read = usage.get("cache_read_input_tokens")
        written = usage.get("cache_creation_input_tokens")
        if fresh is not None or read is not None or written is not None:
            self.cached_tokens = read or 0
            self.prompt_tokens = (fresh or 0) + (read or 0) + (written or 0)
        if usage.get("output_tokens") is not None:
            self.completion_tokens = usage["output_tokens"]
        details = usage.get("output_tokens_details") or {}
        if details.get("thinking_tokens") is not None:
            self.reasoning_tokens = details["thinking_tokens"]

    def _block_start(self, event: dict[str, Any]) -> list[Delta]:
        content = event.get("content_block") or {}
        kind = content.get("type")
        block = _Block("other")
        deltas: list[Delta] = []
        if kind == "text":
            block.kind = "text"
            if content.get("text"):
                deltas.append(Delta(self.index, content=content["text"]))
        elif kind == "thinking":
            block.kind = "thinking"
            if content.get("thinking"):
                deltas.append(Delta(self.index, reasoning=content["thinking"]))
        elif kind == "tool_use" and content.get("name") == self.plan.json_tool:
            block.kind = "answer"
        elif kind == "tool_use":
            block.kind, block.call = "tool", self.calls
            self.calls += 1
            fragment = ToolCallFragment(block.call, id=content.get("id"), name=content.get("name"))
            deltas.append(Delta(self.index, tool_calls=[fragment]))
        self.blocks[event.get("index", len(self.blocks))] = block
        return deltas

    def _block_delta(self, event: dict[str, Any]) -> list[Delta]:
        block = self.blocks.get(event.get("index", -1))
        if block is None:
            raise MalformedStream(f"a content_block_delta for block {event.get('index')}, which never started")
        delta = event.get("delta") or {}
        kind = delta.get("type")
        if kind == "text_delta" and block.kind == "text":
            text = delta.get("text", "")
            return [Delta(self.index, content=text)] if text else []
        if kind == "thinking_delta" and block.kind == "thinking":
            text = delta.get("thinking", "")
            return [Delta(self.index, reasoning=text)] if text else []
        if kind == "input_json_delta":
            piece = delta.get("partial_json", "")
            if not piece:
                return []
            block.arguments = True
            if block.kind == "tool":
                return [Delta(self.index, tool_calls=[ToolCallFragment(block.call, arguments=piece)])]
            if block.kind == "answer":
                if self.plan.json_wrapped:
                    self.answer.append(piece)
                    return []
                return [Delta(self.index, content=piece)]
        return []  # signature_delta, citations_delta: nothing an OpenAI client reads

    def _block_stop(self, event: dict[str, Any]) -> list[Delta]:
        block = self.blocks.get(event.get("index", -1))
        if block is None:
            return []
        if block.kind == "tool" and not block.arguments:
            # A call without arguments streams none; OpenAI clients expect the JSON text of an empty object.
            return [Delta(self.index, tool_calls=[ToolCallFragment(block.call, arguments="{}")])]
        if block.kind == "answer" and self.plan.json_wrapped:
            text, self.answer = "".join(self.answer), []
            try:
                text = json.dumps(json.loads(text)["value"], ensure_ascii=False)
            except (ValueError, KeyError, TypeError):
                # Cut short (max_tokens): pass on what was written of the value; the finish says `length`.
                text = _WRAPPER.sub("", text, count=1)
            return [Delta(self.index, content=text)] if text else []
        if block.kind == "answer" and not block.arguments:
            return [Delta(self.index, content="{}")]
        return []
