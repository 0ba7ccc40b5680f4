"""A chat completion as an Anthropic Messages API request body.

What OpenAI's chat format says and Anthropic's does not, decided here:
- system and developer messages, wherever they stand, are joined in order into `system` (as Anthropic's own
  OpenAI compatibility layer does): Anthropic has no positional system turn, and turning a late system message
  into user text would lend the user its authority.
- an assistant's `reasoning` in the history is left out: Anthropic accepts past thinking only with the
  signature it issued, which OpenAI's format does not carry.
- `temperature` is OpenAI's 0 to 2 against Anthropic's 0 to 1: values above 1 are a 400 rather than silently
  changed; the defaults (temperature 1, top_p 1, Anthropic's own) are not sent, since newer models refuse
  some sampling fields.
- `response_format` becomes a forced tool whose input is the JSON answer (see `Plan`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from pipeserve.engines.anthropic.options import AnthropicOptions
from pipeserve.errors import InvalidRequestError, UnsupportedParameterError
from pipeserve.params import DEFAULTS, ChatMessage, ChatParams, ToolSpec

_ID_CHARS = re.compile(r"[^A-Za-z0-9_-]")
_LEGACY_CALL_ID = "call_function"  # the id the edge gives a legacy `function_call`
_JSON_TOOL_DESCRIPTION = "Give your final answer by calling this tool: its input is the answer, as JSON."


@dataclass(frozen=True, slots=True)
class Plan:
    """The request body, and how to read the answer back.

    `json_tool` names the tool that carries a `response_format` answer: its input is the content. When the
    schema's root is not an object (Anthropic's tool inputs are objects), the answer travels wrapped as
    `{"value": ...}` (`json_wrapped`) and is unwrapped once complete."""

    body: dict[str, Any]
    json_tool: str | None = None
    json_wrapped: bool = False


def build_request(params: ChatParams, options: AnthropicOptions, model: str) -> Plan:
    _reject_unsupported(params)
    system, turns = conversation(params.messages)
    thinking = options.thinking_budget
    body: dict[str, Any] = {"model": model, "messages": turns, "stream": True}
    if system:
        body["system"] = system
    tools, choice, json_tool, wrapped = _tools(params)
    max_tokens = params.max_tokens if params.max_tokens is not None else options.default_max_tokens
    # Thinking is the operator's extra, the request's fields come first: Anthropic refuses thinking with a
    # forced tool, and counts it within max_tokens, which must exceed the budget.
    forced = choice is not None and choice["type"] in ("any", "tool")
    if thinking is not None and not forced and max_tokens > thinking:
        body["thinking"] = {"type": "enabled", "budget_tokens": thinking}
    body["max_tokens"] = max_tokens
    if tools:
        body["tools"] = tools
    if choice is not None:
        body["tool_choice"] = choice
    if params.stop:
        body["stop_sequences"] = list(params.stop)
    body.update(_sampling(params))
    if params.user:
        body["metadata"] = {"user_id": params.user}
    return Plan(body, json_tool, wrapped)


def _reject_unsupported(params: ChatParams) -> None:
    """Fields Anthropic has no equivalent for. The pipeline turns down most of them from the capabilities;
    the penalties have no capability flag, so they are checked here."""
    sampling = params.sampling
    unsupported = [
        ("presence_penalty", sampling.presence_penalty != DEFAULTS["presence_penalty"]),
        ("frequency_penalty", sampling.frequency_penalty != DEFAULTS["frequency_penalty"]),
        ("logit_bias", bool(sampling.logit_bias)),
        ("seed", sampling.seed is not None),
        ("logprobs", params.logprobs),
    ]
    for name, given in unsupported:
        if given:
            raise UnsupportedParameterError(
                f"'{name}' is not supported by Anthropic models. Remove it from the request.", param=name
            )


def _sampling(params: ChatParams) -> dict[str, Any]:
    sampling: dict[str, Any] = {}
    temperature = params.sampling.temperature
    if temperature != DEFAULTS["temperature"]:
        if not 0 <= temperature <= 1:
            raise InvalidRequestError(
                f"temperature {temperature} is out of range for Anthropic models, which take 0 to 1 (OpenAI's "
                "scale goes to 2). Send a temperature between 0 and 1.",
                param="temperature",
            )
        sampling["temperature"] = temperature
    if params.sampling.top_p != DEFAULTS["top_p"]:
        sampling["top_p"] = params.sampling.top_p
    return sampling


# --- messages -------------------------------------------------------------------------------------------------
def conversation(messages: tuple[ChatMessage, ...]) -> tuple[str, list[dict[str, Any]]]:
    """The system text and Anthropic's alternating turns: consecutive messages of one role merge into one turn
    (tool and function results join the user turn), and a user turn lists its tool results first, as
    Anthropic requires."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    pending_legacy: dict[str, str] = {}  # function name -> id given to its unanswered legacy call
    for i, message in enumerate(messages):
        role = message.role
        if role in ("system", "developer"):
            if message.content:
                system.append(message.content)
            continue
        if role == "assistant":
            blocks = _text(message.content) + _tool_uses(i, message, pending_legacy)
        elif role == "user":
            role, blocks = "user", _text(message.content)
        elif role == "tool":
            role, blocks = "user", [_tool_result(_tool_id(message.tool_call_id or ""), message.content)]
        elif role == "function":
            role, blocks = "user", [_tool_result(_legacy_result_id(i, message, pending_legacy), message.content)]
        else:
            raise InvalidRequestError(
                f"messages[{i}] has role '{role}', which Anthropic models do not take; use system, developer, "
                "user, assistant or tool.",
                param=f"messages[{i}].role",
            )
        if not blocks:  # Anthropic refuses empty content; an empty message says nothing anyway
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    if not turns:
        raise InvalidRequestError(
            "Anthropic models need at least one user or assistant message with content besides the system "
            "messages. Add a user message.",
            param="messages",
        )
    for turn in turns:
        if turn["role"] == "user":
            turn["content"].sort(key=lambda block: block["type"] != "tool_result")  # stable: order kept
    return "\n\n".join(system), turns


