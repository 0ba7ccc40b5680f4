"""Request bodies: read within the size limit, parsed as JSON within the depth limit, then validated against a
wire model (`pipeserve.validation`)."""

from __future__ import annotations

import json
import re
from typing import Any

import orjson
from starlette.requests import Request

from pipeserve.errors import InvalidRequestError, RequestTooLargeError
from pipeserve.settings import Settings
from pipeserve.validation import Model, _to_error, param_path, validate

__all__ = ["_to_error", "json_depth", "param_path", "parse_body", "read_json"]


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with a 413 as soon as it is known to exceed `limit`: from its Content-Length before
    anything is read, else while it streams in, so an oversized body is never held whole."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(int(declared), limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(size, limit, at_least=True)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(size: int, limit: int, *, at_least: bool = False) -> RequestTooLargeError:
    return RequestTooLargeError(
        f"The request body is {'over ' if at_least else ''}{size} bytes; this server accepts at most {limit} "
        "(its max_request_bytes setting). Send less: fewer or shorter messages, or split the data across requests."
    )


def json_depth(value: Any, limit: int) -> int:
    """How deeply `value` nests objects and arrays, counted without recursion and only up to `limit + 1`, so a
    hostile body costs no more than its size."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return deepest


def parse_json(raw: bytes, max_depth: int) -> Any:
    try:
        data: Any = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        # orjson's own recursion limit (1024) lands here too: such a body is refused like any bad JSON.
        raise InvalidRequestError(
            f"We could not parse the JSON body of your request ({exc}). Send a JSON object with "
            "Content-Type: application/json.",
        ) from None
    # Brackets bound the depth: most bodies have fewer than the limit and need no walk at all.
    if raw.count(b"{") + raw.count(b"[") > max_depth and json_depth(data, max_depth) > max_depth:
        raise InvalidRequestError(
            f"The request body nests objects and arrays more than {max_depth} levels deep, more than this server "
            "accepts (its max_json_depth setting). Flatten the data, or send deep payloads as JSON strings.",
            code="json_too_deep",
        )
    if _LONG_DIGITS.search(raw):
        _check_integers(raw)
    return data


# orjson keeps integers from -2**63 to 2**64 - 1 exact and silently turns larger ones into floats; what we accept
# must be stored and read back unchanged, so a body that may hold such a number (19 digits in a row) is checked.
_LONG_DIGITS = re.compile(rb"[0-9]{19}")
_INTEGERS = (-(2**63), 2**64 - 1)


def _exact_integer(text: str) -> int:
    value = int(text)
    if not _INTEGERS[0] <= value <= _INTEGERS[1]:
        raise _BigInteger(text)
    return value


class _BigInteger(ValueError):
    pass


def _check_integers(raw: bytes) -> None:
    try:
        json.loads(raw, parse_int=_exact_integer)
    except _BigInteger as exc:
        raise InvalidRequestError(
            f"The request body holds the integer {str(exc)[:40]}, beyond the 64-bit range this server stores "
            "exactly. Send it as a string, or as a number with a decimal point if a float will do.",
        ) from None


async def read_json(request: Request) -> dict[str, Any]:
    """The body as a JSON object, or a 4xx that says what is wrong with it."""
    settings: Settings = request.app.state.settings
    data = parse_json(await read_body(request, settings.max_request_bytes), settings.max_json_depth)
    if not isinstance(data, dict):
        raise InvalidRequestError(
            f"The request body must be a JSON object, not {type(data).__name__}.",
        )
    return data


async def parse_body(request: Request, model: type[Model]) -> Model:
    return validate(model, await read_json(request))
