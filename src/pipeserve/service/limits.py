"""How much one request may ask for: the `max_*` settings, checked where a request is understood.

Errors keep OpenAI's wording and codes (`array_above_max_length`), so clients that handle OpenAI's errors
handle ours, and add the setting an operator can raise.
"""

from __future__ import annotations

from collections.abc import Sized
from dataclasses import dataclass, field
from typing import Any

from pipeserve.errors import InvalidRequestError
from pipeserve.protocol.chat_completions import AssistantMessage, ChatCompletionRequest
from pipeserve.settings import Settings


def _default(name: str) -> Any:
    return Settings.model_fields[name].default


@dataclass(frozen=True)
class Limits:
    messages: int = field(default_factory=lambda: _default("max_messages"))
    tools: int = field(default_factory=lambda: _default("max_tools"))
    stop: int = field(default_factory=lambda: _default("max_stop_sequences"))
    filters: int = field(default_factory=lambda: _default("max_filters"))
    metadata_keys: int = field(default_factory=lambda: _default("max_metadata_keys"))

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            messages=settings.max_messages,
            tools=settings.max_tools,
            stop=settings.max_stop_sequences,
            filters=settings.max_filters,
            metadata_keys=settings.max_metadata_keys,
        )

    def check_chat(self, request: ChatCompletionRequest) -> None:
        at_most(request.messages, self.messages, param="messages", setting="max_messages")
        if request.tools is not None:
            at_most(request.tools, self.tools, param="tools", setting="max_tools")
        if request.functions is not None:
            at_most(request.functions, self.tools, param="functions", setting="max_tools")
        for index, message in enumerate(request.messages):
            if isinstance(message, AssistantMessage) and message.tool_calls is not None:
                at_most(message.tool_calls, self.tools, param=f"messages[{index}].tool_calls", setting="max_tools")
        if isinstance(request.stop, list):
            at_most(request.stop, self.stop, param="stop", setting="max_stop_sequences")

    def check_filters(self, filters: Sized, param: str = "filters") -> None:
        at_most(filters, self.filters, param=param, setting="max_filters")

    def check_keys(self, pairs: Sized, param: str) -> None:
        if len(pairs) > self.metadata_keys:
            raise InvalidRequestError(
                f"Invalid '{param}': too many keys. Expected at most {self.metadata_keys}, but got {len(pairs)} "
                "(this server's max_metadata_keys setting). Send fewer keys, or spread them over several updates.",
                param=param,
                code="object_above_max_properties",
            )


def at_most(items: Sized, limit: int, *, param: str, setting: str) -> None:
    if len(items) > limit:
        raise InvalidRequestError(
            f"Invalid '{param}': array too long. Expected an array with maximum length {limit}, but got an array "
            f"with length {len(items)} instead (this server's {setting} setting).",
            param=param,
            code="array_above_max_length",
        )
