"""The access log: uvicorn's line for each request, written in batches.

uvicorn writes its access line through `logging` (a record, a copy of it, a formatter, a lock, a write and a
flush per request): ~0.06 ms of CPU per request in front of a fast upstream (bench/gateway.py), a twentieth
of a streamed request's. Here the same line (same format, same colours on a terminal) is one f-string
appended to a list, and the lines of the last `FLUSH_AFTER` seconds go out in one write: a line reaches the
log at most that late, and a process killed meanwhile loses those lines, not a request. The lines come from
the app's `send` (`PipeserveApp`), so the 500 uvicorn sends itself after an exception the app let through has
none: uvicorn logs that exception with its traceback instead.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any, TextIO

from starlette.types import Message, Scope, Send
from uvicorn.logging import AccessFormatter
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

FLUSH_AFTER = 0.05  # seconds a line may wait for the others of its batch


class AccessLog:
    def __init__(self, stream: TextIO | None = None, *, colours: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.colours = _is_tty(self.stream) if colours is None else colours
        # uvicorn's own formatter colours the level and each status, once per status here.
        self._formatter = AccessFormatter(use_colors=self.colours)
        self._prefix = self._formatter.color_level_name("INFO", logging.INFO) if self.colours else "INFO"
        self._prefix += ":     "
        self._lines: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._statuses: dict[int, str] = {}

    def watch(self, scope: Scope, send: Send) -> Send:
        """`send`, noting the request's line when its response starts."""

        async def logged(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.add(scope, message["status"])
            await send(message)

        return logged

    def add(self, scope: Scope, status: int) -> None:
        # The arguments uvicorn's access log is given, from its own helpers (typed for uvicorn's scope
        # TypedDicts; starlette's Scope is the same dict as a plain mapping).
        path = get_path_with_query_string(scope)  # type: ignore[arg-type]
        request_line = f"{scope['method']} {path} HTTP/{scope['http_version']}"
        if self.colours:
            request_line = f"\x1b[1m{request_line}\x1b[0m"
        address = get_client_addr(scope)  # type: ignore[arg-type]
        self._lines.append(f'{self._prefix}{address} - "{request_line}" {self._status(status)}\n')
        if self._timer is None:
            if self._loop is None:
                self._loop = asyncio.get_running_loop()
            self._timer = self._loop.call_later(FLUSH_AFTER, self.flush)

    def flush(self) -> None:
        """Write what is waiting (also called when the server stops)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._lines:
            return
        text = "".join(self._lines)
        self._lines.clear()
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed or broken stdout must not fail the requests that follow
            pass

    def _status(self, status: int) -> str:
        text = self._statuses.get(status)
        if text is None:
            text = self._statuses[status] = self._formatter.get_status_code(status)
        return text


def _is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
