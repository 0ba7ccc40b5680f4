"""`ChatParams` to the body of an OpenAI-compatible `POST /chat/completions`.

Every field of the contract passes on, with these choices:
- a streamed request is streamed from the upstream with `stream_options.include_usage` (chunks pass through
  as they come, with the usage at the end); a plain one asks for a plain answer: one JSON body to read
  rather than an event per token (in front of a fast upstream, ~0.15 ms less per request,
  bench/gateway.py), read by the same code as the chunks;
- sampling fields at their OpenAI defaults are left out, so the upstream's own defaults apply (the same
  for OpenAI; vLLM's come from the model's generation_config, which is what its users expect);
- `metadata` and `store` are pipeserve's own (logging) and stay here: OpenAI refuses `metadata` without
  `store`, and `store: true` would log the request at OpenAI as well;
- earlier assistant messages lose their `reasoning` (DeepSeek's API refuses `reasoning_content` in input and
  chat templates drop it anyway);
- legacy `functions` arrive here as tools; their `function` result messages become `tool` messages answering
  the call they follow.
"""

from __future__ import annotations

from typing import Any

import orjson

from pipeserve.params import DEFAULTS, ChatMessage, ChatParams, ToolSpec

_SAMPLING_DEFAULTS = ("temperature", "top_p", "presence_penalty", "frequency_penalty")


def message_json(message: ChatMessage, call_ids: dict[str, str]) -> dict[str, Any]:
    """One message in OpenAI's shape. `call_ids` maps function names to the ids of the latest assistant
    calls, to answer legacy `function` messages as tool results."""
    if message.role == "function":
        call_id = call_ids.get(message.name or "", "call_function")
        return {"role": "tool", "tool_call_id": call_id, "content": message.content}
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.name is not None:
        out["name"] = message.name
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    if message.tool_calls:
        out["tool_calls"] = [
            {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
            for call in message.tool_calls
        ]
        if not message.content:
            out["content"] = None  # OpenAI's own shape for an assistant turn that only calls tools
        call_ids.update({call.name: call.id for call in message.tool_calls})
    return out


def tool_json(tool: ToolSpec) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name, "parameters": tool.parameters}
    if tool.description is not None:
        function["description"] = tool.description
    if tool.strict is not None:
        function["strict"] = tool.strict
    return {"type": "function", "function": function}


def request_body(
    params: ChatParams,
    *,
    model: str,
    max_tokens_field: str,
    n: int | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The upstream request for `params` (with `n` overriding `params.n`, for fan-out). `extra` (the model's
    `extra_body`) goes under the request's passthrough fields, which go under the fields set here."""
    call_ids: dict[str, str] = {}
    body: dict[str, Any] = {**(extra or {}), **params.passthrough}
    body["model"] = model
    body["messages"] = [message_json(m, call_ids) for m in params.messages]
    count = params.n if n is None else n
    if count != 1:
        body["n"] = count
    if params.max_tokens is not None:
        if max_tokens_field in ("both", "max_completion_tokens"):
            body["max_completion_tokens"] = params.max_tokens
        if max_tokens_field in ("both", "max_tokens"):
            body["max_tokens"] = params.max_tokens
    sampling = params.sampling
    for name in _SAMPLING_DEFAULTS:
        value = getattr(sampling, name)
        if value != DEFAULTS[name]:
            body[name] = value
    if sampling.seed is not None:
        body["seed"] = sampling.seed
    if sampling.logit_bias:
        body["logit_bias"] = {str(token): bias for token, bias in sampling.logit_bias}
    if params.stop:
        body["stop"] = list(params.stop)
    if params.logprobs:
        body["logprobs"] = True
        if params.top_logprobs:
            body["top_logprobs"] = params.top_logprobs
    if params.tools:
        body["tools"] = [tool_json(t) for t in params.tools]
        if params.tool_choice == "named":
            body["tool_choice"] = {"type": "function", "function": {"name": params.tool_name}}
        else:
            body["tool_choice"] = params.tool_choice
        body["parallel_tool_calls"] = params.parallel_tool_calls
    if params.response_format is not None:
        body["response_format"] = response_format_json(params)
    if params.user is not None:
        body["user"] = params.user
    if params.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def response_format_json(params: ChatParams) -> dict[str, Any]:
    fmt = params.response_format
    assert fmt is not None
    if fmt.type == "json_object":
        return {"type": "json_object"}
    schema: dict[str, Any] = {"name": fmt.name or "response", "schema": fmt.schema or {}}
    if fmt.description is not None:
        schema["description"] = fmt.description
    if fmt.strict is not None:
        schema["strict"] = fmt.strict
    return {"type": "json_schema", "json_schema": schema}


def affinity_text(body: dict[str, Any], chars: int) -> str:
    """The first `chars` characters of the prompt as the upstream will see it, roughly in the order a chat
    template renders it (tools, then messages), without its last message: that is the part each request
    brings anew (a user's question), while what comes before it (the system prompt, few-shot examples, the
    conversation so far) is what requests of one application or one conversation share. Rendered message by
    message only as far as needed: a long conversation costs no more than a short one."""
    parts = [orjson.dumps(body.get("tools", []), option=orjson.OPT_SORT_KEYS).decode()]
    length = len(parts[0])
    messages = body["messages"]
    for message in messages[:-1] if len(messages) > 1 else messages:
        if length >= chars:
            break
        parts.append(orjson.dumps(message).decode())
        length += len(parts[-1])
    return "".join(parts)[:chars]
