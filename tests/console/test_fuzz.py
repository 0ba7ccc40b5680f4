"""Property-based fuzzing of every console route on the real server, on SQLite and on PostgreSQL: whatever the
path, query or form holds (NUL characters, stray percent signs, huge or non-ASCII text), the answer is a page
or a 4xx, never a 5xx. tests/server/test_fuzz.py does the same for the API's routes."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.routing import Route

from pipeserve.console import console_router
from pipeserve.server.app import create_app
from pipeserve.settings import Settings
from tests.conftest import Server, create_pg_database, drop_pg_database, start_server, stop_server
from tests.console.conftest import csrf_token

FUZZ = settings(
    derandomize=True,
    deadline=None,
    database=None,
    max_examples=30,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Text as an attacker or a clumsy hand writes it: the store's limits (NUL, long) and the parsers' (%, =, <).
TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", " ", "\x00", "%", "%zz", "a=b", "x<0.5", "criteria.x.score<", "2025-13-45", "-1", "1e309"]),
    st.text(alphabet="ab=<>%\x00\n/", max_size=12),
    st.just("x" * 5000),
)
PATH_TEXT = TEXT.filter(lambda t: t not in ("", ".", ".."))
KNOWN: dict[str, str] = {}  # ids that exist on the target (a criterion, a dataset and its entry), drawn too
FIELDS = ["model", "status", "from", "to", "meta", "score", "completion", "cursor", "limit", "fragment", "other"]

# Every console route: (method, path with {params}, form or query fields it reads)
GETS = [
    ("/", FIELDS),
    ("/requests/{log_id}", []),
    ("/datasets", []),
    ("/datasets/{dataset_id}", ["cursor", "added", "skipped", "failed", "saved"]),
    ("/datasets/{dataset_id}/export", ["split", "format"]),
    ("/datasets/{dataset_id}/entries/{entry_id}", []),
    ("/criteria", []),
    ("/criteria/{name}", ["a", "b"]),
    ("/models", []),
    ("/playground", []),
    ("/login", ["next"]),
    ("/static/{name}", ["v"]),
]
POSTS = [
    ("/datasets", ["name"]),
    ("/datasets/from-logs", ["filter", "dataset", "name", "split", "limit"]),
    ("/datasets/{dataset_id}/delete", []),
    ("/datasets/{dataset_id}/entries/{entry_id}", ["split", "entry"]),
    ("/datasets/{dataset_id}/entries/{entry_id}/delete", []),
    ("/criteria/{name}/judge", ["version", "system", "input", "output"]),
    ("/criteria/{name}/alignment", ["rows", "threshold"]),
    ("/login", ["key", "next"]),
    ("/logout", []),
]


def _routes(routes: list[Any]) -> set[tuple[str, str]]:
    """(method, path) of every route, through the routers included in others."""
    found = set()
    for route in routes:
        if isinstance(route, Route):
            found |= {(method, route.path) for method in route.methods or () if method != "HEAD"}
        elif hasattr(route, "original_router"):  # FastAPI keeps an included router whole
            found |= _routes(route.original_router.routes)
    return found


def test_every_console_route_is_fuzzed() -> None:
    console = _routes(console_router(Settings()).routes)
    fuzzed = {("GET", path) for path, _ in GETS} | {("POST", path) for path, _ in POSTS}
    fuzzed.add(("POST", "/playground/chat"))  # a JSON API for the page's script: test_security.py checks it
    assert console == fuzzed
    # The console's pages are no part of the API's schema.
    assert not any(path in create_app(Settings()).openapi()["paths"] for _, path in console)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server of its own: the fuzzer's forms create and delete datasets in its project."""
    database = asyncio.run(create_pg_database()) if request.param == "postgresql" else None
    server = start_server(
        tmp_path_factory.mktemp(f"console-fuzz-{request.param}"),
        extra_args=("--database-url", database) if database else (),
    )
    answer = httpx.post(f"{server.v1}/criteria", json={"name": "fuzzed", "instructions": "PASS if short."}, timeout=30)
    assert answer.status_code == 200
    dataset = httpx.post(f"{server.v1}/datasets", json={"name": "fuzzed"}, timeout=30).json()["id"]
    entry = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    httpx.post(f"{server.v1}/datasets/{dataset}/entries", json={"entries": [entry]}, timeout=30)
    entries = httpx.get(f"{server.v1}/datasets/{dataset}/entries", timeout=30).json()["data"]
    KNOWN.update(criterion="fuzzed", dataset=dataset, entry=entries[0]["id"], asset="console.css")
    try:
        yield server
    finally:
        stop_server(server)
        if database is not None:
            asyncio.run(drop_pg_database(database))


def _path(template: str, data: st.DataObject) -> str:
    segment = st.one_of(PATH_TEXT, st.sampled_from(sorted(KNOWN.values())))
    return re.sub(r"\{(\w+)\}", lambda m: quote(data.draw(segment, label=m.group(1)), safe=""), template)


def _fields(names: list[str], data: st.DataObject) -> list[tuple[str, str]]:
    chosen = data.draw(st.lists(st.sampled_from(names), max_size=6), label="fields") if names else []
    return [(name, data.draw(TEXT, label=name)) for name in chosen]


def _check(answer: httpx.Response, server: Server) -> None:
    assert answer.status_code < 500, (answer.request.method, str(answer.request.url)[:300], answer.text[:500])
    log = server.log.read_text()
    assert "Traceback" not in log, log[-3000:]


@pytest.mark.parametrize(("template", "names"), GETS, ids=[path for path, _ in GETS])
def test_no_query_breaks_a_page(target: Server, template: str, names: list[str]) -> None:
    with httpx.Client(base_url=target.url, timeout=60) as client:

        @FUZZ
        @given(data=st.data())
        def fuzz(data: st.DataObject) -> None:
            path = _path(template, data)
            params = _fields(names, data)
            headers = {"HX-Request": "true"} if data.draw(st.booleans(), label="htmx") else {}
            _check(client.get(path, params=params, headers=headers), target)

        fuzz()


@pytest.mark.parametrize(("template", "names"), POSTS, ids=[path for path, _ in POSTS])
def test_no_form_breaks_a_route(target: Server, template: str, names: list[str]) -> None:
    with httpx.Client(base_url=target.url, timeout=120) as client:
        token = csrf_token(client.get("/datasets").text)

        @FUZZ
        @given(data=st.data())
        def fuzz(data: st.DataObject) -> None:
            form = _fields(names, data)
            if data.draw(st.integers(0, 9), label="token") > 0:  # mostly with this browser's token, to get past it
                form.append(("csrf_token", token))
            headers = {"Content-Type": "application/x-www-form-urlencoded"}
            _check(client.post(_path(template, data), content=urlencode(form), headers=headers), target)

        fuzz()
