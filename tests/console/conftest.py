"""The console's fixtures: the real server (open, and with keys), and Debian's chromium driven by Playwright.

Playwright never downloads a browser here: it launches /usr/bin/chromium (`apt-get install -y chromium`, which
.ci/run does when it is missing). Screenshots of the main pages go to $PIPESERVE_TEST_ARTIFACTS (default
build/test-artifacts/console/), kept as artifacts of the run and never committed.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Server, create_key, start_server, stop_server

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("PIPESERVE_TEST_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(os.environ.get("PIPESERVE_TEST_ARTIFACTS", ROOT / "build" / "test-artifacts" / "console"))
CSRF = re.compile(r'(?:name="csrf_token" value|data-csrf)="([^"]+)"')


def csrf_token(html: str) -> str:
    found = CSRF.search(html)
    assert found is not None, "the page has no form with a CSRF token"
    return found.group(1)


def report(server: Server, *, key: str | None = None, **body: Any) -> None:
    """A call logged through OpenPipe's `/report`, as a client of another API would log it."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    answer = httpx.post(f"{server.v1}/report", json=body, headers=headers, timeout=30)
    assert answer.status_code == 200, answer.text


def run_tag() -> str:
    """A metadata value no other test uses: each test filters the shared log down to its own requests."""
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def console_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The console as most people meet it: no API keys, so open, as the API is."""
    server = start_server(tmp_path_factory.mktemp("console"))
    yield server
    stop_server(server)


@dataclass
class KeyedServer:
    server: Server
    keys: dict[str, str] = field(default_factory=dict)  # project -> key


@pytest.fixture(scope="session")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeyedServer]:
    """A server with one key in each of the projects `alpha` and `beta`."""
    server = start_server(tmp_path_factory.mktemp("console-keys"))
    keyed = KeyedServer(
        server, {project: create_key(server.data_dir, project, name=project) for project in ("alpha", "beta")}
    )
    yield keyed
    stop_server(server)


# --- the browser -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One chromium per test module: while Playwright's sync API is open its event loop counts as running in
    this thread, so no later test or fixture could call `asyncio.run` (tests/conftest.py's PostgreSQL ones do)."""
    if not CHROMIUM.exists():
        pytest.skip(
            f"no chromium at {CHROMIUM}: install Debian's (`apt-get install -y chromium`, as .ci/run does) "
            "or point PIPESERVE_TEST_CHROMIUM at one"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed: pip install -e '.[test]'")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM))
        yield launched
        launched.close()


@dataclass
class Tab:
    """A page of a fresh browser context, with every script error and CSP violation it met."""

    page: Any
    base: str
    problems: list[str]

    def open(self, path: str) -> Any:
        response = self.page.goto(self.base + path)
        assert response is not None
        return response

    def shot(self, name: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

    def assert_clean(self) -> None:
        assert not self.problems, self.problems


def _console(message: Any, problems: list[str]) -> None:
    """Script errors and CSP violations; a 4xx answer that a test provokes on purpose is checked by that test."""
    if message.type == "error" and "the server responded with a status of 4" not in message.text:
        problems.append(message.text)


def _tab(browser: Any, base: str) -> Iterator[Tab]:
    context = browser.new_context(accept_downloads=True, viewport={"width": 1400, "height": 900})
    context.set_default_timeout(60_000)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("console", lambda message: _console(message, problems))
    page.on("response", lambda r: problems.append(f"{r.status} from {r.url}") if r.status >= 500 else None)
    yield Tab(page, base, problems)
    context.close()


@pytest.fixture
def tab(browser: Any, console_server: Server) -> Iterator[Tab]:
    yield from _tab(browser, console_server.url)


@pytest.fixture
def keyed_tab(browser: Any, keyed_server: KeyedServer) -> Iterator[Tab]:
    yield from _tab(browser, keyed_server.server.url)
