"""The internal parameters of one chat completion: what the wire request becomes at the edge.

Engines receive these, never wire models. Every default lives in `DEFAULTS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Literal

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
    # An earlier spoken answer referred to by its `audio.id`: read as its transcript (pipeserve.audio).
    audio_id: str | None = None


@dataclass(frozen=True, slots=True)
class SamplingParams:
    temperature: float = DEFAULTS["temperature"]
    top_p: float = DEFAULTS["top_p"]
    presence_penalty: float = DEFAULTS["presence_penalty"]
    frequency_penalty: float = DEFAULTS["frequency_penalty"]
    seed: int | None = None
    logit_bias: tuple[tuple[int, float], ...] = ()


ToolChoice = Literal["none", "auto", "required", "named"]


@dataclass(frozen=True, slots=True)
class ResponseFormat:
    """`response_format` json_object or json_schema, as the client gave it (remote engines pass it on)."""

    type: Literal["json_object", "json_schema"]
    schema: dict[str, Any] | None = None
    name: str | None = None
    description: str | None = None
    strict: bool | None = None


@dataclass(frozen=True, slots=True)
class AudioOutput:
    """`audio`: speak the answer in this voice (an OpenAI voice name) and format (`wav`, `pcm16`, ...)."""

    format: str
    voice: str


@dataclass(frozen=True, slots=True)
class ChatParams:
    """A chat completion request as the pipeline and the engines see it."""

    model: str
    messages: tuple[ChatMessage, ...]
    # The name an upstream engine is asked for, when the model is a provider's route (`openai:gpt-4o` → `gpt-4o`);
    # None: the engine's own configured name.
    upstream_model: str | None = None
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
    # The request's tools (or legacy functions); under tool_choice none the model may not call them.
    tools: tuple[ToolSpec, ...] = ()
    parallel_tool_calls: bool = True
    # Legacy `functions`: answer with `message.function_call` and finish_reason `function_call`.
    legacy_functions: bool = False
    # Structured output: content (response_format) or calls (tool_choice required or named) that must be
    # valid JSON; `response_format.schema` has passed `check_schema`.
    tool_choice: ToolChoice = "none"
    tool_name: str | None = None  # the function a `named` tool_choice names
    response_format: ResponseFormat | None = None
    # A spoken answer (`audio`, with `modalities` ["text", "audio"]), made by pipeserve's speech stage.
    audio: AudioOutput | None = None
    # Request fields pipeserve does not interpret itself (`reasoning_effort`, `service_tier`, `prediction`,
    # `verbosity`, `web_search_options`), as sent: only for engines whose capabilities
    # say they pass them on; for the others they are a 400 at the edge.
    passthrough: dict[str, Any] = field(default_factory=dict)
