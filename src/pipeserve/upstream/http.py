"""The HTTP client of a remote engine: one pooled `httpx.AsyncClient` per model."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import httpx

# httpx logs every request at INFO: one line per completion floods a server's log, and would print the
# credentials of a base URL that carries them. Its warnings still show.
logging.getLogger("httpx").setLevel(logging.WARNING)


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 5.0  # seconds to open a connection
    read: float = 120.0  # most seconds between two reads of the answer (the first byte included)
    total: float = 600.0  # most seconds for a whole request, retries and the streamed answer included


def make_client(
    timeouts: Timeouts,
    *,
    max_connections: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> httpx.AsyncClient:
    """A client for one model's upstreams. `total` is not an httpx timeout: the engine enforces it around
    each request (`asyncio.timeout`), since httpx's timeouts bound single operations only.

    Waiting for a pooled connection is bounded by `total`: admission (`max_concurrent`) bounds how many wait.
    Redirects are not followed (an upstream that redirects is misconfigured, and following would resend the
    key elsewhere)."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(connect=timeouts.connect, read=timeouts.read, write=timeouts.read, pool=timeouts.total),
        limits=httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_connections if max_connections is not None else 64,
            keepalive_expiry=30.0,
        ),
        headers=dict(headers or {}),
        follow_redirects=False,
    )
