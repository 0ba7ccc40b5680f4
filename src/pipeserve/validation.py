"""Validation of JSON data against wire models, turned into OpenAI-shaped 400s naming the field."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from pipeserve.errors import InvalidRequestError

Model = TypeVar("Model", bound=BaseModel)

_NO_DATA = object()


def validate(model: type[Model], data: Any) -> Model:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _to_error(exc.errors()[0], data) from None


def param_path(loc: tuple[int | str, ...], data: Any = _NO_DATA) -> str:
    """pydantic's error location as OpenAI writes a parameter: `messages[0].content`.

    pydantic inserts union members and discriminator tags (`user`, `str`, `list[str]`) into locations;
    walking the request body alongside tells them from real keys and indexes.
    """
    if data is _NO_DATA:
        return _guess_path(loc)
    out = ""
    current = data
    for position, element in enumerate(loc):
        last = position == len(loc) - 1
        if isinstance(element, int) and isinstance(current, list) and 0 <= element < len(current):
            out += f"[{element}]"
            current = current[element]
        elif isinstance(element, str) and isinstance(current, dict) and (element in current or last):
            out += f".{element}" if out else element
            current = current.get(element)
    return out


def _guess_path(loc: tuple[int | str, ...]) -> str:
    """Without the body (errors FastAPI raised itself), drop what looks like a union member name."""
    out = ""
    for element in loc:
        if isinstance(element, int):
            out += f"[{element}]"
        elif "[" not in element and element not in {"str", "int", "float", "bool", "list", "dict"}:
            out += f".{element}" if out else element
    return out


def _to_error(error: ErrorDetails, data: Any) -> InvalidRequestError:
    param = param_path(tuple(error["loc"]), data)
    kind = error["type"]
    if kind == "extra_forbidden":
        return InvalidRequestError(f"Unrecognized request argument supplied: {param}", param=param)
    if kind == "missing":
        return InvalidRequestError(f"Missing required parameter: '{param}'.", param=param)
    value = error.get("input")
    shown = orjson.dumps(value).decode()[:100] if _jsonable(value) else repr(value)[:100]
    return InvalidRequestError(f"Invalid value for '{param}': {error['msg']} (got {shown}).", param=param)


def _jsonable(value: Any) -> bool:
    try:
        orjson.dumps(value)
    except TypeError:
        return False
    return True
