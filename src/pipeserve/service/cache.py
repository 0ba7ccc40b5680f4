"""The response cache (`op-cache`): a stored completion served again for the same request.

The key covers everything that can change the output: the resolved model and every body field but those
that only shape delivery or bookkeeping (`stream`, `stream_options`, `store`, `metadata`, `user`,
`service_tier`). Entries are per project and expire after `cache_ttl_seconds`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import and_, delete, select
from sqlalchemy.dialects import postgresql, sqlite

from pipeserve.errors import InvalidRequestError
from pipeserve.protocol import chat_completions as wire
from pipeserve.service.chat import criteria_choices
from pipeserve.store.db import Database, now_ms
from pipeserve.store.tables import cache_entries

_DELIVERY_ONLY = frozenset({"stream", "stream_options", "store", "metadata", "user", "service_tier"})
_PURGE_EVERY_MS = 60_000


@dataclass(frozen=True)
class CacheMode:
    read: bool
    write: bool

    @property
    def active(self) -> bool:
        return self.read or self.write


OFF = CacheMode(read=False, write=False)
_MODES = {
    "readwrite": CacheMode(read=True, write=True),
    "true": CacheMode(read=True, write=True),  # older OpenPipe SDKs send a boolean
    "readonly": CacheMode(read=True, write=False),
    "writeonly": CacheMode(read=False, write=True),
    "false": OFF,
}


def cache_mode(headers: Mapping[str, str]) -> CacheMode:
    raw = headers.get("op-cache")
    if raw is None:
        return OFF
    mode = _MODES.get(raw.strip().lower())
    if mode is None:
        raise InvalidRequestError(
            f"The header 'op-cache' must be readWrite, readOnly or writeOnly, not {raw!r}.", param="op-cache"
        )
    return mode


def cache_key(body: Mapping[str, Any], model_id: str) -> str:
    keyed = {k: v for k, v in body.items() if k not in _DELIVERY_ONLY}
    keyed["model"] = model_id  # an alias and the id it names give the same output
    return hashlib.sha256(orjson.dumps(keyed, option=orjson.OPT_SORT_KEYS)).hexdigest()


class ResponseCache:
    def __init__(self, db: Database, ttl_seconds: int) -> None:
        self.db = db
        self.ttl_ms = ttl_seconds * 1000
        self._last_purge = 0

    async def get(self, project: str, key: str) -> dict[str, Any] | None:
        query = select(cache_entries.c.completion).where(
            and_(
                cache_entries.c.project == project,
                cache_entries.c.key == key,
                cache_entries.c.expires_at > now_ms(),
            )
        )
        async with self.db.connect() as conn:
            found = (await conn.execute(query)).scalar_one_or_none()
        return found if isinstance(found, dict) else None

    async def put(self, project: str, key: str, model: str, completion: Any) -> None:
        """`completion`: its JSON as a dict, or already serialised as an `orjson.Fragment`."""
        now = now_ms()
        values = {
            "project": project,
            "key": key,
            "model": model,
            "created_at": now,
            "expires_at": now + self.ttl_ms,
            "completion": completion,
        }
        dialect = postgresql if self.db.engine.dialect.name == "postgresql" else sqlite
        statement = dialect.insert(cache_entries).values(values)
        statement = statement.on_conflict_do_update(
            index_elements=[cache_entries.c.project, cache_entries.c.key],
            set_={k: statement.excluded[k] for k in ("model", "created_at", "expires_at", "completion")},
        )
        async with self.db.begin() as conn:
            await conn.execute(statement)
            if now - self._last_purge > _PURGE_EVERY_MS:  # expired rows are never served; this only frees space
                self._last_purge = now
                await conn.execute(delete(cache_entries).where(cache_entries.c.expires_at <= now))


def replay(
    completion: wire.ChatCompletion, include_usage: bool, *, criteria: bool = False
) -> list[wire.ChatCompletionChunk]:
    """The chunks of a stream that the `openai` SDK assembles back into `completion`, judged or not."""

    def chunk(choices: list[wire.ChunkChoice], usage: wire.Usage | None = None) -> wire.ChatCompletionChunk:
        return wire.ChatCompletionChunk(
            id=completion.id,
            created=completion.created,
            model=completion.model,
            choices=choices,
            usage=usage,
            system_fingerprint=completion.system_fingerprint,
        )

    chunks = []
    for choice in completion.choices:
        message = choice.message
        # (delta, logprobs) in the order a live stream sends them; the role rides on the first, as OpenAI's
        # streams begin (clients merge the chunks that follow onto the first one).
        deltas: list[tuple[wire.ChunkDelta, wire.ChoiceLogprobs | None]] = []
        if message.reasoning_content:
            deltas.append((wire.ChunkDelta(reasoning_content=message.reasoning_content), None))
        if message.content is not None:
            deltas.append((wire.ChunkDelta(content=message.content), choice.logprobs))
        for position, call in enumerate(message.tool_calls or []):
            head = wire.ChunkFunction(name=call.function.name, arguments="")
            body = wire.ChunkFunction(arguments=call.function.arguments)
            opening = wire.ChunkToolCall(index=position, id=call.id, type="function", function=head)
            deltas.append((wire.ChunkDelta(tool_calls=[opening]), None))
            deltas.append((wire.ChunkDelta(tool_calls=[wire.ChunkToolCall(index=position, function=body)]), None))
        if message.function_call is not None:
            name, arguments = message.function_call.name, message.function_call.arguments
            deltas.append((wire.ChunkDelta(function_call=wire.ChunkFunction(name=name, arguments="")), None))
            deltas.append((wire.ChunkDelta(function_call=wire.ChunkFunction(arguments=arguments)), None))
        if not deltas:
            deltas.append((wire.ChunkDelta(), None))
        deltas[0][0].role = "assistant"
        for delta, logprobs in deltas:
            chunks.append(chunk([wire.ChunkChoice(index=choice.index, delta=delta, logprobs=logprobs)]))
        end = wire.ChunkChoice(index=choice.index, delta=wire.ChunkDelta(), finish_reason=choice.finish_reason)
        chunks.append(chunk([end]))
    if criteria:  # as a live stream sends them: one chunk of results after the content
        chunks.append(chunk(criteria_choices(completion)))
    if include_usage:
        chunks.append(chunk([], completion.usage))
    return chunks
