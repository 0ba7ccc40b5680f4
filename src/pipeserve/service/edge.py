"""The edge: a validated wire request becomes `ChatParams`, or a clear 400 naming the field."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pipeserve.errors import InvalidRequestError
from pipeserve.params import (
    DEFAULTS,
    AudioOutput,
    ChatMessage,
    ChatParams,
    ResponseFormat,
    SamplingParams,
    ToolCall,
    ToolChoice,
    ToolSpec,
)
from pipeserve.protocol.chat_completions import (
    AssistantMessage,
    ChatCompletionRequest,
    FunctionDefinition,
    FunctionMessage,
    Message,
    TextPart,
)
from pipeserve.structured.schema import check_schema

# Fields pipeserve does not act on itself; only upstream engines that pass them on can honour them.
_PASSTHROUGH = (
    "prediction",
    "reasoning_effort",
    "service_tier",
    "verbosity",
    "web_search_options",
)
_FUNCTION_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_METADATA_LIMITS = (16, 64, 512)  # pairs, key length, value length: OpenAI's limits
_DESCRIPTION_CHARS = 1024  # OpenAI's limit on a function's description


def _pick(value: Any, name: str) -> Any:
    return DEFAULTS[name] if value is None else value


def to_params(request: ChatCompletionRequest) -> ChatParams:
    stream = bool(_pick(request.stream, "stream"))
    if request.stream_options is not None and not stream:
        raise InvalidRequestError(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled. Remove it or set 'stream': true.",
            param="stream_options",
        )
    logprobs = bool(_pick(request.logprobs, "logprobs"))
    if request.top_logprobs is not None and not logprobs:
        raise InvalidRequestError(
            "'top_logprobs' requires 'logprobs' to be true. Set 'logprobs': true or remove 'top_logprobs'.",
            param="top_logprobs",
        )
    stop = (request.stop,) if isinstance(request.stop, str) else tuple(request.stop or ())
    response_format = _response_format(request)
    tooling = _tooling(request)
    if (tooling.choice in ("required", "named") or response_format is not None) and stop:
        raise InvalidRequestError(
            "'stop' can't be combined with structured output: cutting the JSON at a stop string would break "
            "it. Remove 'stop', or use a text response_format.",
            param="stop",
        )
    return ChatParams(
        model=request.model,
        messages=tuple(_message(i, message) for i, message in enumerate(request.messages)),
        n=_pick(request.n, "n"),
        max_tokens=request.max_completion_tokens if request.max_completion_tokens is not None else request.max_tokens,
        sampling=SamplingParams(
            temperature=_pick(request.temperature, "temperature"),
            top_p=_pick(request.top_p, "top_p"),
            presence_penalty=_pick(request.presence_penalty, "presence_penalty"),
            frequency_penalty=_pick(request.frequency_penalty, "frequency_penalty"),
            seed=request.seed,
            logit_bias=_logit_bias(request.logit_bias),
        ),
        stop=tuple(s for s in stop if s),
        logprobs=logprobs,
        top_logprobs=_pick(request.top_logprobs, "top_logprobs"),
        stream=stream,
        include_usage=bool(request.stream_options and request.stream_options.include_usage),
        store=request.store,
        metadata=_metadata(request.metadata),
        user=request.user if request.user is not None else request.safety_identifier,
        tools=tooling.tools,
        parallel_tool_calls=tooling.parallel,
        legacy_functions=tooling.legacy,
        tool_choice=tooling.choice,
        tool_name=tooling.name,
        response_format=response_format,
        audio=_audio(request, stream),
        passthrough=_passthrough(request),
    )


# OpenAI's audio formats; which of them this server can write is checked by the speech stage.
_AUDIO_FORMATS = ("wav", "mp3", "flac", "opus", "pcm16", "aac")


def _audio(request: ChatCompletionRequest, stream: bool) -> AudioOutput | None:
    """`audio`, with `modalities` naming audio or unset; a streamed answer's audio is pcm16, as OpenAI streams it."""
    spoken = request.modalities is not None and "audio" in request.modalities
    if request.audio is None:
        if spoken:
            raise InvalidRequestError(
                "'modalities' asks for audio, so 'audio' is required: add 'audio': {\"voice\": \"alloy\", "
                '"format": "wav"}, or remove "audio" from \'modalities\'.',
                param="audio",
            )
        return None
    if request.modalities is not None and not spoken:
        raise InvalidRequestError(
            "'audio' is set but 'modalities' doesn't include \"audio\": use 'modalities': [\"text\", \"audio\"], "
            "or remove 'audio'.",
            param="modalities",
        )
    fmt = request.audio.format
    if fmt not in _AUDIO_FORMATS:
        raise InvalidRequestError(
            f"Invalid 'audio.format' {fmt!r}: use one of {list(_AUDIO_FORMATS)}.", param="audio.format"
        )
    if stream and fmt != "pcm16":
        raise InvalidRequestError(
            f"A streamed answer's audio is sent as pcm16, so 'audio.format' must be \"pcm16\" with 'stream': true "
            f"(got {fmt!r}). Ask for pcm16, or don't stream.",
            param="audio.format",
            code="unsupported_value",
        )
    return AudioOutput(fmt, request.audio.voice)


