"""What gets logged, and the log rows themselves.

The rule (docs/api.md): the header `op-log-request: true|false` decides; without it the body's `store`
decides; without either, the server's `log_requests` setting does.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from pipeserve.errors import InvalidRequestError
from pipeserve.settings import Price
from pipeserve.store.db import new_id, now_ms
from pipeserve.store.logwriter import LogWriter


def header_flag(headers: Mapping[str, str], name: str) -> bool | None:
    raw = headers.get(name)
    if raw is None:
        return None
    value = raw.strip().lower()
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    raise InvalidRequestError(f"The header '{name}' must be 'true' or 'false', not {raw!r}.", param=name)


def log_decision(flag: bool | None, store: bool | None, default: bool) -> bool:
    """The rule: the `op-log-request` header's flag, else the body's `store`, else the server's default."""
    if flag is not None:
        return flag
    return store if store is not None else default


def tag_value(value: Any) -> str | None:
    """A tag or filter value as the string it is stored as: JSON's spelling, `null` meaning none."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str | int | float):
        return str(value)
    raise InvalidRequestError(f"Tag and metadata values must be strings, numbers or booleans, not {value!r}.")


def parse_tags(headers: Mapping[str, str]) -> dict[str, str]:
    """The `op-tags` header the OpenPipe SDK sends: a JSON object of string/number/boolean values."""
    raw = headers.get("op-tags")
    if not raw:
        return {}
    try:
        tags = orjson.loads(raw)
    except orjson.JSONDecodeError:
        tags = None
    if not isinstance(tags, dict):
        raise InvalidRequestError(
            'The header \'op-tags\' must be a JSON object such as {"prompt_id": "greeting"}.', param="op-tags"
        )
    return stringify_tags(tags)


def stringify_tags(tags: Mapping[str, Any]) -> dict[str, str]:
    """Tags as the metadata they become: values as strings, `null` ones dropped."""
    out: dict[str, str] = {}
    for key, value in tags.items():
        text = tag_value(value)
        if text is not None:
            out[str(key)] = text
    return out


@dataclass
class Call:
    """One request being recorded: who made it, when, and what it asked."""

    project: str
    key_id: str | None
    source: str  # chat | report | report-anthropic
    req_payload: Any
    log: bool = True
    metadata: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    requested_at: int = field(default_factory=now_ms)
    started: float = field(default_factory=time.perf_counter)
    first_token: float | None = None

    def mark_first_token(self) -> None:
        if self.first_token is None:
            self.first_token = time.perf_counter()


class Recorder:
    def __init__(
        self, writer: LogWriter, prices: Mapping[str, Price], aliases: Mapping[str, str] | None = None
    ) -> None:
        self.writer = writer
        self.prices = prices
        self.aliases = aliases or {}  # a served model's other names -> its id, so one price covers them all

    def cost(self, model: str | None, prompt: int | None, completion: int | None) -> float | None:
        """Dollars, from the configured prices; None (unknown) for a model without a price."""
        price = self.prices.get(model or "") or self.prices.get(self.aliases.get(model or "", ""))
        if price is None:
            return None
        return ((prompt or 0) * price.prompt + (completion or 0) * price.completion) / 1_000_000

    async def record(
        self,
        call: Call,
        *,
        status_code: int | None,
        resp_payload: Any = None,
        error_message: str | None = None,
        cache_hit: bool = False,
        model: str | None = None,
        usage: tuple[int, int] | None = None,
        received_at: int | None = None,
        completion_id: str | None = None,
        judgements: list[dict[str, Any]] | None = None,
    ) -> str | None:
        """Store the call's log (if it asked to be logged) and return its id once committed, or once held for a
        later commit while the store can't be reached (`LogWriter`)."""
        if not call.log:
            return None
        ended = time.perf_counter()
        prompt, completion = usage if usage is not None else (None, None)
        if model is None and isinstance(call.req_payload, dict):
            model = _str_or_none(call.req_payload.get("model"))
        row = {
            "id": new_id("log"),
            "project": call.project,
            "source": call.source,
            "completion_id": completion_id,
            "model": model,
            "requested_at": call.requested_at,
            "received_at": received_at if received_at is not None else now_ms(),
            "ttft_ms": None if call.first_token is None else (call.first_token - call.started) * 1000,
            "duration_ms": (ended - call.started) * 1000 if call.source == "chat" else _span(call, received_at),
            "status_code": status_code,
            "error_message": error_message,
            "req_payload": call.req_payload,
            "resp_payload": resp_payload,
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "cost": self.cost(model, prompt, completion),
            "cache_hit": cache_hit,
            "key_id": call.key_id,
            "meta": call.metadata,
            "tags": call.tags,
            "judgements": judgements or [],
        }
        await self.writer.write(row)
        return str(row["id"])


def _span(call: Call, received_at: int | None) -> float | None:
    return None if received_at is None else float(received_at - call.requested_at)


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None
