"""What `/report` accepted reads back unchanged from GET /v1/logs, GET /v1/logs/{id} and the latest logged call,
whatever its JSON type, on SQLite and PostgreSQL.

Integers from -2**63 to 2**64-1 are stored exactly; one beyond them, which orjson would round to a double, and a
number beyond a double's range (1e400) are a 400: nothing is accepted that would not read back as sent.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import httpx
import orjson
import pytest

from tests.conftest import Server, create_pg_database, drop_pg_database, start_server, stop_server
from tests.store.test_json import same

RAW = [
    b"5",
    b"-0",
    b"0.0",
    b"1.0",
    b"1e16",
    b"9007199254740993",
    b"18446744073709551615",
    b"-9223372036854775808",
    b"1.7976931348623157e308",
    b"5e-324",
    b"0.1",
    b"true",
    b"false",
    b"null",
    '"héllo ✓ 🦙"'.encode(),
    b'"\\u00e9\\ud83e\\udd99 \\"quoted\\""',
    b"[]",
    b"{}",
    b'[1, [2, [3, {"a": [1e16, 18446744073709551615, -0.5]}]]]',
    b'{"b": 1, "a": {"z": null, "y": [true, "x"]}, "\xc3\xbc": 0.30000000000000004}',
]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def own_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server of this module's own, so that the latest logged call of its project is the test's."""
    url = asyncio.run(create_pg_database()) if request.param == "postgresql" else None
    server = start_server(tmp_path_factory.mktemp("json"), extra_args=("--database-url", url) if url else ())
    yield server
    stop_server(server)
    if url:
        asyncio.run(drop_pg_database(url))


@pytest.mark.parametrize("raw", RAW, ids=lambda raw: raw.decode()[:30])
def test_a_reported_payload_reads_back_unchanged(own_server: Server, raw: bytes) -> None:
    run = uuid.uuid4().hex
    body = b'{"reqPayload": %s, "respPayload": {"v": %s}, "tags": {"run": "%s"}}' % (raw, raw, run.encode())
    with httpx.Client(base_url=own_server.v1, timeout=30) as http:
        response = http.post("/report", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 200, response.text
        accepted = orjson.loads(raw)

        listed = orjson.loads(http.get("/logs", params={"metadata.run": run}).content)["data"]
        assert len(listed) == 1
        assert same(listed[0]["request"], accepted) and same(listed[0]["response"], {"v": accepted})
        one = orjson.loads(http.get(f"/logs/{listed[0]['id']}").content)
        assert same(one["request"], accepted) and same(one["response"], {"v": accepted})
        latest = orjson.loads(http.get("/local-testing-only-get-latest-logged-call").content)
        assert same(latest["reqPayload"], accepted) and same(latest["respPayload"], {"v": accepted})
        # and the page holding it lists the log beside the others
        assert http.get("/logs", params={"limit": 1000}).status_code == 200


@pytest.mark.parametrize(
    "raw",
    [
        b"1e400",
        b"-1e400",
        b"NaN",
        b"Infinity",
        b'"\\ud800"',
        b"123456789012345678901234567890",
        b"-123456789012345678901234567890",
        b"18446744073709551616",
        b"-9223372036854775809",
    ],
)
def test_what_json_cannot_hold_is_refused_not_stored(own_server: Server, raw: bytes) -> None:
    body = b'{"reqPayload": %s}' % raw
    with httpx.Client(base_url=own_server.v1, timeout=30) as http:
        response = http.post("/report", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 400, response.text
        assert response.json()["error"]["type"] == "invalid_request_error"
        assert http.get("/logs", params={"limit": 1000}).status_code == 200


def test_a_whole_page_of_every_type_reads_back(own_server: Server) -> None:
    run = uuid.uuid4().hex
    with httpx.Client(base_url=own_server.v1, timeout=30) as http:
        for index, raw in enumerate(RAW):
            body = b'{"reqPayload": %s, "tags": {"page": "%s", "i": %d}}' % (raw, run.encode(), index)
            assert http.post("/report", content=body, headers={"content-type": "application/json"}).status_code == 200
        page = http.get("/logs", params={"metadata.page": run, "limit": 100})
        assert page.status_code == 200
        got = {int(log["metadata"]["i"]): log["request"] for log in orjson.loads(page.content)["data"]}
    assert sorted(got) == list(range(len(RAW)))
    assert all(same(got[index], orjson.loads(raw)) for index, raw in enumerate(RAW))
