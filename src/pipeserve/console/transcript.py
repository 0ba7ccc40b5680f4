"""A logged request and response as a chat transcript: turns of typed parts, for the request page.

Payloads are whatever was logged (our own chat completions, OpenAI-shaped reports, Anthropic reports), so
every step checks the type it reads and anything unexpected is shown as JSON rather than dropped. JSON found
in tool arguments and structured outputs is pretty-printed. Nothing here produces markup: the template
escapes every string.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

_TEXT_LIMIT = 200_000  # characters of one part shown; the raw payload below the transcript has it all


@dataclass(frozen=True)
class Part:
    kind: str  # text | json | reasoning | refusal | tool_call | tool_result | media | other
    body: str
    title: str = ""


@dataclass
class Turn:
    role: str
    parts: list[Part] = field(default_factory=list)
    note: str = ""  # the sender's name, the call a tool result answers


@dataclass
class Choice:
    index: int
    turn: Turn
    finish_reason: str = ""
    criteria: dict[str, Any] = field(default_factory=dict)


@dataclass
class Transcript:
    turns: list[Turn]
    choices: list[Choice]
    tools: list[Part]
    tool_choice: str = ""
    response_format: str = ""


def pretty(value: Any) -> str:
    """JSON, indented; a value JSON cannot hold is shown as Python writes it."""
    try:
        return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        return repr(value)


def _clip(text: str) -> str:
    return text if len(text) <= _TEXT_LIMIT else text[:_TEXT_LIMIT] + f"\n… ({len(text) - _TEXT_LIMIT} more)"


def _as_json(text: str) -> Any:
    stripped = text.strip()
    if not stripped or stripped[0] not in "{[":
        return None
    try:
        return orjson.loads(stripped)
    except orjson.JSONDecodeError:
        return None


def _arguments(raw: Any) -> str:
    """Tool call arguments: a JSON string as sent, pretty-printed when it parses."""
    if isinstance(raw, str):
        parsed = _as_json(raw)
        return pretty(parsed) if parsed is not None else _clip(raw)
    return pretty(raw)


def _text_part(text: str, *, json_output: bool = False) -> Part:
    parsed = _as_json(text) if json_output else None
    if parsed is not None:
        return Part("json", pretty(parsed), "structured output")
    return Part("text", _clip(text))


def _content_parts(content: Any, *, json_output: bool = False) -> list[Part]:
    """OpenAI message content (a string or parts) or Anthropic content (a string or blocks)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [_text_part(content, json_output=json_output)] if content else []
    if not isinstance(content, list):
        return [Part("other", pretty(content))]
    parts: list[Part] = []
    for block in content:
        if not isinstance(block, dict):
            parts.append(Part("other", pretty(block)))
            continue
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            parts.append(_text_part(block["text"], json_output=json_output))
        elif kind == "refusal":
            parts.append(Part("refusal", str(block.get("refusal", ""))))
        elif kind in ("thinking", "redacted_thinking"):
            parts.append(Part("reasoning", _clip(str(block.get("thinking", "(redacted)")))))
        elif kind == "tool_use":  # Anthropic's tool call
            parts.append(
                Part("tool_call", pretty(block.get("input")), f"{block.get('name', '')} · {block.get('id', '')}")
            )
        elif kind == "tool_result":
            title = f"result of {block.get('tool_use_id', '')}" + (" (error)" if block.get("is_error") else "")
            inner = block.get("content")
            body = inner if isinstance(inner, str) else "\n".join(p.body for p in _content_parts(inner))
            parts.append(Part("tool_result", _clip(body), title))
        elif kind in ("image_url", "image", "input_audio", "file", "document"):
            parts.append(Part("media", _media(block), str(kind)))
        else:
            parts.append(Part("other", pretty(block), str(kind or "")))
    return parts


def _media(block: dict[str, Any]) -> str:
    """Where an image or file came from, never the image itself (remote images stay unfetched)."""
    inner = block.get("image_url") or block.get("source") or block.get("file") or block.get("input_audio") or {}
    url = inner.get("url") if isinstance(inner, dict) else inner
    if isinstance(url, str):
        return url if len(url) <= 120 else url[:120] + "…"
    if isinstance(inner, dict):
        return ", ".join(f"{k}: {v}" for k, v in inner.items() if k != "data" and isinstance(v, str | int))
    return ""


