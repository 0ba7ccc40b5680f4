"""JSON responses from wire models, serialised by pydantic in one pass."""

from __future__ import annotations

from pydantic import BaseModel
from starlette.responses import Response


def json_response(model: BaseModel | None, *, by_alias: bool = False, status_code: int = 200) -> Response:
    """`model` as JSON (`null` for None, as OpenPipe's latest-logged-call answers when there is none)."""
    body = "null" if model is None else model.model_dump_json(by_alias=by_alias)
    return Response(body, media_type="application/json", status_code=status_code)
