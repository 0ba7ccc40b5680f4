"""Projects: the response cache and the log are per project, and a log records the key that made it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import MODEL, Server, create_key, start_server, stop_server
from tests.server.test_request_log import logged_with


@pytest.fixture(scope="module")
def two_projects(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str, str]]:
    tmp = tmp_path_factory.mktemp("projects")
    alpha, beta = create_key(tmp / "data", "alpha"), create_key(tmp / "data", "beta")
    server = start_server(tmp)
    yield server, alpha, beta
    stop_server(server)


def post(server: Server, key: str, body: dict[str, object], **headers: str) -> httpx.Response:
    headers["authorization"] = f"Bearer {key}"
    return httpx.post(f"{server.v1}/chat/completions", json=body, headers=headers, timeout=60)


def test_a_cached_answer_is_served_only_in_its_project(two_projects: tuple[Server, str, str]) -> None:
    server, alpha, beta = two_projects
    body = {"model": MODEL, "messages": [{"role": "user", "content": uuid.uuid4().hex}], "max_tokens": 4}
    stored = post(server, alpha, body, **{"op-cache": "writeOnly"}).json()
    assert post(server, alpha, body, **{"op-cache": "readOnly"}).json()["id"] == stored["id"]
    assert post(server, beta, body, **{"op-cache": "readOnly"}).json()["id"] != stored["id"]


def test_logs_carry_their_project_and_key(two_projects: tuple[Server, str, str]) -> None:
    server, alpha, beta = two_projects
    run = uuid.uuid4().hex
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "metadata": {"run": run}}
    post(server, alpha, body)
    post(server, beta, body)
    rows = logged_with(server, "run", run)
    assert sorted(row["project"] for row in rows) == ["alpha", "beta"]
    key_ids = {row["project"]: row["key_id"] for row in rows}
    assert key_ids["alpha"].startswith("key_") and key_ids["alpha"] != key_ids["beta"]
