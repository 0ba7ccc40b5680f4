"""The edge: a validated wire request becomes `ChatParams`, or a clear 400 naming the field."""

from __future__ import annotations

import json
from typing import Any

from pipeserve.errors import InvalidRequestError, UnsupportedParameterError
from pipeserve.params import DEFAULTS, ChatMessage, ChatParams, SamplingParams
from pipeserve.protocol.chat_completions import (
    AssistantMessage,
    ChatCompletionRequest,
    FunctionMessage,
    Message,
    TextPart,
)

# Fields whose support is scheduled but not built yet: named in a 400 rather than ignored.
_NOT_YET = (
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "parallel_tool_calls",
    "audio",
    "prediction",
    "web_search_options",
)
_METADATA_LIMITS = (16, 64, 512)  # pairs, key length, value length: OpenAI's limits


def _pick(value: Any, name: str) -> Any:
    return DEFAULTS[name] if value is None else value


def to_params(request: ChatCompletionRequest) -> ChatParams:
    _reject_unsupported(request)
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
    )


def _reject_unsupported(request: ChatCompletionRequest) -> None:
    for name in _NOT_YET:
        if getattr(request, name) is not None:
            raise UnsupportedParameterError(
                f"'{name}' is not supported by this pipeserve version yet. Remove it from the request.",
                param=name,
            )
    if request.response_format is not None and request.response_format.type != "text":
        raise UnsupportedParameterError(
            f"response_format of type '{request.response_format.type}' is not supported by this pipeserve "
            "version yet. Use {'type': 'text'} or remove response_format.",
            param="response_format",
        )
    if request.modalities is not None and "audio" in request.modalities:
        raise UnsupportedParameterError(
            "This model produces text only. Use modalities ['text'] or remove the field.", param="modalities"
        )
    if request.reasoning_effort is not None:
        raise UnsupportedParameterError(
            "reasoning_effort applies to reasoning models only; this model does not reason. Remove the field.",
            param="reasoning_effort",
        )
    if request.verbosity is not None:
        raise UnsupportedParameterError(
            "verbosity is not supported by this model. Remove the field.", param="verbosity"
        )
    if request.service_tier not in (None, "auto", "default"):
        raise InvalidRequestError(
            f"service_tier '{request.service_tier}' is not offered; pipeserve has one tier ('default').",
            param="service_tier",
        )


def _message(index: int, message: Message) -> ChatMessage:
    if isinstance(message, FunctionMessage):
        return ChatMessage("function", message.content or "", name=message.name)
    if isinstance(message, AssistantMessage):
        return ChatMessage("assistant", _assistant_text(message), name=message.name)
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
        text = message.refusal or ""
    elif isinstance(message.content, str):
        text = message.content
    else:
        text = "\n".join(part.text if isinstance(part, TextPart) else part.refusal for part in message.content)
    # Until tool calling lands, earlier calls are kept in the prompt as JSON rather than dropped.
    calls = [call.function.model_dump() for call in message.tool_calls or []]
    if message.function_call is not None:
        calls.append(message.function_call.model_dump())
    if calls:
        text = (text + "\n" if text else "") + json.dumps({"tool_calls": calls}, ensure_ascii=False)
    return text


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