def _tool_calls(message: dict[str, Any]) -> list[Part]:
    parts = []
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else []:
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            title = f"{function.get('name', '')} · {call.get('id', '')}"
            parts.append(Part("tool_call", _arguments(function.get("arguments")), title))
        else:
            parts.append(Part("tool_call", pretty(call)))
    legacy = message.get("function_call")
    if isinstance(legacy, dict):
        parts.append(Part("tool_call", _arguments(legacy.get("arguments")), str(legacy.get("name", ""))))
    return parts


def _turn(message: Any, *, json_output: bool = False) -> Turn:
    if not isinstance(message, dict):
        return Turn(role="?", parts=[Part("other", pretty(message))])
    role = str(message.get("role", "?"))
    parts: list[Part] = []
    for key in ("reasoning_content", "reasoning"):
        if isinstance(message.get(key), str) and message[key]:
            parts.append(Part("reasoning", _clip(message[key])))
    parts += _content_parts(message.get("content"), json_output=json_output and role == "assistant")
    if isinstance(message.get("refusal"), str) and message["refusal"]:
        parts.append(Part("refusal", message["refusal"]))
    parts += _tool_calls(message)
    notes = []
    if message.get("name"):
        notes.append(str(message["name"]))
    if message.get("tool_call_id"):
        notes.append(f"answers {message['tool_call_id']}")
    return Turn(role=role, parts=parts, note=" · ".join(notes))


def _tools(request: dict[str, Any]) -> list[Part]:
    declared = request.get("tools")
    if not isinstance(declared, list):
        declared = [{"function": f} for f in request.get("functions") or [] if isinstance(f, dict)]
    parts = []
    for tool in declared:
        if not isinstance(tool, dict):
            continue
        inner = tool.get("function")
        spec: dict[str, Any] = inner if isinstance(inner, dict) else tool  # OpenAI's shape or Anthropic's
        schema = spec.get("parameters", spec.get("input_schema"))
        title = str(spec.get("name", ""))
        description = str(spec.get("description") or "")
        parts.append(Part("tool", (description + "\n\n" if description else "") + pretty(schema), title))
    return parts


def transcript(request: Any, response: Any) -> Transcript:
    req = request if isinstance(request, dict) else {}
    fmt = req.get("response_format")
    json_output = isinstance(fmt, dict) and fmt.get("type") in ("json_schema", "json_object")
    turns: list[Turn] = []
    system = req.get("system")  # Anthropic's system prompt sits beside the messages
    if system:
        turns.append(Turn(role="system", parts=_content_parts(system)))
    messages = req.get("messages")
    turns += [_turn(m) for m in messages] if isinstance(messages, list) else []
    choices: list[Choice] = []
    resp = response if isinstance(response, dict) else {}
    if isinstance(resp.get("choices"), list):
        for position, choice in enumerate(resp["choices"]):
            if not isinstance(choice, dict):
                continue
            results = choice.get("criteria_results")
            choices.append(
                Choice(
                    index=choice.get("index", position) if isinstance(choice.get("index"), int) else position,
                    turn=_turn(choice.get("message"), json_output=json_output),
                    finish_reason=str(choice.get("finish_reason") or ""),
                    criteria=results if isinstance(results, dict) else {},
                )
            )
    elif isinstance(resp.get("content"), list):  # an Anthropic message
        turn = Turn(role=str(resp.get("role", "assistant")), parts=_content_parts(resp["content"]))
        choices.append(Choice(index=0, turn=turn, finish_reason=str(resp.get("stop_reason") or "")))
    tool_choice = req.get("tool_choice", req.get("function_call"))
    return Transcript(
        turns=turns,
        choices=choices,
        tools=_tools(req),
        tool_choice="" if tool_choice is None else tool_choice if isinstance(tool_choice, str) else pretty(tool_choice),
        response_format=pretty(fmt) if fmt is not None else "",
    )


def preview(request: Any, limit: int = 120) -> str:
    """The last user message's text, shortened: what a row of the log is about."""
    messages = request.get("messages") if isinstance(request, dict) else None
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            text = " ".join(p.body for p in _content_parts(message.get("content")) if p.kind == "text")
            text = " ".join(text.split())
            return text if len(text) <= limit else text[: limit - 1] + "…"
    return ""
