"""Request bodies: JSON parsing, then validation against a wire model (`pipeserve.validation`)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request

from pipeserve.errors import InvalidRequestError
from pipeserve.validation import Model, _to_error, param_path, validate

__all__ = ["_to_error", "param_path", "parse_body", "read_json"]


async def read_json(request: Request) -> dict[str, Any]:
    """The body as a JSON object, or a 400 that says what is wrong with it."""
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
    return data


async def parse_body(request: Request, model: type[Model]) -> Model:
    return validate(model, await read_json(request))
