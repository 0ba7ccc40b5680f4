"""The access log: uvicorn's lines, byte for byte, written in batches; and on the real server, one line per
request (uvicorn's own access log is off)."""

from __future__ import annotations

import asyncio
import io
import logging
import re
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from uvicorn.logging import AccessFormatter

from pipeserve.server import access_log
from pipeserve.server.access_log import AccessLog
from tests.conftest import Server, start_server, stop_server

FORMAT = '%(levelprefix)s %(client_addr)s - "%(request_line)s" %(status_code)s'  # uvicorn's default


def _scope(
    path: str = "/v1/chat/completions", query: bytes = b"", client: tuple[str, int] | None = None
) -> dict[str, Any]:
    return {
        "type": "http",
        "method": "POST",
        "path": path,
        "query_string": query,
        "http_version": "1.1",
        "client": client,
    }


def _uvicorn_line(scope: dict[str, Any], status: int, colours: bool) -> str:
    """What uvicorn's access logger writes for this request (httptools_impl's call, its default formatter)."""
    path = urllib.parse.quote(scope["path"])
    if scope["query_string"]:
        path = f"{path}?{scope['query_string'].decode('ascii')}"
    client = "%s:%d" % scope["client"] if scope["client"] else ""  # noqa: UP031
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        0,
        '%s - "%s %s HTTP/%s" %d',
        (client, scope["method"], path, scope["http_version"], status),
        None,
    )
    return AccessFormatter(FORMAT, use_colors=colours).format(record) + "\n"


@pytest.mark.parametrize("colours", [False, True])
@pytest.mark.parametrize(
    ("scope", "status"),
    [
        (_scope(client=("127.0.0.1", 51234)), 200),
        (_scope("/v1/models", b"limit=3&after=x", ("::1", 8)), 404),
        (_scope("/api/v1/chat completions/é"), 422),  # quoted as uvicorn quotes it; no client address
        (_scope(client=("10.0.0.2", 1)), 503),
        (_scope(client=("10.0.0.2", 1)), 307),
        (_scope(client=("10.0.0.2", 1)), 101),
        (_scope(client=("10.0.0.2", 1)), 599),  # no phrase, no colour class: as uvicorn writes it
    ],
)
def test_a_line_is_uvicorns_line(scope: dict[str, Any], status: int, colours: bool) -> None:
    async def main() -> str:
        out = io.StringIO()
        log = AccessLog(out, colours=colours)
        log.add(scope, status)
        log.flush()
        return out.getvalue()

    assert asyncio.run(main()) == _uvicorn_line(scope, status, colours)


def test_lines_wait_for_their_batch_then_go_out_together(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(access_log, "FLUSH_AFTER", 0.2)

    class Counting(io.StringIO):
        writes = 0

        def write(self, text: str) -> int:
            self.writes += 1
            return super().write(text)

    async def main() -> None:
        out = Counting()
        log = AccessLog(out, colours=False)
        for port in range(1, 4):
            log.add(_scope(client=("127.0.0.1", port)), 200)
        assert out.getvalue() == ""  # nothing written in the request's path
        await asyncio.sleep(0.4)
        assert out.getvalue().count("\n") == 3 and out.writes == 1
        log.add(_scope(client=("127.0.0.1", 9)), 500)  # a new batch, a new timer
        await asyncio.sleep(0.4)
        last = out.getvalue().splitlines()[-1]
        assert last.endswith('"POST /v1/chat/completions HTTP/1.1" 500 Internal Server Error')
        assert out.writes == 2
        log.flush()  # nothing waiting: nothing written
        assert out.writes == 2

    asyncio.run(main())


def test_a_broken_stream_loses_lines_not_requests() -> None:
    async def main() -> None:
        out = io.StringIO()
        log = AccessLog(out, colours=False)
        out.close()
        log.add(_scope(client=("127.0.0.1", 1)), 200)
        log.flush()  # ValueError from the closed stream: swallowed
        log.add(_scope(client=("127.0.0.1", 2)), 200)
        log.flush()

    asyncio.run(main())


def test_the_server_logs_each_request_once(server: Server) -> None:
    """`pipeserve serve` writes uvicorn's line for every request, routed or on the chat hot path, once."""
    marker = uuid.uuid4().hex
    with httpx.Client(base_url=server.url, timeout=60) as http:
        assert http.get(f"/v1/models?probe={marker}").status_code == 200
        assert http.get(f"/v1/missing-{marker}").status_code == 404
        bad = http.post(f"/v1/chat/completions?probe={marker}", content=b"{not json")
        assert bad.status_code == 400
    expected = [
        rf'^INFO:     127\.0\.0\.1:\d+ - "GET /v1/models\?probe={marker} HTTP/1\.1" 200 OK$',
        rf'^INFO:     127\.0\.0\.1:\d+ - "GET /v1/missing-{marker} HTTP/1\.1" 404 Not Found$',
        rf'^INFO:     127\.0\.0\.1:\d+ - "POST /v1/chat/completions\?probe={marker} HTTP/1\.1" 400 Bad Request$',
    ]
    deadline = time.monotonic() + 10
    while True:
        lines = [line for line in server.log.read_text(errors="replace").splitlines() if marker in line]
        if len(lines) >= len(expected) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(lines) == len(expected), lines  # once each: uvicorn's own access log is off
    for pattern, line in zip(expected, lines, strict=True):
        assert re.match(pattern, line), line


def test_no_access_log_above_info(tmp_path: Path) -> None:
    server = start_server(tmp_path, extra_args=("--log-level", "warning"))
    try:
        marker = uuid.uuid4().hex
        assert httpx.get(f"{server.url}/v1/models?probe={marker}", timeout=60).status_code == 200
        time.sleep(access_log.FLUSH_AFTER * 4)
    finally:
        stop_server(server)
    assert marker not in server.log.read_text(errors="replace")
