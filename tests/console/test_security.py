"""The console over plain HTTP: CSRF on every form, its secret file, its headers, and its place beside the API."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server, start_server, stop_server
from tests.console.conftest import KeyedServer, csrf_token


def test_a_form_without_this_browsers_token_is_refused(console_server: Server) -> None:
    with httpx.Client(base_url=console_server.url, timeout=30) as client:
        page = client.get("/datasets")
        token = csrf_token(page.text)
        assert "pipeserve_csrf" in client.cookies
        missing = client.post("/datasets", data={"name": "no-token"})
        assert missing.status_code == 403
        assert "Reload the page" in missing.text
        wrong = client.post("/datasets", data={"name": "wrong-token", "csrf_token": token[:-2] + "AA"})
        assert wrong.status_code == 403
        made = client.post("/datasets", data={"name": "with-token", "csrf_token": token})
        assert made.status_code == 303
        assert made.headers["location"].startswith("/datasets/ds_")
    # Another browser (another CSRF cookie) cannot use this page's token: a cross-site form has neither.
    with httpx.Client(base_url=console_server.url, timeout=30) as other:
        other.get("/datasets")
        assert other.post("/datasets", data={"name": "stolen-token", "csrf_token": token}).status_code == 403
    names = [d["name"] for d in httpx.get(f"{console_server.v1}/datasets", timeout=30).json()["data"]]
    assert "with-token" in names
    assert not {"no-token", "wrong-token", "stolen-token"} & set(names)


def test_the_playground_needs_the_token_too(console_server: Server) -> None:
    body = {"request": {"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": "hi"}]}}
    with httpx.Client(base_url=console_server.url, timeout=60) as client:
        token = csrf_token(client.get("/playground").text)
        assert client.post("/playground/chat", json=body).status_code == 403
        bad = client.post("/playground/chat", json={"request": "hi"}, headers={"X-CSRF-Token": token})
        assert bad.status_code == 400
        assert bad.json()["error"]["param"] == "request"
        ok = client.post("/playground/chat", json=body | {"log": False}, headers={"X-CSRF-Token": token})
        assert ok.status_code == 200
        assert ok.json()["choices"][0]["message"]["role"] == "assistant"


def test_headers_errors_and_the_apis_precedence(console_server: Server) -> None:
    page = httpx.get(f"{console_server.url}/", timeout=30)
    assert page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["server-timing"].startswith("app;dur=")
    cookie = page.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    # The API keeps its own answers: JSON, and OpenAI's error shape for an unknown route.
    assert httpx.get(f"{console_server.v1}/models", timeout=30).json()["object"] == "list"
    unknown = httpx.get(f"{console_server.url}/no-such-page", timeout=30)
    assert unknown.status_code == 404
    assert set(unknown.json()["error"]) == {"message", "type", "param", "code"}
    # The console's own errors are pages.
    missing = httpx.get(f"{console_server.url}/requests/log_missing", timeout=30)
    assert missing.status_code == 404
    assert "No request &#39;log_missing&#39; in this project" in missing.text  # escaped, as all text
    asset = httpx.get(f"{console_server.url}/static/htmx.min.js", timeout=30)
    assert asset.status_code == 200
    assert "Zero-Clause BSD" in asset.text[:400]
    assert "immutable" in asset.headers["cache-control"]


def test_the_session_secret_is_private(console_server: Server, keyed_server: KeyedServer) -> None:
    for data_dir in (console_server.data_dir, keyed_server.server.data_dir):
        secret = Path(data_dir) / "console-secret"
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        assert len(secret.read_bytes().strip()) >= 32


@pytest.fixture(scope="module")
def console_off(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("console-off"), config="console = false\n")
    yield server
    stop_server(server)


def test_the_console_can_be_turned_off(console_off: Server) -> None:
    answer = httpx.get(f"{console_off.url}/", timeout=30)
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "not_found"
    assert not (console_off.data_dir / "console-secret").exists()
    assert httpx.get(f"{console_off.v1}/models", timeout=30).status_code == 200
