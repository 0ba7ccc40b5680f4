"""Tool calls: the JSON schema a constrained call follows, the generic prompt format, and parsing.

Models whose chat template knows tools get them through the template. The others get the one generic
format documented in docs/api.md: the tool list in the system message, and calls written as
`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from typing import Any

from pipeserve.params import ToolCall, ToolSpec
from pipeserve.structured.instances import subschemas
from pipeserve.textutil import partial_suffix

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
    """The constraint of tool_choice `required` or a named function: one call, or a list of calls.

    Parameters that use local `$ref`s ("#/$defs/...") move to the constraint's own `$defs`, their references
    rewritten, since inside the call object "#" would name the constraint rather than the parameters."""
    hoisted: dict[str, Any] = {}
    calls: list[dict[str, Any]] = []
    for tool in tools:
        call = call_schema(tool)
        if _has_local_ref(tool.parameters):
            hoisted[tool.name] = _relocate(tool.parameters, f"#/$defs/{tool.name}")
            call["properties"]["arguments"] = {"$ref": f"#/$defs/{tool.name}"}
        calls.append(call)
    one = calls[0] if len(calls) == 1 else {"anyOf": calls}
    schema = {"type": "array", "items": one, "minItems": 1} if parallel else dict(one)
    if hoisted:
        schema["$defs"] = hoisted
    return schema


def called_names(schema: dict[str, Any]) -> list[str]:
    """The functions a `calls_schema` constraint lets the output call, in order."""
    one = schema.get("items", schema)
    return [str(option["properties"]["name"]["const"]) for option in one.get("anyOf", [one])]


def _has_local_ref(schema: Any) -> bool:
    todo = [schema]
    while todo:
        node = todo.pop()
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str) and node["$ref"].startswith("#"):
                return True
            todo.extend(sub for _, sub in subschemas(node))
    return False


def _relocate(schema: Any, base: str) -> Any:
    """A copy of `schema` whose local JSON-pointer `$ref`s ("#", "#/...") point under `base`."""
    if not isinstance(schema, dict):
        return schema
    moved = dict(schema)
    ref = schema.get("$ref")
    if isinstance(ref, str) and (ref == "#" or ref.startswith("#/")):
        moved["$ref"] = base + ref[1:]
    for steps, sub in subschemas(schema):
        if len(steps) == 1:
            moved[steps[0]] = _relocate(sub, base)
        else:
            word, step = steps
            container = moved[word]
            if container is schema[word]:  # copied once, then filled in
                container = moved[word] = list(container) if isinstance(container, list) else dict(container)
            container[int(step) if isinstance(container, list) else step] = _relocate(sub, base)
    return moved


def parse_constrained(text: str) -> list[ToolCall]:
    """Calls from the JSON a constrained decode produced: valid by construction, or cut short by the token
    budget, in which case the last call's arguments are the truncated text (as OpenAI's are). A call is
    only known once its name is complete."""
    reader = CallReader()
    reader.feed(text)
    return reader.calls()


def _block_call(body: str, names: set[str]) -> dict[str, Any] | None:
    """The call in one `<tool_call>` block's text, when it is one: JSON naming a known tool, with an object
    of arguments."""
    try:
        value = json.loads(body)
    except ValueError:
        return None
    if (
        isinstance(value, dict)
        and isinstance(value.get("name"), str)
        and value["name"] in names
        and isinstance(value.get("arguments"), dict)
    ):
        return value
    return None


def parse_auto(
    text: str, names: set[str], *, limit: int | None = None, leading: bool = False
) -> tuple[str | None, list[ToolCall]]:
    """Content and calls from free text: `<tool_call>` blocks naming a known tool become calls. With a
    `limit` (parallel_tool_calls false: 1), the answer ends with the last call allowed: what follows is
    dropped, as if generation had stopped there. With `leading` (legacy functions, whose answers are a
    function call or content, never both), only calls that open the answer count: once it has said
    something else, the rest is content."""
    calls: list[ToolCall] = []
    kept: list[str] = []
    position = 0
    for match in _CALL_BLOCK.finditer(text):
        if leading and text[position : match.start()].strip():
            break
        value = _block_call(match.group(1), names)
        if value is None:
            if leading:
                break
            continue
        kept.append(text[position : match.start()])
        position = match.end()
        calls.append(_call(value))
        if limit is not None and len(calls) >= limit:
            position = len(text)
            break
    kept.append(text[position:])
    content = "".join(kept) if calls else text
    return (content if content.strip() or not calls else None), calls


@dataclass(frozen=True, slots=True)
class OneCall:
    """An answer under tool_choice auto that ends with its first call (parallel_tool_calls false)."""

    names: frozenset[str]
    leading: bool = False  # legacy functions: only a call that opens the answer counts


def first_call_end(text: str, rule: OneCall, start: int = 0) -> tuple[int | None, int | None]:
    """Where the first complete call block at or after `start` ends (None if there is none yet), and where
    to look next time: the first block still open, the end, or None when no call can come any more."""
    names = set(rule.names)
    if rule.leading:
        body = text.lstrip()
        if len(body) < len(CALL_OPEN) and CALL_OPEN.startswith(body):
            return None, 0
        match = _CALL_BLOCK.match(text, len(text) - len(body)) if body.startswith(CALL_OPEN) else None
        if match is None:
            return None, (0 if body.startswith(CALL_OPEN) else None)
        return (match.end(), match.end()) if _block_call(match.group(1), names) is not None else (None, None)
    for match in _CALL_BLOCK.finditer(text, start):
        if _block_call(match.group(1), names) is not None:
            return match.end(), match.end()
        start = match.end()
    opened = text.find(CALL_OPEN, start)
    return None, opened if opened >= 0 else max(start, len(text) - len(CALL_OPEN))


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
    block is held back until it can't; a block is released as a call once closed and parsed. `limit` and
    `leading` work as in `parse_auto`: after the last call allowed the rest is dropped, and with `leading`
    content once said passes through as it comes, since no call can follow it."""

    def __init__(self, names: set[str], *, limit: int | None = None, leading: bool = False) -> None:
        self.names = names
        self.limit = limit
        self.leading = leading
        self.count = 0
        self._buffer = ""
        self._ended = False  # the last call allowed is out
        self._plain = False  # with `leading`: content came first

    def feed(self, text: str) -> list[str | ToolCall]:
        if self._ended:
            return []
        self._buffer += text
        events: list[str | ToolCall] = []
        while True:
            if self._plain:
                if self._buffer:
                    events.append(self._buffer)
                    self._buffer = ""
                return events
            start = self._buffer.find(CALL_OPEN)
            if start < 0:
                keep = partial_suffix(self._buffer, (CALL_OPEN,))
                if len(self._buffer) > keep:
                    self._text(events, self._buffer[: len(self._buffer) - keep])
                    self._buffer = self._buffer[len(self._buffer) - keep :]
                if not self._plain:
                    return events
                continue
            if start:
                self._text(events, self._buffer[:start])
                self._buffer = self._buffer[start:]
                continue
            end = self._buffer.find(CALL_CLOSE, start)
            if end < 0:
                return events
            block = self._buffer[: end + len(CALL_CLOSE)]
            self._buffer = self._buffer[len(block) :]
            _, calls = parse_auto(block, self.names)
            if not calls:
                self._text(events, block)
                continue
            events.extend(calls)
            self.count += 1
            if self.limit is not None and self.count >= self.limit:
                self._ended, self._buffer = True, ""
                return events

    def _text(self, events: list[str | ToolCall], text: str) -> None:
        events.append(text)
        if self.leading and text.strip():
            self._plain = True

    def finish(self) -> list[str | ToolCall]:
        rest, self._buffer = self._buffer, ""
        return [rest] if rest else []


