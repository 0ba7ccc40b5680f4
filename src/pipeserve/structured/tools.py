"""Tool calls: the JSON schema a constrained call follows, the generic prompt format, and parsing.

Models whose chat template knows tools get them through the template. The others get the one generic
format documented in docs/api.md: the tool list in the system message, and calls written as
`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from typing import Any

from pipeserve.params import ToolCall, ToolSpec
from pipeserve.textutil import partial_suffix

log = logging.getLogger("pipeserve.tools")

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
_CALL_BLOCK = re.compile(re.escape(CALL_OPEN) + r"\s*(.*?)\s*" + re.escape(CALL_CLOSE), re.DOTALL)


def new_call_id() -> str:
    return "call_" + secrets.token_urlsafe(18).replace("-", "a").replace("_", "b")


def call_schema(tool: ToolSpec) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"name": {"const": tool.name}, "arguments": tool.parameters or {"type": "object"}},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def calls_schema(tools: tuple[ToolSpec, ...], *, parallel: bool) -> dict[str, Any]:
    """The constraint of tool_choice `required` or a named function: one call, or a list of calls."""
    one = call_schema(tools[0]) if len(tools) == 1 else {"anyOf": [call_schema(t) for t in tools]}
    return {"type": "array", "items": one, "minItems": 1} if parallel else one


def parse_constrained(text: str) -> list[ToolCall]:
    """Calls from the JSON a constrained decode produced (valid by construction, possibly closed early);
    an empty list if it somehow isn't, so that the text is returned as content rather than lost."""
    try:
        value = json.loads(text)
        return [_call(item) for item in (value if isinstance(value, list) else [value])]
    except (ValueError, KeyError, TypeError, AttributeError):
        log.error("constrained tool-call output did not parse: %r", text[:200])
        return []


def parse_auto(text: str, names: set[str]) -> tuple[str | None, list[ToolCall]]:
    """Content and calls from free text: `<tool_call>` blocks naming a known tool become calls."""
    calls: list[ToolCall] = []
    kept: list[str] = []
    position = 0
    for match in _CALL_BLOCK.finditer(text):
        try:
            value = json.loads(match.group(1))
        except ValueError:
            continue
        if not (
            isinstance(value, dict)
            and isinstance(value.get("name"), str)
            and value["name"] in names
            and isinstance(value.get("arguments"), dict)
        ):
            continue
        kept.append(text[position : match.start()])
        position = match.end()
        calls.append(_call(value))
    kept.append(text[position:])
    content = "".join(kept) if calls else text
    return (content if content.strip() or not calls else None), calls


def _call(value: dict[str, Any]) -> ToolCall:
    arguments = json.dumps(value.get("arguments", {}), ensure_ascii=False)
    return ToolCall(id=new_call_id(), name=str(value["name"]), arguments=arguments)


def render_call(call: ToolCall) -> str:
    try:
        arguments: Any = json.loads(call.arguments)
    except ValueError:
        arguments = call.arguments
    return CALL_OPEN + json.dumps({"name": call.name, "arguments": arguments}, ensure_ascii=False) + CALL_CLOSE


def tools_prompt(tools: tuple[ToolSpec, ...]) -> str:
    listed = "\n".join(
        json.dumps({"name": t.name, "description": t.description or "", "parameters": t.parameters}, ensure_ascii=False)
        for t in tools
    )
    return (
        "You can call the following tools:\n<tools>\n"
        f"{listed}\n</tools>\n"
        f'To call a tool, answer with {CALL_OPEN}{{"name": <tool name>, "arguments": <arguments object>}}{CALL_CLOSE}, '
        "one block per call. Otherwise answer normally."
    )


class AutoCallStream:
    """Streams content while picking out `<tool_call>` blocks (tool_choice auto): text that could open a
    block is held back until it can't; a block is released as a call once closed and parsed."""

    def __init__(self, names: set[str]) -> None:
        self.names = names
        self._buffer = ""

    def feed(self, text: str) -> list[str | ToolCall]:
        self._buffer += text
        events: list[str | ToolCall] = []
        while True:
            start = self._buffer.find(CALL_OPEN)
            if start < 0:
                keep = partial_suffix(self._buffer, (CALL_OPEN,))
                if len(self._buffer) > keep:
                    events.append(self._buffer[: len(self._buffer) - keep])
                    self._buffer = self._buffer[len(self._buffer) - keep :]
                return events
            end = self._buffer.find(CALL_CLOSE, start)
            if start:
                events.append(self._buffer[:start])
                self._buffer = self._buffer[start:]
                continue
            if end < 0:
                return events
            block = self._buffer[: end + len(CALL_CLOSE)]
            self._buffer = self._buffer[len(block) :]
            _, calls = parse_auto(block, self.names)
            events.extend(calls if calls else [block])

    def finish(self) -> list[str | ToolCall]:
        rest, self._buffer = self._buffer, ""
        return [rest] if rest else []