@dataclass(frozen=True)
class _Tooling:
    tools: tuple[ToolSpec, ...] = ()
    parallel: bool = True
    legacy: bool = False
    choice: ToolChoice = "none"
    name: str | None = None


def _tooling(request: ChatCompletionRequest) -> _Tooling:
    """tools/functions, tool_choice/function_call and response_format: what the output must be."""
    if request.tools is not None and request.functions is not None:
        raise InvalidRequestError("Send either 'tools' or the legacy 'functions', not both.", param="functions")
    legacy = request.functions is not None
    name = "functions" if legacy else "tools"
    choice_param = "function_call" if legacy else "tool_choice"
    definitions = request.functions if legacy else [t.function for t in request.tools or []]
    choice: Any = request.function_call if legacy else request.tool_choice
    if request.tools is None and request.functions is None:
        if request.tool_choice is not None or request.function_call is not None:
            which = "tool_choice" if request.tool_choice is not None else "function_call"
            needs = "tools" if which == "tool_choice" else "functions"
            raise InvalidRequestError(f"'{which}' is only allowed when '{needs}' are specified.", param=which)
        if request.parallel_tool_calls is not None:
            raise InvalidRequestError(
                "'parallel_tool_calls' is only allowed when 'tools' are specified.", param="parallel_tool_calls"
            )
        return _Tooling()
    assert definitions is not None
    if not definitions:
        raise InvalidRequestError(f"'{name}' must list at least one function; remove it to call none.", param=name)
    params = [f"functions[{i}]" if legacy else f"tools[{i}].function" for i in range(len(definitions))]
    tools = tuple(_tool_spec(d, param) for d, param in zip(definitions, params, strict=True))
    names = [t.name for t in tools]
    if len(set(names)) != len(names):
        raise InvalidRequestError(f"Function names in '{name}' must be unique.", param=name)
    parallel = False if legacy else request.parallel_tool_calls is not False
    if choice is None or choice == "auto":
        return _Tooling(tools, parallel, legacy, "auto")
    if choice == "none":
        return _Tooling(tools, parallel, legacy, "none")
    if choice == "required":
        return _Tooling(tools, parallel, legacy, "required")
    wanted = choice.name if legacy else choice.function.name
    chosen = tuple(t for t in tools if t.name == wanted)
    if not chosen:
        raise InvalidRequestError(
            f"'{choice_param}' names the function '{wanted}', which is not among the {name}: {names}.",
            param=choice_param,
        )
    return _Tooling(tools, False, legacy, "named", wanted)


def _tool_spec(definition: FunctionDefinition, param: str) -> ToolSpec:
    if not definition.name or not _FUNCTION_NAME.fullmatch(definition.name):
        raise InvalidRequestError(
            f"Invalid function name {definition.name!r}: use a-z, A-Z, 0-9, underscores and dashes, at most 64.",
            param=f"{param}.name",
        )
    if definition.description is not None and len(definition.description) > _DESCRIPTION_CHARS:
        raise InvalidRequestError(
            f"Invalid '{param}.description': string too long. Expected a string with maximum length "
            f"{_DESCRIPTION_CHARS}, but got a string with length {len(definition.description)} instead. Shorten it; "
            "put long instructions in the system message.",
            param=f"{param}.description",
            code="string_above_max_length",
        )
    parameters = definition.parameters if definition.parameters is not None else {"type": "object", "properties": {}}
    check_schema(parameters, param=f"{param}.parameters")
    return ToolSpec(definition.name, definition.description, parameters, definition.strict)


