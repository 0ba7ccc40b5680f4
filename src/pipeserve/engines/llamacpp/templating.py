"""Chat templates: the Jinja templates that models ship (GGUF `tokenizer.chat_template`), rendered safely."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from pipeserve.engines.llamacpp.toolcalls import render_call, tools_prompt
from pipeserve.errors import InvalidRequestError
from pipeserve.params import ChatMessage, ToolSpec

# Used when a model ships no template of its own; documented in docs/api.md.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] "
    "+ '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% endif %}"
)

# OpenAI's `developer` role is the `system` role of models that predate it; legacy `function` results are
# tool results.
_TEMPLATE_ROLES = {"developer": "system", "function": "tool"}


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class ChatTemplate:
    """A compiled chat template with the special-token strings it may refer to."""

    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = "") -> None:
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
        )
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        try:
            self._template = env.from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise ValueError(f"the chat template does not compile: {exc}") from exc
        self.bos_token = bos_token
        self.eos_token = eos_token
        # A template that refers to `tools` renders them (and tool calls) itself.
        self.native_tools = "tools" in source

    def render(self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec] = ()) -> str:
        """The prompt; tools go through the template when it knows them, else in the generic format."""
        extra: dict[str, Any] = {}
        if self.native_tools:
            rendered = [self._message(message, native=True) for message in messages]
            if tools:
                extra["tools"] = [
                    {
                        "type": "function",
                        "function": {"name": t.name, "description": t.description or "", "parameters": t.parameters},
                    }
                    for t in tools
                ]
        else:
            rendered = [self._message(message, native=False) for message in messages]
            if tools:
                rendered = _with_system_text(rendered, tools_prompt(tuple(tools)))
        try:
            return self._template.render(
                messages=rendered,
                add_generation_prompt=True,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                **extra,
            )
        except jinja2.TemplateError as exc:
            raise InvalidRequestError(
                f"This model's chat template rejected the messages: {exc}", param="messages"
            ) from exc

    @staticmethod
    def _message(message: ChatMessage, *, native: bool) -> dict[str, Any]:
        content = message.content
        if message.tool_calls and not native:
            content = (
                "\n".join([content, *map(render_call, message.tool_calls)])
                if content
                else "\n".join(map(render_call, message.tool_calls))
            )
        item: dict[str, Any] = {"role": _TEMPLATE_ROLES.get(message.role, message.role), "content": content}
        if message.name is not None:
            item["name"] = message.name
        if message.tool_call_id is not None:
            item["tool_call_id"] = message.tool_call_id
        if message.tool_calls and native:
            item["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": _arguments(c.arguments)}}
                for c in message.tool_calls
            ]
        return item


def _arguments(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _with_system_text(messages: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    if messages and messages[0]["role"] == "system":
        first = {**messages[0], "content": f"{messages[0]['content']}\n\n{text}"}
        return [first, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]
