"""Bearer-key authentication: open while no key exists, required for every request once one does.

Every request gets a `Principal`: the project it acts in and the key it used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends
from starlette.requests import Request

from pipeserve.errors import AuthenticationError
from pipeserve.keys import DEFAULT_PROJECT, KeyStore


@dataclass(frozen=True)
class Principal:
    project: str
    key_id: str | None


OPEN = Principal(project=DEFAULT_PROJECT, key_id=None)


async def require_key(request: Request) -> Principal:
    store: KeyStore = request.app.state.keys
    keys = store.all()
    if not keys:
        request.state.principal = OPEN
        return OPEN
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationError(
            "You didn't provide an API key. Send it in the header 'Authorization: Bearer <key>'; "
            "`pipeserve keys create` makes one."
        )
    stored = store.find(token.strip(), keys)
    if stored is None:
        raise AuthenticationError(
            "Incorrect API key provided. Use a key printed by `pipeserve keys create` on this server."
        )
    principal = Principal(project=stored.project, key_id=stored.id)
    request.state.principal = principal
    return principal


# A route parameter `principal: Authenticated` requires a key and gives the request's principal.
Authenticated = Annotated[Principal, Depends(require_key)]
