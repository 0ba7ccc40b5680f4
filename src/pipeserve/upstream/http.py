"""The HTTP client of a remote engine: one pooled aiohttp session per model, behind a small interface of our
own (`HttpClient`, `Response`, `TransportError`), so that engines and error mapping know no HTTP library.

aiohttp rather than httpx: on the gateway path (bench/gateway.py, a fake upstream on loopback) reading one
streamed completion cost ~1.1 ms of CPU with httpx, which also closed the connection whenever a stream was
closed after `[DONE]` but before the chunked body's end, against ~0.2 ms with aiohttp, which keeps it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

MAX_LINE = 16 << 20  # bytes: an event-stream line longer than this is not an answer but a broken upstream
_DRAIN_BYTES = 1 << 16  # what close(drain=...) reads at most of an answer said to be over
_BREAK = re.compile(rb"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 5.0  # seconds to open a connection
    read: float = 120.0  # most seconds between two reads of the answer (the first byte included)
    total: float = 600.0  # most seconds for a whole request, retries and the streamed answer included


# --- transport errors: what went wrong, in our words -------------------------------------------------------
class TransportError(Exception):
    """The request could not be completed (no HTTP answer, or an answer cut short)."""


class ConnectTimeout(TransportError):
    """Opening the connection took longer than the connect timeout."""


class ReadTimeout(TransportError):
    """The upstream sent nothing for longer than the read timeout."""


class ConnectFailed(TransportError):
    """No connection: refused, unknown host, TLS handshake refused."""


class ConnectionDropped(TransportError):
    """The connection broke, or the answer was not valid HTTP, while sending or reading."""


def _translate(exc: aiohttp.ClientError) -> TransportError:
    reason = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return ConnectTimeout(reason)
    if isinstance(exc, aiohttp.ServerTimeoutError):  # SocketTimeoutError: the read timeout
        return ReadTimeout(reason)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return ConnectFailed(reason)
    dropped = aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError | aiohttp.ClientOSError
    if isinstance(exc, dropped | aiohttp.ClientResponseError):  # the last: an answer that isn't valid HTTP
        return ConnectionDropped(reason)
    return TransportError(reason)


class Response:
    """An answer whose body is read as it arrives."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        self.headers: Mapping[str, str] = response.headers  # case-insensitive

    async def read(self) -> bytes:
        try:
            return await self._response.read()
        except aiohttp.ClientError as exc:
            raise _translate(exc) from exc

    async def lines(self) -> AsyncIterator[str]:
        """The body's lines as they arrive, without their line breaks (CRLF, LF or CR, as SSE allows)."""
        pending = b""
        try:
            async for chunk in self._response.content.iter_any():
                data = pending + chunk
                # A CR at the end may be the first half of a CRLF: keep it for the next chunk.
                cut = len(data) - 1 if data.endswith(b"\r") else len(data)
                parts = _BREAK.split(data[:cut])
                pending = parts.pop() + data[cut:]
                if len(pending) > MAX_LINE:
                    raise ConnectionDropped(f"a line of the answer is longer than {MAX_LINE} bytes")
                for part in parts:
                    yield part.decode("utf-8", "replace")
        except aiohttp.ClientError as exc:
            raise _translate(exc) from exc
        if pending:
            for part in _BREAK.split(pending):
                yield part.decode("utf-8", "replace")

    def release_if_read(self) -> bool:
        """Give the connection back to the pool now if the whole body has been read (nothing to wait for);
        False, doing nothing, otherwise."""
        if not self._response.content.is_eof():
            return False
        self._response.release()
        return True

    async def close(self, *, drain: float = 0.0) -> None:
        """Done with the answer: a connection whose answer was read to its end goes back to the pool; one
        closed earlier is closed, so that the upstream sees the client leave and stops generating.

        `drain`: seconds to wait for the rest of an answer known to be over (after `[DONE]`, the chunked
        body's last bytes may still be on their way), so that its connection can be reused."""
        content = self._response.content
        if drain > 0 and not content.is_eof():
            with contextlib.suppress(Exception):
                async with asyncio.timeout(drain):
                    left = _DRAIN_BYTES
                    while left > 0 and (data := await content.readany()):
                        left -= len(data)
        if content.is_eof():
            self._response.release()
        else:
            self._response.close()


class HttpClient:
    """A client for one model's upstreams.

    `total` is not a timeout of this client: the engine enforces it around each request (`asyncio.timeout`),
    which also bounds waiting for a pooled connection. Redirects are not followed (an upstream that redirects
    is misconfigured, and following would resend the key elsewhere). Proxies come from the environment
    (`HTTPS_PROXY`, `NO_PROXY`), as for any HTTP client."""

    def __init__(
        self,
        timeouts: Timeouts,
        *,
        max_connections: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.timeouts = timeouts
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max_connections or 0, keepalive_timeout=30.0),
            headers=dict(headers or {}),
            timeout=self._timeout(timeouts.read),
            # Not aiohttp's trust_env: it reads the proxy variables and ~/.netrc in a thread on every request
            # (two thread hand-offs, ~0.2 ms at concurrency 1). The environment is read once instead.
            trust_env=False,
        )
        self._proxies = urllib.request.getproxies()
        self._proxy_of: dict[tuple[str, str], str | None] = {}

    def _timeout(self, read: float) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=None, connect=None, sock_connect=self.timeouts.connect, sock_read=read)

    async def request(
        self,
        method: str,
        url: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        read_timeout: float | None = None,
    ) -> Response:
        """Send a request and return once the answer's head is read (its body is the caller's to read and
        close). Raises `TransportError`."""
        options: dict[str, Any] = {"data": body, "headers": headers, "allow_redirects": False}
        proxy = self._proxy(url)
        if proxy is not None:
            options["proxy"] = proxy
        if read_timeout is not None:
            options["timeout"] = self._timeout(read_timeout)
        try:
            return Response(await self._session.request(method, url, **options))
        except aiohttp.ClientError as exc:
            raise _translate(exc) from exc

    def _proxy(self, url: str) -> str | None:
        """The proxy for `url` from the environment (`HTTP_PROXY`/`HTTPS_PROXY`, unless `NO_PROXY` names the
        host), as read when the client was made."""
        if not self._proxies:
            return None
        parts = urllib.parse.urlsplit(url)
        key = (parts.scheme, parts.netloc)
        if key not in self._proxy_of:
            bypass = urllib.request.proxy_bypass_environment(  # type: ignore[attr-defined]  # in the stdlib, not in its stubs
                parts.hostname or "", self._proxies
            )
            self._proxy_of[key] = None if bypass else self._proxies.get(parts.scheme)
        return self._proxy_of[key]

    async def close(self) -> None:
        await self._session.close()


def make_client(
    timeouts: Timeouts,
    *,
    max_connections: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> HttpClient:
    return HttpClient(timeouts, max_connections=max_connections, headers=headers)
