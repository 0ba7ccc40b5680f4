"""An OpenAI-compatible upstream's stream chunks (or a whole completion) to typed `Delta`s and `Usage`.

Upstreams differ in small ways, read here in one place: reasoning comes as `reasoning_content` (DeepSeek,
SGLang, llama-server) or `reasoning` (vLLM); a legacy `function_call` delta is a tool call; `bytes` of a
logprob may be missing (computed from the token's UTF-8); cached prompt tokens come as
`prompt_tokens_details.cached_tokens` or DeepSeek's `prompt_cache_hit_tokens`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pipeserve.engines.base import Delta, FinishReason, TokenLogprob, ToolCallFragment, TopToken, Usage

log = logging.getLogger("pipeserve.openai")

_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "content_filter": "content_filter",
    "function_call": "tool_calls",  # legacy functions are tool calls to the pipeline
    # Other servers' words for the same ends.
    "eos": "stop",
    "eos_token": "stop",
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_length": "length",
    "tool_use": "tool_calls",
}
# The upstream gave up on the choice (vLLM's `abort`, some servers' `error`): a failure, not an answer.
FAILED_FINISH = frozenset({"abort", "error"})


class ChunkError(Exception):
    """A chunk that reports a failure (an error event inside a 200 stream, an aborted choice)."""

    def __init__(self, payload: dict[str, Any], status: int | None) -> None:
        super().__init__(str(payload))
        self.payload = payload
        self.status = status  # the HTTP status the upstream gave it, when it says


def error_in(chunk: dict[str, Any]) -> ChunkError | None:
    """The failure a chunk reports: `{"error": {...}}` (OpenAI, SGLang) or vLLM's `{"object": "error", ...}`."""
    if "error" in chunk and chunk["error"] is not None:
        inner = chunk["error"]
        code = inner.get("code") if isinstance(inner, dict) else None
        return ChunkError(chunk, code if isinstance(code, int) else None)
    if chunk.get("object") == "error":
        code = chunk.get("code")
        return ChunkError(chunk, code if isinstance(code, int) else None)
    return None


def finish_reason(value: Any) -> FinishReason | None:
    if value is None:
        return None
    reason = str(value)
    if reason in FAILED_FINISH:
        raise ChunkError({"error": {"message": f"the upstream ended a choice with finish_reason {reason!r}"}}, None)
    mapped = _FINISH.get(reason)
    if mapped is None:
        log.warning("unknown finish_reason %r from the upstream; reported as 'stop'", reason)
        return "stop"
    return mapped


def _bytes(entry: dict[str, Any]) -> bytes:
    raw = entry.get("bytes")
    if isinstance(raw, list):
        try:
            return bytes(raw)
        except (TypeError, ValueError):
            pass
    return str(entry.get("token", "")).encode()


def logprobs_of(payload: Any) -> list[TokenLogprob] | None:
    if not isinstance(payload, dict):
        return None
    content = payload.get("content")
    if content is None:
        return None
    out = []
    for entry in content:
        top = [
            TopToken(str(alt.get("token", "")), _bytes(alt), float(alt.get("logprob", 0.0)))
            for alt in entry.get("top_logprobs") or []
        ]
        out.append(TokenLogprob(str(entry.get("token", "")), _bytes(entry), float(entry.get("logprob", 0.0)), top))
    return out


def _fragments(message: dict[str, Any]) -> list[ToolCallFragment]:
    fragments = []
    for position, call in enumerate(message.get("tool_calls") or []):
        function = call.get("function") or {}
        fragments.append(
            ToolCallFragment(
                index=int(call.get("index", position)),
                id=call.get("id") or None,
                name=function.get("name") or None,
                arguments=function.get("arguments") or "",
            )
        )
    legacy = message.get("function_call")
    if legacy:
        name = legacy.get("name") or None
        fragments.append(ToolCallFragment(0, "call_function" if name else None, name, legacy.get("arguments") or ""))
    return fragments


def _delta(index: int, message: dict[str, Any], choice: dict[str, Any]) -> Delta:
    return Delta(
        index=index,
        # A refusal (OpenAI's structured outputs) has no field of its own in a Delta: it goes out as content
        # rather than being lost.
        content=message.get("content") or message.get("refusal") or "",
        reasoning=message.get("reasoning_content") or message.get("reasoning") or "",
        tool_calls=_fragments(message),
        logprobs=logprobs_of(choice.get("logprobs")),
        finish_reason=finish_reason(choice.get("finish_reason")),
    )


def chunk_deltas(chunk: dict[str, Any]) -> list[Delta]:
    """The deltas of one `chat.completion.chunk` (empty ones, like a role-only first chunk, left out)."""
    deltas = []
    for position, choice in enumerate(chunk.get("choices") or []):
        delta = _delta(int(choice.get("index", position)), choice.get("delta") or {}, choice)
        if not delta.empty:
            deltas.append(delta)
    return deltas


def completion_deltas(completion: dict[str, Any]) -> list[Delta]:
    """The deltas of a whole `chat.completion`, for an upstream that answers a stream request without one."""
    deltas = []
    for position, choice in enumerate(completion.get("choices") or []):
        deltas.append(_delta(int(choice.get("index", position)), choice.get("message") or {}, choice))
    return deltas


@dataclass(slots=True)
class Counted:
    """Tokens as the chunks showed them: the fallback for an upstream that sends no usage."""

    completion: int = 0
    reasoning: int = 0

    def add(self, delta: Delta) -> None:
        # Servers send one token per chunk (vLLM, SGLang, llama-server); logprobs, when asked for, count exactly.
        tokens = len(delta.logprobs) if delta.logprobs else int(bool(delta.content or delta.tool_calls))
        self.completion += tokens
        if delta.reasoning:
            self.completion += 1
            self.reasoning += 1


def usage_of(payload: Any) -> Usage | None:
    if not isinstance(payload, dict):
        return None
    prompt_details = payload.get("prompt_tokens_details") or {}
    completion_details = payload.get("completion_tokens_details") or {}
    cached = prompt_details.get("cached_tokens")
    if cached is None:
        cached = payload.get("prompt_cache_hit_tokens")  # DeepSeek
    return Usage(
        prompt_tokens=int(payload.get("prompt_tokens") or 0),
        completion_tokens=int(payload.get("completion_tokens") or 0),
        cached_tokens=int(cached or 0),
        reasoning_tokens=int(completion_details.get("reasoning_tokens") or 0),
    )
