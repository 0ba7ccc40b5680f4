"""Dataset entries as data: validating an entry, turning a log into one, writing one out for fine-tuning.

The conversions `DatasetService` (in `pipeserve.service.datasets`) applies on the way into and out of the
store, and the time helpers its requests and responses use. Nothing here touches the database.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import orjson
from pydantic import BaseModel
from sqlalchemy.engine import Row

from pipeserve.errors import InvalidRequestError
from pipeserve.protocol.datasets import DatasetEntryInput, ExportFormat, Split
from pipeserve.service.values import has_nul
from pipeserve.validation import validate


def auto_split(messages: Sequence[Any]) -> Split:
    """TEST for about one entry in ten, TRAIN for the rest, as OpenPipe splits entries sent without one.

    The hash is of the conversation rather than of the random entry id, so the rule is stable and an
    example added twice lands on the same side: a duplicate can never leak a test example into training.
    """
    digest = hashlib.sha256(orjson.dumps(messages, option=orjson.OPT_SORT_KEYS)).digest()
    return "TEST" if int.from_bytes(digest[:8], "big") % 10 == 0 else "TRAIN"


def _dump(value: Any) -> Any:
    """A validated value as JSON data; unset and null fields are dropped, as fine-tuning files expect."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True, exclude_none=True)
    if isinstance(value, list):
        return [_dump(item) for item in value]
    return value


def entry_values(raw: Any, default_split: Split | None = None) -> dict[str, Any]:
    """One entry of a request as the columns of its row, or an `InvalidRequestError` saying what to fix."""
    if not isinstance(raw, dict):
        raise InvalidRequestError(
            f'Each entry must be a JSON object such as {{"messages": [...]}}, not {type(raw).__name__}.'
        )
    entry = validate(DatasetEntryInput, raw)
    last = entry.messages[-1]
    if last.role != "assistant":
        raise InvalidRequestError(
            f"The last message is a '{last.role}' message, but a training entry ends with the assistant "
            "message the model should learn to give. Append it to 'messages' as "
            '{"role": "assistant", "content": "..."}.',
            param=f"messages[{len(entry.messages) - 1}]",
        )
    if last.content is None and last.tool_calls is None and last.function_call is None and last.refusal is None:
        raise InvalidRequestError(
            "The last message, the assistant's answer, has no content, tool_calls or function_call. "
            "Give the answer the model should learn to give.",
            param=f"messages[{len(entry.messages) - 1}]",
        )
    messages = _dump(entry.messages)
    if has_nul(raw):
        raise InvalidRequestError(
            "The entry contains a NUL character (\\u0000), which the store cannot keep in JSON. Remove it."
        )
    return {
        "split": entry.split or default_split or auto_split(messages),
        "messages": messages,
        "rejected_message": _dump(entry.rejected_message),
        "tools": _dump(entry.tools),
        "tool_choice": _dump(entry.tool_choice),
        "response_format": _dump(entry.response_format),
        "meta": entry.metadata,
    }


def export_line(row: Row[Any], fmt: ExportFormat) -> bytes | None:
    """One entry in OpenAI's fine-tuning format (SFT or DPO), or None where the format has no use for it."""
    tools = {"tools": row.tools} if row.tools else {}
    if fmt == "sft":
        return orjson.dumps({"messages": row.messages, **tools}) + b"\n"
    if row.rejected_message is None:
        return None
    return (
        orjson.dumps(
            {
                "input": {"messages": row.messages[:-1], **tools},
                "preferred_output": [row.messages[-1]],
                "non_preferred_output": [row.rejected_message],
            }
        )
        + b"\n"
    )


def entry_from_log(log: Row[Any], split: Split | None) -> dict[str, Any] | None:
    """A log as entry columns: its request's conversation plus the first choice's answer.

    None for a log that has no answer to learn from; an `InvalidRequestError` for one whose request
    cannot be an entry.
    """
    if log.source == "report-anthropic":  # Anthropic's message format, not a chat completion
        return None
    if log.cache_hit:  # a replay of an earlier completion: a duplicate example, not a new one
        return None
    # A report's payloads are any JSON its sender chose: every step is checked for its type.
    response = log.resp_payload
    choices = response.get("choices") if isinstance(response, dict) else None
    first = choices[0] if isinstance(choices, list) and choices else None
    message = first.get("message") if isinstance(first, dict) else None
    if not isinstance(message, dict):
        return None
    request = log.req_payload if isinstance(log.req_payload, dict) else {}
    messages = request.get("messages")
    if not isinstance(messages, list):
        raise InvalidRequestError("its request has no 'messages' array, so there is no conversation to learn.")
    answer: dict[str, Any] = {"role": "assistant", "content": message.get("content")}
    calls = message.get("tool_calls")
    if calls:
        # Not a list: kept as it is, for the entry's validation to name it.
        answer["tool_calls"] = [_tool_call(call) for call in calls] if isinstance(calls, list) else calls
    if isinstance(message.get("function_call"), dict):
        answer["function_call"] = _function(message["function_call"])
    entry: dict[str, Any] = {"messages": [*messages, answer]}
    for key in ("tools", "tool_choice", "response_format"):
        if request.get(key) is not None:
            entry[key] = request[key]
    # Requests that use the deprecated `functions` become their `tools` equivalent; entries have only tools.
    if "tools" not in entry and isinstance(request.get("functions"), list):
        entry["tools"] = [{"type": "function", "function": f} for f in request["functions"]]
        choice = request.get("function_call")
        if isinstance(choice, dict):
            entry["tool_choice"] = {"type": "function", "function": choice}
        elif choice is not None:
            entry["tool_choice"] = choice
    if isinstance(log.meta, dict) and log.meta:
        entry["metadata"] = log.meta
    return entry_values(entry, split) | {"log_id": log.id}


def _function(function: Any) -> Any:
    if not isinstance(function, dict):
        return function
    return {"name": function.get("name"), "arguments": function.get("arguments")}


def _tool_call(call: Any) -> Any:
    # Keep only the fields of a request's tool call: assembled stream chunks also carry an `index`.
    if not isinstance(call, dict):
        return call
    return {"id": call.get("id"), "type": call.get("type", "function"), "function": _function(call.get("function"))}
