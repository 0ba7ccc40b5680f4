"""Property-based fuzzing of every route on the real server, on SQLite and on PostgreSQL (see tests/fuzzing.py
for how requests are drawn and what the oracle asks of each answer).

Each route gets a bounded, derandomized run (about 2,500 requests in all, under a minute on two quiet cores),
so the module never fails by chance; bench/fuzz.py runs the same strategies for as long as one likes,
with a seed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.routing import Route

from pipeserve.server.app import create_app
from pipeserve.settings import Settings
from tests import fuzzing
from tests.conftest import create_key, create_pg_database, drop_pg_database, start_server, stop_server
from tests.fuzzing import ROUTES, LogReader, Target, drafts, run_one

# Examples per route and database: chat completions get more (most of the server is behind them), the judge's
# routes fewer (each valid request runs the judge model).
EXAMPLES = 40
PER_ROUTE = {
    "POST /chat/completions": 120,
    "POST /chat/completions (stream)": 80,
    "GET /logs": 80,
    "POST /criteria/judge": 25,
    "POST /criteria/{name}/alignment": 15,
}

FUZZ = settings(
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Target, Path]]:
    """A server of its own with a key in a project of its own: the fuzzer's writes (an update with no filter
    changes every log of the project) touch no other test's data, and Authorization is really checked."""
    tmp = tmp_path_factory.mktemp(f"fuzz-{request.param}")
    key = create_key(tmp / "data", project="fuzz")
    database = asyncio.run(create_pg_database()) if request.param == "postgresql" else None
    # Valid `POST /models` requests queue jobs that this server never trains (the fuzzer tests the API).
    server = start_server(
        tmp, config="finetune_max_jobs = 0\n", extra_args=("--database-url", database) if database else ()
    )
    try:
        yield Target(server.url, key).prepare(), server.log
    finally:
        stop_server(server)
        if database is not None:
            asyncio.run(drop_pg_database(database))


def test_every_route_of_the_app_is_fuzzed() -> None:
    app = create_app(Settings())
    served = {(method.upper(), path) for path, item in app.openapi()["paths"].items() for method in item}
    served |= {
        (method, route.path) for route in app.routes if isinstance(route, Route) for method in route.methods or ()
    }
    fuzzed = set()
    for route in ROUTES:
        if route.method != "*":
            prefixes = ("/v1", "/api/v1") if route.prefixed else ("",)
            fuzzed |= {(route.method, prefix + route.path) for prefix in prefixes}
    assert served - {("HEAD", "/openapi.json")} == fuzzed


@pytest.mark.parametrize("route", ROUTES, ids=[route.name for route in ROUTES])
def test_no_request_breaks_a_route(target: tuple[Target, Path], route: fuzzing.Route) -> None:
    server, log = target
    tail = LogReader(log)

    @settings(FUZZ, max_examples=PER_ROUTE.get(route.name, EXAMPLES))
    @given(data=st.data())
    def fuzz(data: st.DataObject) -> None:
        outcome = run_one(server, data.draw(drafts(route, server), label="request"), tail)
        tail.skip()
        assert not outcome.problems, (
            f"{outcome.sent.describe()}\n-> {outcome.answer.status}: {outcome.answer.body[:500]!r}\n"
            + "\n".join(outcome.problems)
            + f"\nserver log:\n{outcome.server_log}"
        )

    fuzz()
    assert server.serving() is None, server.serving()
