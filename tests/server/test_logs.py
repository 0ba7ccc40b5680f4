"""The logs endpoints on the real server: chat logging, reports, metadata updates, listing and isolation.

The session's `server` is shared, so every test selects its own logs by a unique metadata value or model.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import MODEL, Server, clean_env, start_server, stop_server

HELLO = [{"role": "user", "content": "Say hi"}]


def unique() -> str:
    return uuid.uuid4().hex[:12]


def post(server: Server, path: str, body: Any, key: str = "anything", prefix: str = "/api/v1") -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.post(f"{server.url}{prefix}{path}", json=body, headers=headers, timeout=60)


def get(server: Server, path: str, params: Any = None, key: str = "anything") -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.get(f"{server.v1}{path}", params=params, headers=headers, timeout=60)


def report(server: Server, key: str = "anything", **fields: Any) -> None:
    body = {
        "requestedAt": 1_700_000_000_000,
        "receivedAt": 1_700_000_000_800,
        "reqPayload": {"model": "gpt-4o-external", "messages": HELLO},
        "respPayload": {
            "id": f"chatcmpl-{unique()}",
            "object": "chat.completion",
            "model": "gpt-4o-external",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi!"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
        },
        "statusCode": 200,
    } | fields
    response = post(server, "/report", body, key)
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ok"}


def find(server: Server, key: str = "anything", **params: Any) -> list[dict[str, Any]]:
    response = get(server, "/logs", params, key)
    assert response.status_code == 200, response.text
    return list(response.json()["data"])


def test_a_chat_completion_is_logged_with_metadata_and_tags(server: Server) -> None:
    run = unique()
    completion = server.client().chat.completions.create(
        model=MODEL,
        messages=HELLO,  # type: ignore[arg-type]
        max_tokens=3,
        metadata={"run": run},
        extra_headers={"op-tags": json.dumps({"tag_run": run, "n": 1, "skip": None})},
    )
    [log] = find(server, **{"metadata.run": run})
    assert log["object"] == "log" and log["source"] == "chat"
    assert log["completion_id"] == completion.id
    assert log["model"] == MODEL and log["status_code"] == 200
    assert log["metadata"] == {"run": run, "tag_run": run, "n": "1"}
    assert log["tags"] == {"tag_run": run, "n": "1"}
    assert log["usage"]["completion_tokens"] == completion.usage.completion_tokens  # type: ignore[union-attr]
    assert log["response"]["choices"][0]["message"]["content"] == completion.choices[0].message.content
    assert log["request"]["metadata"] == {"run": run}
    assert get(server, f"/logs/{log['id']}").json() == log
    # the openai SDK's nested extra_query spells metadata[run]=...
    assert [x["id"] for x in find(server, **{"metadata[tag_run]": run})] == [log["id"]]

    latest = httpx.get(f"{server.url}/api/v1/local-testing-only-get-latest-logged-call", timeout=30).json()
    assert latest["metadata"] == log["metadata"] and latest["tags"] == log["tags"]
    assert latest["reqPayload"]["metadata"] == {"run": run}
    assert latest["statusCode"] == 200 and latest["cacheHit"] is False and latest["errorMessage"] is None
    assert latest["createdAt"].endswith("Z")


def test_op_log_request_false_is_not_logged(server: Server) -> None:
    run = unique()
    server.client().chat.completions.create(
        model=MODEL,
        messages=HELLO,  # type: ignore[arg-type]
        max_tokens=1,
        metadata={"run": run},
        extra_headers={"op-log-request": "false"},
    )
    assert find(server, **{"metadata.run": run}) == []


def test_report_and_update_metadata(server: Server) -> None:
    run = unique()
    t = 1_700_000_000_000
    a = {"model": "ext-a", "metadata": {"run": run}}
    report(server, requestedAt=t + 2, tags={"run": run, "prompt": "greet"}, reqPayload=a)
    report(server, requestedAt=t + 1, tags={"run": run, "prompt": "greet"}, reqPayload={"model": "ext-b"})
    report(server, requestedAt=t, tags={"run": run, "prompt": "other"}, reqPayload={"model": "ext-b"})
    logs = find(server, **{"metadata.run": run})
    assert [log["model"] for log in logs] == ["ext-a", "ext-b", "ext-b"]
    assert {log["source"] for log in logs} == {"report"}
    assert logs[0]["usage"] == {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}
    assert logs[0]["duration_ms"] == 798  # receivedAt - requestedAt

    def update(filters: list[dict[str, Any]], metadata: dict[str, Any]) -> int:
        response = post(server, "/logs/update-metadata", {"filters": filters, "metadata": metadata})
        assert response.status_code == 200, response.text
        return int(response.json()["matchedLogs"])

    mine = {"field": "metadata.run", "equals": run}
    assert update([mine, {"field": "metadata.prompt", "equals": "greet"}], {"label": "good", "prompt": None}) == 2
    assert update([mine, {"field": "model", "equals": "ext-b"}], {"label": "checked"}) == 2
    cid = logs[0]["completion_id"]
    assert update([mine, {"field": "completionId", "equals": cid}], {"label": "first"}) == 1
    after = find(server, **{"metadata.run": run})
    assert [log["metadata"] for log in after] == [
        {"run": run, "label": "first"},
        {"run": run, "label": "checked"},
        {"run": run, "prompt": "other", "label": "checked"},
    ]
    assert find(server, **{"metadata.run": run, "metadata.prompt": "greet"}) == []
    assert len(find(server, **{"metadata.run": run, "metadata.prompt": "other"})) == 1

    # the deprecated twin: tags.<key> filters, tags as values, the tags column follows
    response = post(server, "/logs/update-tags", {"filters": [{"field": "tags.run", "equals": run}], "tags": {"n": 2}})
    assert response.json() == {"matchedLogs": 3}
    for log in find(server, **{"metadata.run": run}):
        assert log["metadata"]["n"] == "2" and log["tags"]["n"] == "2"


def test_report_anthropic(server: Server) -> None:
    run = unique()
    body = {
        "requestedAt": 1_700_000_000_000,
        "reqPayload": {"model": "claude-ext", "max_tokens": 10, "messages": HELLO},
        "respPayload": {
            "id": f"msg_{run}",
            "type": "message",
            "role": "assistant",
            "model": "claude-ext",
            "content": [{"type": "text", "text": "Hello"}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 5, "output_tokens": 1},
        },
        "statusCode": 200,
        "metadata": {"run": run},
    }
    assert post(server, "/report-anthropic", body, prefix="/v1").json() == {"status": "ok"}
    [log] = find(server, **{"metadata.run": run})
    assert (log["source"], log["model"], log["completion_id"]) == ("report-anthropic", "claude-ext", f"msg_{run}")
    assert log["usage"]["prompt_tokens"] == 5


def test_pagination_over_http(server: Server) -> None:
    run = unique()
    for i in range(7):
        report(server, requestedAt=1_700_000_000_000 + i // 2, receivedAt=None, tags={"run": run})
    seen: list[str] = []
    params: dict[str, Any] = {"metadata.run": run, "limit": 3}
    while True:
        page = get(server, "/logs", params).json()
        seen += [log["id"] for log in page["data"]]
        if not page["has_more"]:
            assert page["next_cursor"] is None
            break
        params["cursor"] = page["next_cursor"]
    assert len(seen) == 7 == len(set(seen))
    assert len(find(server, **{"metadata.run": run, "from": "2023-11-14T22:13:20.002Z"})) == 3
    assert len(find(server, **{"metadata.run": run, "to": "1700000000002"})) == 4


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/report", {"requestedAt": "yesterday"}, "requestedAt"),
        ("/report", {"statusCode": True}, "statusCode"),
        ("/report", {"tags": {"a": [1]}}, "tags.a"),
        ("/report", {"reqPayload": {"metadata": {"a": 1}}}, "reqPayload.metadata"),
        ("/report", {"requested_at": 1}, "requested_at"),
        ("/report", {"requestedAt": 2, "receivedAt": 1}, "receivedAt"),
        ("/report", {"requestedAt": 1e30}, "requestedAt"),
        ("/report", {"statusCode": 2**40}, "statusCode"),
        ("/report", {"reqPayload": {"model": "m" * 201}}, "reqPayload.model"),
        ("/report", {"respPayload": {"content": "nul\u0000"}}, "respPayload"),
        ("/report-anthropic", {"metadata": {"a": 1}}, "metadata.a"),
        (
            "/logs/update-metadata",
            {"filters": [{"field": "prompt", "equals": "x"}], "metadata": {}},
            "filters[0].field",
        ),
        (
            "/logs/update-metadata",
            {"filters": [{"field": "model", "equals": None}], "metadata": {}},
            "filters[0].equals",
        ),
        ("/logs/update-metadata", {"filters": [], "metadata": {"a": 1}}, "metadata.a"),
        ("/logs/update-metadata", {"metadata": {}}, "filters"),
        ("/logs/update-tags", {"filters": [{"field": "metadata.", "equals": "x"}], "tags": {}}, "filters[0].field"),
    ],
)
def test_bad_bodies_are_400s_naming_the_field(server: Server, path: str, body: Any, param: str) -> None:
    response = post(server, path, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param, error


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"status_code": "ok"}, "status_code"),
        ({"from": "last week"}, "from"),
        ({"cursor": "garbage"}, "cursor"),
        ({"colour": "red"}, "colour"),
        ({"from": "99999999999999999999"}, "from"),
        ({"metadata.k": "nul\x00"}, "metadata.k"),
        ({"metadata.": "x"}, "metadata."),
        ([("model", "a"), ("model", "b")], "model"),
    ],
)
def test_bad_queries_are_400s(server: Server, params: Any, param: str) -> None:
    response = get(server, "/logs", params)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_unknown_log_is_a_404(server: Server) -> None:
    response = get(server, "/logs/log_doesnotexist")
    assert response.status_code == 404
    assert get(server, "/logs/log%00").status_code == 400
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_logs_on_postgresql(pg_server: Server) -> None:
    run = unique()
    report(pg_server, tags={"run": run, "n": 1.0})
    report(pg_server, tags={"run": run, "n": 2})
    change = {"filters": [{"field": "metadata.n", "equals": 1}], "metadata": {"n": None, "x": "y"}}
    response = post(pg_server, "/logs/update-metadata", change)
    assert response.json() == {"matchedLogs": 1}
    logs = find(pg_server, **{"metadata.run": run})
    assert sorted(log["metadata"].get("x", "-") + log["metadata"].get("n", "-") for log in logs) == ["-2", "y-"]
    assert [log["id"] for log in find(pg_server, **{"metadata.run": run, "metadata.x": "y"})] == [
        log["id"] for log in logs if "x" in log["metadata"]
    ]


# --- two projects, two keys -----------------------------------------------------------------------------------


def create_key(data_dir: Path, project: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "pipeserve", "keys", "create", "--project", project, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        check=True,
        env=clean_env(),
    )
    return result.stdout.strip()


@pytest.fixture(scope="module")
def two_projects(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str, str]]:
    server = start_server(tmp_path_factory.mktemp("projects"))
    try:
        yield server, create_key(server.data_dir, "alpha"), create_key(server.data_dir, "beta")
    finally:
        stop_server(server)


def test_projects_cannot_see_or_change_each_others_logs(two_projects: tuple[Server, str, str]) -> None:
    server, alpha, beta = two_projects
    report(server, alpha, tags={"owner": "alpha"})
    [log] = find(server, alpha)
    assert find(server, beta) == []
    assert get(server, f"/logs/{log['id']}", key=beta).status_code == 404
    latest = httpx.get(
        f"{server.v1}/local-testing-only-get-latest-logged-call", headers={"Authorization": f"Bearer {beta}"}
    )
    assert latest.status_code == 200 and latest.json() is None
    everything: dict[str, Any] = {"filters": [], "metadata": {"owner": None, "hacked": "yes"}}
    assert post(server, "/logs/update-metadata", everything, beta).json() == {"matchedLogs": 0}
    assert post(server, "/logs/update-tags", {"filters": [], "tags": {"owner": None}}, beta).json() == {
        "matchedLogs": 0
    }
    assert find(server, alpha)[0]["metadata"] == {"owner": "alpha"}
    # an empty filter list is every log of the caller's own project
    assert post(server, "/logs/update-metadata", {"filters": [], "metadata": {"seen": "1"}}, alpha).json() == {
        "matchedLogs": 1
    }
    assert httpx.get(f"{server.v1}/logs", timeout=30).status_code == 401


def test_report_takes_the_status_code_as_the_sdk_types_it(server: Server) -> None:
    run = uuid.uuid4().hex
    body = {"reqPayload": {"model": "gpt-4o", "metadata": {"run": run}}, "statusCode": 200.0}
    assert httpx.post(f"{server.v1}/report", json=body, timeout=30).json() == {"status": "ok"}
    [log] = httpx.get(f"{server.v1}/logs", params={"metadata.run": run}, timeout=30).json()["data"]
    assert log["status_code"] == 200
    half = httpx.post(f"{server.v1}/report", json=body | {"statusCode": 200.5}, timeout=30)
    assert half.status_code == 400 and half.json()["error"]["param"] == "statusCode"
