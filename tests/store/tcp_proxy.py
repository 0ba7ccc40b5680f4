"""A TCP proxy in front of the shared PostgreSQL server, so that a test can take the database away from one
pipeserve (refuse connections, reset the open ones, or hang them) without touching anyone else's."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, Literal

Mode = Literal["forward", "refuse", "hang"]


class TcpProxy:
    """Forwards 127.0.0.1:`port` to `target`. Runs its own event loop in a thread: usable from sync and async
    tests alike, and it keeps forwarding while the test's own loop is busy."""

    def __init__(self, target_host: str = "127.0.0.1", target_port: int = 5432) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.mode: Mode = "forward"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def start(self) -> TcpProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def refuse(self) -> None:
        """Close the listening socket (new connections are refused) and reset every open connection."""
        self._call(self._set("refuse"))

    def hang(self) -> None:
        """Accept connections and hold them without a byte forwarded; open connections stall as well."""
        self._call(self._set("hang"))

    def forward(self) -> None:
        self._call(self._set("forward"))

    def stop(self) -> None:
        self._call(self._set("refuse"))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _set(self, mode: Mode) -> None:
        previous, self.mode = self.mode, mode
        if mode == "refuse" or previous == "hang":
            # held connections never reached the database: their clients must see them fail, not resume
            for writer in list(self._writers):
                _reset(writer)
            self._writers.clear()
        if mode == "refuse" and self._server is not None:
            self._server.close()
            self._server = None
        if mode != "refuse" and self._server is None:
            await self._listen()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        if self.mode == "hang":
            return  # held open until the mode changes
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _reset(writer)
            return
        self._writers.add(up_writer)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                while self.mode == "hang":
                    await asyncio.sleep(0.05)
                if writer.is_closing():
                    return
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            _reset(writer)
            self._writers.discard(writer)


def _reset(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.transport.abort()