def _text(content: str) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content}] if content else []


def _tool_id(call_id: str) -> str:
    """Anthropic's ids take letters, digits, `_` and `-` only; OpenAI's take anything. Calls and their results
    go through the same mapping, so they still match."""
    return _ID_CHARS.sub("_", call_id) or "call"


def _tool_uses(i: int, message: ChatMessage, pending_legacy: dict[str, str]) -> list[dict[str, Any]]:
    blocks = []
    for j, call in enumerate(message.tool_calls):
        param = f"messages[{i}].tool_calls[{j}].function.arguments"
        try:
            arguments = json.loads(call.arguments) if call.arguments.strip() else {}
        except json.JSONDecodeError as exc:
            raise InvalidRequestError(
                f"messages[{i}].tool_calls[{j}] ({call.name}) has arguments that are not valid JSON ({exc}); "
                "send the arguments as the JSON text of an object.",
                param=param,
            ) from None
        if not isinstance(arguments, dict):
            raise InvalidRequestError(
                f"messages[{i}].tool_calls[{j}] ({call.name}) has arguments that are not a JSON object; "
                "Anthropic models take an object of named arguments.",
                param=param,
            )
        if call.id == _LEGACY_CALL_ID:
            # Every legacy function_call gets the same id at the edge; Anthropic wants ids unique.
            call_id = f"{_LEGACY_CALL_ID}_{i}_{j}"
            pending_legacy[call.name] = call_id
        else:
            call_id = _tool_id(call.id)
        blocks.append({"type": "tool_use", "id": call_id, "name": call.name, "input": arguments})
    return blocks


def _legacy_result_id(i: int, message: ChatMessage, pending_legacy: dict[str, str]) -> str:
    if message.name in pending_legacy:
        return pending_legacy.pop(message.name)
    raise InvalidRequestError(
        f"messages[{i}] is the result of function '{message.name}', but no earlier assistant message called it. "
        "Put the assistant's function_call before its result.",
        param=f"messages[{i}]",
    )


def _tool_result(tool_use_id: str, content: str) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": tool_use_id}
    if content:
        block["content"] = content
    return block


# --- tools and response_format -----------------------------------------------------------------------------
def _tool(spec: ToolSpec) -> dict[str, Any]:
    tool: dict[str, Any] = {"name": spec.name, "input_schema": _object_schema(spec.parameters)}
    if spec.description:
        tool["description"] = spec.description
    if spec.strict:
        tool["strict"] = True
    return tool


def _object_schema(schema: dict[str, Any]) -> dict[str, Any]:
    # OpenAI takes a parameters schema without `type`; Anthropic's input_schema must say "object".
    return schema if "type" in schema else {"type": "object", **schema}


def _tools(params: ChatParams) -> tuple[list[dict[str, Any]], dict[str, Any] | None, str | None, bool]:
    """Tools, tool_choice, and the response_format tool (with whether its answer is wrapped)."""
    tools = [_tool(spec) for spec in params.tools]
    names = {spec.name for spec in params.tools}
    choice: dict[str, Any] | None = None
    kind = params.tool_choice if tools else "none"
    if kind == "auto":
        choice = {"type": "auto"}
    elif kind == "required":
        choice = {"type": "any"}
    elif kind == "named":
        choice = {"type": "tool", "name": params.tool_name}
    elif tools:  # none: the tools stay defined, as Anthropic wants for a history that used them
        choice = {"type": "none"}
    json_tool, wrapped = None, False
    fmt = params.response_format
    # A forced tool_choice answers with tool calls only, so a response_format has no content to shape then.
    if fmt is not None and kind in ("auto", "none"):
        schema = fmt.schema if fmt.type == "json_schema" and fmt.schema is not None else {"type": "object"}
        wrapped = schema.get("type") != "object"
        if wrapped:
            schema = {"type": "object", "properties": {"value": schema}, "required": ["value"]}
        json_tool = _tool_id(fmt.name)[:60] if fmt.type == "json_schema" and fmt.name else "json_response"
        while json_tool in names:
            json_tool = f"{json_tool}_"
        tools.append(
            {
                "name": json_tool,
                "description": fmt.description or _JSON_TOOL_DESCRIPTION,
                "input_schema": schema,
                **({"strict": True} if fmt.strict else {}),
            }
        )
        # Alone, the answer tool is forced; beside the client's tools (auto), some tool must be called.
        if kind == "none":
            choice = {"type": "tool", "name": json_tool, "disable_parallel_tool_use": True}
        else:
            choice = {"type": "any"}
    if choice is not None and choice["type"] != "none" and not params.parallel_tool_calls:
        choice["disable_parallel_tool_use"] = True
    return tools, choice, json_tool, wrapped
