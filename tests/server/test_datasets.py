"""The datasets endpoints on the real server: OpenPipe's shapes, our extensions, errors, and projects."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import MODEL, Server, create_key, start_server, stop_server

USER = {"role": "user", "content": "Say hi"}
ANSWER = {"role": "assistant", "content": "hi"}
ERROR_KEYS = {"message", "type", "param", "code"}


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def api(server: Server, key: str | None = None, prefix: str = "/v1") -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=server.url + prefix, headers=headers, timeout=120)


def assert_error(response: httpx.Response, status: int, param: str | None = None) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == ERROR_KEYS
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param
    return str(error["message"])


def create(http: httpx.Client, name: str) -> dict[str, Any]:
    response = http.post("/datasets", json={"name": name})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_create_list_delete_with_openpipe_shapes(server: Server) -> None:
    # OpenPipe's SDK calls /api/v1; the openai-style /v1 serves the same API.
    with api(server, prefix="/api/v1") as http:
        name = unique("shapes")
        dataset = create(http, name)
        assert set(dataset) == {"object", "id", "name", "created", "updated", "dataset_entry_count", "fine_tune_count"}
        assert dataset["object"] == "dataset" and dataset["name"] == name
        assert dataset["dataset_entry_count"] == 0 and dataset["fine_tune_count"] == 0
        assert dataset["created"].endswith("Z")

        listed = http.get("/datasets").json()
        assert listed["object"] == "list"
        assert dataset in listed["data"]
        assert http.get(f"/datasets/{dataset['id']}").json() == dataset

        deleted = http.delete(f"/datasets/{dataset['id']}")
        assert deleted.json() == {"id": dataset["id"], "object": "dataset", "deleted": True}
        assert dataset["id"] not in [d["id"] for d in http.get("/datasets").json()["data"]]
        assert_error(http.delete(f"/datasets/{dataset['id']}"), 404, "dataset_id")
        assert_error(http.get("/datasets/ds_nope"), 404)
        assert_error(http.post("/datasets/ds_nope/entries", json={"entries": [{"messages": [USER, ANSWER]}]}), 404)
        assert_error(http.get("/datasets/ds_nope/export"), 404)


def test_bad_bodies_are_400s(server: Server) -> None:
    with api(server) as http:
        assert_error(http.post("/datasets", json={}), 400, "name")
        assert_error(http.post("/datasets", json={"name": ""}), 400, "name")
        assert_error(http.post("/datasets", json={"name": 3}), 400, "name")
        assert_error(http.post("/datasets", content=b"{nope", headers={"content-type": "application/json"}), 400)
        dataset_id = create(http, unique("bad"))["id"]
        entries = f"/datasets/{dataset_id}/entries"
        assert_error(http.post(entries, json={}), 400, "entries")
        assert_error(http.post(entries, json={"entries": {"messages": []}}), 400, "entries")
        assert_error(http.post(entries, json=[{"messages": [USER, ANSWER]}]), 400)
        assert_error(http.post(entries, json={"entries": [], "extra": 1}), 400, "extra")
        from_logs = f"/datasets/{dataset_id}/entries/from-logs"
        assert_error(http.post(from_logs, json={"status_code": 404}), 400, "status_code")
        assert_error(http.post(from_logs, json={"from": "last tuesday"}), 400, "from")
        assert_error(http.post(from_logs, json={"limit": 0}), 400, "limit")
        assert_error(http.post(from_logs, json={"metadata": {"k": ["list"]}}), 400)
        assert_error(http.get(f"/datasets/{dataset_id}/export?split=VALID"), 400, "split")
        assert_error(http.get(f"/datasets/{dataset_id}/export?format=csv"), 400, "format")
        assert_error(http.get(f"/datasets/{dataset_id}/entries?limit=x"), 400, "limit")
        assert_error(http.get(f"/datasets/{dataset_id}/entries", params={"cursor": "%%%"}), 400, "cursor")


def test_entries_errors_splits_and_export(server: Server) -> None:
    with api(server) as http:
        dataset_id = create(http, unique("entries"))["id"]
        rejected = {"role": "assistant", "content": "go away"}
        response = http.post(
            f"/datasets/{dataset_id}/entries",
            json={
                "entries": [
                    {"messages": [USER, ANSWER], "split": "TRAIN"},
                    {"messages": [USER]},
                    {"messages": [USER, ANSWER], "split": "TEST", "rejected_message": rejected},
                    {"messages": [{"role": "user"}, ANSWER]},
                ]
            },
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["object"] == "dataset.entries.creation"
        assert body["entries_created"] == 2
        assert [(e["object"], e["entry_index"]) for e in body["errors"]["data"]] == [
            ("dataset.entries.creation.error", 1),
            ("dataset.entries.creation.error", 3),
        ]
        assert "assistant" in body["errors"]["data"][0]["message"]
        assert "messages[0].content" in body["errors"]["data"][1]["message"]
        assert http.get(f"/datasets/{dataset_id}").json()["dataset_entry_count"] == 2

        page = http.get(f"/datasets/{dataset_id}/entries", params={"limit": 1}).json()
        assert page["object"] == "list" and page["has_more"] is True
        assert page["data"][0]["object"] == "dataset.entry" and page["data"][0]["split"] == "TRAIN"
        rest = http.get(f"/datasets/{dataset_id}/entries", params={"cursor": page["next_cursor"]}).json()
        assert rest["has_more"] is False and rest["next_cursor"] is None
        assert rest["data"][0]["rejected_message"] == rejected

        exported = http.get(f"/datasets/{dataset_id}/export")
        assert exported.status_code == 200
        assert exported.headers["content-type"].startswith("application/jsonl")
        assert exported.content == b'{"messages":[USER,ANSWER]}\n{"messages":[USER,ANSWER]}\n'.replace(
            b"USER", orjson.dumps(USER)
        ).replace(b"ANSWER", orjson.dumps(ANSWER))
        test_only = http.get(f"/datasets/{dataset_id}/export", params={"split": "test", "format": "preference"})
        assert [orjson.loads(line) for line in test_only.content.splitlines()] == [
            {"input": {"messages": [USER]}, "preferred_output": [ANSWER], "non_preferred_output": [rejected]}
        ]
        assert (
            http.get(f"/datasets/{dataset_id}/export", params={"split": "TRAIN", "format": "preference"}).content == b""
        )


def test_entries_from_the_servers_own_logs(server: Server) -> None:
    tag = unique("from-logs")
    client = server.client()
    answer = client.chat.completions.create(
        model=MODEL, messages=[USER], max_tokens=3, temperature=0, metadata={"run": tag}
    )
    with api(server) as http:
        dataset_id = create(http, unique("from-logs"))["id"]
        url = f"/datasets/{dataset_id}/entries/from-logs"
        body = http.post(url, json={"metadata": {"run": tag}, "split": "TRAIN"}).json()
        assert body == {
            "object": "dataset.entries.creation",
            "entries_created": 1,
            "errors": {"object": "list", "data": []},
            "skipped": 0,
        }
        [entry] = http.get(f"/datasets/{dataset_id}/entries").json()["data"]
        assert entry["messages"] == [USER, {"role": "assistant", "content": answer.choices[0].message.content}]
        assert entry["metadata"] == {"run": tag} and entry["split"] == "TRAIN" and entry["log_id"]
        assert http.post(url, json={"metadata": {"run": tag}}).json()["skipped"] == 1


def test_on_postgresql(pg_server: Server) -> None:
    with api(pg_server) as http:
        dataset_id = create(http, unique("pg"))["id"]
        body = http.post(
            f"/datasets/{dataset_id}/entries",
            json={"entries": [{"messages": [USER, ANSWER], "rejected_message": {"content": "no"}}, {"messages": []}]},
        ).json()
        assert body["entries_created"] == 1 and [e["entry_index"] for e in body["errors"]["data"]] == [0 + 1]
        lines = http.get(f"/datasets/{dataset_id}/export", params={"format": "preference"}).content.splitlines()
        assert [orjson.loads(line) for line in lines] == [
            {
                "input": {"messages": [USER]},
                "preferred_output": [ANSWER],
                "non_preferred_output": [{"role": "assistant", "content": "no"}],
            }
        ]
        assert http.delete(f"/datasets/{dataset_id}").json()["deleted"] is True
        assert_error(http.get(f"/datasets/{dataset_id}/entries"), 404)


# --- projects --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("datasets-keyed"))
    yield server
    stop_server(server)


def test_a_project_cannot_see_or_change_anothers_datasets(keyed_server: Server) -> None:
    key_a = create_key(keyed_server.data_dir, "alpha")
    key_b = create_key(keyed_server.data_dir, "beta")
    with api(keyed_server, key_a) as a, api(keyed_server, key_b) as b, api(keyed_server) as nobody:
        dataset_id = create(a, "alpha's")["id"]
        assert (
            a.post(f"/datasets/{dataset_id}/entries", json={"entries": [{"messages": [USER, ANSWER]}]}).json()[
                "entries_created"
            ]
            == 1
        )

        assert b.get("/datasets").json() == {"object": "list", "data": []}
        assert_error(b.get(f"/datasets/{dataset_id}"), 404)
        assert_error(b.delete(f"/datasets/{dataset_id}"), 404)
        assert_error(b.post(f"/datasets/{dataset_id}/entries", json={"entries": [{"messages": [USER, ANSWER]}]}), 404)
        assert_error(b.post(f"/datasets/{dataset_id}/entries/from-logs", json={}), 404)
        assert_error(b.get(f"/datasets/{dataset_id}/entries"), 404)
        assert_error(b.get(f"/datasets/{dataset_id}/export"), 404)
        assert nobody.get("/datasets").status_code == 401

        [mine] = a.get("/datasets").json()["data"]
        assert mine["id"] == dataset_id and mine["dataset_entry_count"] == 1