def _response_format(request: ChatCompletionRequest) -> ResponseFormat | None:
    fmt = request.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return ResponseFormat("json_object")
    spec = fmt.json_schema
    schema = check_schema(spec.schema_ if spec.schema_ is not None else {}, param="response_format.json_schema.schema")
    return ResponseFormat("json_schema", schema, spec.name, spec.description, spec.strict)


def _passthrough(request: ChatCompletionRequest) -> dict[str, Any]:
    """Fields pipeserve does not interpret, as sent: an upstream engine that knows them gets them; any other
    engine answers 400 naming the first (see `ChatService`). Values that ask for nothing are dropped."""
    fields = request.model_dump(include=set(_PASSTHROUGH), exclude_none=True, by_alias=True, mode="json")
    if fields.get("service_tier") in ("auto", "default"):
        del fields["service_tier"]
    return fields


def _message(index: int, message: Message) -> ChatMessage:
    if isinstance(message, FunctionMessage):
        return ChatMessage("function", message.content or "", name=message.name)
    if isinstance(message, AssistantMessage):
        return ChatMessage(
            "assistant",
            _assistant_text(message),
            name=message.name,
            tool_calls=_assistant_calls(message),
            audio_id=message.audio.id if message.audio is not None else None,
        )
    content = message.content
    if isinstance(content, str):
        text = content
    else:
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, TextPart):
                kind = part.type.replace("input_", "").replace("_url", "")
                raise InvalidRequestError(
                    f"This model accepts text only, but messages[{index}].content[{j}] is of type "
                    f"'{part.type}'. Send the {kind} as text or use a model that accepts it.",
                    param=f"messages[{index}].content[{j}]",
                    code="unsupported_content",
                )
            texts.append(part.text)
        text = "\n".join(texts)
    return ChatMessage(
        message.role,
        text,
        name=getattr(message, "name", None),
        tool_call_id=getattr(message, "tool_call_id", None),
    )


def _assistant_text(message: AssistantMessage) -> str:
    if message.content is None:
        return message.refusal or ""
    if isinstance(message.content, str):
        return message.content
    return "\n".join(part.text if isinstance(part, TextPart) else part.refusal for part in message.content)


def _assistant_calls(message: AssistantMessage) -> tuple[ToolCall, ...]:
    calls = [ToolCall(c.id, c.function.name, c.function.arguments) for c in message.tool_calls or []]
    if message.function_call is not None:
        calls.append(ToolCall("call_function", message.function_call.name, message.function_call.arguments))
    return tuple(calls)


def _logit_bias(bias: dict[str, float] | None) -> tuple[tuple[int, float], ...]:
    if not bias:
        return ()
    pairs = []
    for key, value in bias.items():
        try:
            token = int(key)
        except ValueError:
            raise InvalidRequestError(
                f"logit_bias keys must be token ids (integers as strings); got {key!r}.", param="logit_bias"
            ) from None
        pairs.append((token, value))
    return tuple(pairs)


def _metadata(metadata: dict[str, str] | None) -> dict[str, str]:
    if not metadata:
        return {}
    pairs, key_len, value_len = _METADATA_LIMITS
    if len(metadata) > pairs:
        raise InvalidRequestError(f"metadata holds at most {pairs} pairs; got {len(metadata)}.", param="metadata")
    for key, value in metadata.items():
        if len(key) > key_len:
            raise InvalidRequestError(
                f"metadata keys are at most {key_len} characters; {key[:20]!r}… has {len(key)}.",
                param="metadata",
            )
        if len(value) > value_len:
            raise InvalidRequestError(
                f"metadata values are at most {value_len} characters; the value of {key!r} has {len(value)}.",
                param="metadata",
            )
    return dict(metadata)
