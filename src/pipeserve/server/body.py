"""Request bodies: JSON parsing and pydantic validation turned into OpenAI-shaped 400s naming the field."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails
from starlette.requests import Request

from pipeserve.errors import InvalidRequestError

Model = TypeVar("Model", bound=BaseModel)

# After these, pydantic's location holds the tag of a discriminated union, not a field name.
_TAGGED_FIELDS = {"response_format", "tool_choice", "function_call"}


async def parse_body(request: Request, model: type[Model]) -> Model:
    raw = await request.body()
    try:
        data: Any = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(
            f"We could not parse the JSON body of your request ({exc}). Send a JSON object with "
            "Content-Type: application/json.",
        ) from None
    if not isinstance(data, dict):
        raise InvalidRequestError(
            f"The request body must be a JSON object, not {type(data).__name__}.",
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _to_error(exc.errors()[0]) from None


def param_path(loc: tuple[int | str, ...]) -> str:
    """pydantic's error location as OpenAI writes a parameter: `messages[0].content`."""
    out = ""
    previous: int | str | None = None
    for element in loc:
        if isinstance(element, int):
            out += f"[{element}]"
        elif (
            isinstance(previous, int)  # a role or part type tag
            or previous in _TAGGED_FIELDS
            or "[" in element
            or element != element.lower()  # a model class name
            or element in {"str", "int", "float", "bool", "list", "dict", "literal", "none"}
        ):
            pass
        else:
            out += f".{element}" if out else element
        previous = element
    return out


def _to_error(error: ErrorDetails) -> InvalidRequestError:
    param = param_path(tuple(error["loc"]))
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