class CallReader:
    """Follows constrained tool-call JSON — `{"name": ..., "arguments": ...}` or a list of those — as it
    arrives: each call is reported once its name is complete, then its argument text as it comes, so that a
    stream can send a call's head at once and its arguments as they are generated. The arguments are the
    text as generated (the constraint writes canonical separators and no other whitespace)."""

    def __init__(self) -> None:
        self._level: int | None = None  # nesting depth at which calls' members are: 1, or 2 in a list
        self._depth = 0
        self._in_string = False
        self._escape = False
        self._token: list[str] | None = None  # a key or the name being read, with its quotes
        self._key: str | None = None
        self._expect = "key"  # at a call's level: key | colon | value | comma
        self._capturing = False  # inside the arguments value
        self._found: list[list[Any]] = []  # [name or None, arguments so far, complete]
        self._shown = 0  # characters of the current call's arguments already reported

    def feed(self, text: str) -> list[tuple[str, str]]:
        """("call", name) when a call's name is known, ("arguments", text) for more of its arguments."""
        events: list[tuple[str, str]] = []
        for char in text:
            self._char(char, events)
        self._flush(events)
        return events

    def _flush(self, events: list[tuple[str, str]]) -> None:
        if not self._found or self._found[-1][0] is None:
            return
        # Whitespace at the end may turn out to lie between the arguments and what follows them.
        visible = len(self._found[-1][1].rstrip(_WS))
        if visible > self._shown:
            events.append(("arguments", self._found[-1][1][self._shown : visible]))
            self._shown = visible

    def calls(self) -> list[ToolCall]:
        return [
            ToolCall(id=new_call_id(), name=name, arguments=arguments.strip(_WS))
            for name, arguments, _ in self._found
            if name is not None
        ]

    def _char(self, char: str, events: list[tuple[str, str]]) -> None:
        if self._capturing:
            self._argument_char(char, events)
            return
        if self._in_string:
            self._string_char(char, events)
            return
        if char in _WS:
            return
        at_call = self._depth == self._level
        if char == '"':
            self._in_string = True
            if at_call:
                self._token = [char]
        elif at_call and self._expect == "value" and self._key == "arguments":
            self._capturing = True
            self._argument_char(char, events)
        elif char in "{[":
            if self._depth == 0:
                self._level = 1 if char == "{" else 2
            self._depth += 1
            if self._depth == self._level and char == "{":
                self._new_call(events)
        elif char in "}]":
            if at_call and char == "}" and self._found:
                self._found[-1][2] = True
            self._depth -= 1
        elif at_call and char == ":":
            self._expect = "value"
        elif at_call and char == ",":
            self._expect = "key"

    def _new_call(self, events: list[tuple[str, str]]) -> None:
        self._flush(events)
        self._found.append([None, "", False])
        self._expect, self._key, self._shown = "key", None, 0

    def _string_char(self, char: str, events: list[tuple[str, str]]) -> None:
        if self._token is not None:
            self._token.append(char)
        if self._string_step(char) and self._token is not None:
            raw = "".join(self._token)
            try:
                value = json.loads(raw)
            except ValueError:  # not from the constraint: taken as written
                value = raw[1:-1]
            self._string_done(value, events)
            self._token = None

    def _string_step(self, char: str) -> bool:
        """One character inside a JSON string; True when it is the closing quote."""
        if self._escape:
            self._escape = False
        elif char == "\\":
            self._escape = True
        elif char == '"':
            self._in_string = False
            return True
        return False

    def _string_done(self, value: str, events: list[tuple[str, str]]) -> None:
        if self._expect == "key":
            self._key, self._expect = value, "colon"
        elif self._key == "name" and self._found and self._found[-1][0] is None:
            self._found[-1][0] = value
            events.append(("call", value))
            self._expect = "comma"
        else:
            self._expect = "comma"

    def _argument_char(self, char: str, events: list[tuple[str, str]]) -> None:
        if self._in_string:
            self._string_step(char)
        elif char == '"':
            self._in_string = True
        elif char in "{[":
            self._depth += 1
        elif char in "}]" or char == ",":
            if self._depth == self._level:  # the end of the arguments value
                self._capturing = False
                self._expect = "comma"
                self._char(char, events)
                return
            if char != ",":
                self._depth -= 1
        self._found[-1][1] += char


_WS = " \t\n\r"
