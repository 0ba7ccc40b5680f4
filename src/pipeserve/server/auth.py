"""Bearer-key authentication: open while no key exists, required for every request once one does."""

from __future__ import annotations

from starlette.requests import Request

from pipeserve.errors import AuthenticationError
from pipeserve.keys import KeyStore


async def require_key(request: Request) -> None:
    store: KeyStore = request.app.state.keys
    if not store.all():
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationError(
            "You didn't provide an API key. Send it in the header 'Authorization: Bearer <key>'; "
            "`pipeserve keys create` makes one."
        )
    if not store.verify(token.strip()):
        raise AuthenticationError(
            "Incorrect API key provided. Use a key printed by `pipeserve keys create` on this server."
        )
