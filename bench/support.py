"""What the benchmark scripts that start one pipeserve of their own share: a free port, and the server started
in a scratch directory, waited for and stopped."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def pipeserve(data_dir: Path, *, config: Path | None = None, cwd: Path | None = None) -> Iterator[str]:
    """`pipeserve serve` on a free port with its data (and its log, server.log) in `data_dir`: its base URL
    once `/health` answers, the server stopped on exit."""
    port = free_port()
    command = [sys.executable, "-m", "pipeserve", "serve", "--port", str(port), "--data-dir", str(data_dir)]
    command += ["--config", str(config)] if config is not None else []
    log = data_dir / "server.log"
    with log.open("wb") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"the server exited:\n{log.read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start:\n{log.read_text()}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        server.wait(30)
