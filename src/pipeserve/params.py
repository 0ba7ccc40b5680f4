"""The internal parameters of one chat completion: what the wire request becomes at the edge.

Engines receive these, never wire models. Every default lives in `DEFAULTS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Literal

# What the completion text is: plain content; content that may hold `<tool_call>` blocks (tool_choice auto);
# or JSON tool calls under a constraint (tool_choice required or named).
OutputMode = Literal["text", "auto_tools", "tool_json"]

DEFAULTS: Final[dict[str, Any]] = {
    "n": 1,
    "temperature": 1.0,
    "top_p": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "logprobs": False,
    "top_logprobs": 0,
    "stream": False,
    "include_usage": False,
}


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A call the assistant made: `arguments` is the JSON text of the arguments, as on the wire."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ToolSpec:
    name: str
    description: str | None
    parameters: dict[str, Any]
    strict: bool | None = None


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One message, its content already flattened to text. `role` is the wire role."""

    role: str
    content: str
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    reasoning: str | None = None


@dataclass(frozen=True, slots=True)
class SamplingParams:
    temperature: float = DEFAULTS["temperature"]
    top_p: float = DEFAULTS["top_p"]
    presence_penalty: float = DEFAULTS["presence_penalty"]
    frequency_penalty: float = DEFAULTS["frequency_penalty"]
    seed: int | None = None
    logit_bias: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True, slots=True)
class ChatParams:
    """A chat completion request as the pipeline and the engines see it."""

    model: str
    messages: tuple[ChatMessage, ...]
    n: int = DEFAULTS["n"]
    # None: as many tokens as the context window leaves after the prompt (OpenAI's meaning of "unset").
    max_tokens: int | None = None
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop: tuple[str, ...] = ()
    logprobs: bool = DEFAULTS["logprobs"]
    top_logprobs: int = DEFAULTS["top_logprobs"]
    stream: bool = DEFAULTS["stream"]
    include_usage: bool = DEFAULTS["include_usage"]
    store: bool | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    user: str | None = None
    # Structured output: the completion must be one JSON value valid against this schema (engines enforce it).
    constraint: dict[str, Any] | None = None
    # Tools the model is told about, and what its output means.
    tools: tuple[ToolSpec, ...] = ()
    output: OutputMode = "text"
    parallel_tool_calls: bool = True
    # Legacy `functions`: answer with `message.function_call` and finish_reason `function_call`.
    legacy_functions: bool = False
