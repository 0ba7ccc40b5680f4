"""The criteria endpoints on the real server with the embedded model as judge, end to end over HTTP."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipeserve.service.criteria import CriteriaService, CriterionSpec
from pipeserve.settings import Settings
from pipeserve.store.db import open_database
from tests.conftest import MODEL, Server, start_server, stop_server

ERROR_KEYS = {"message", "type", "param", "code"}
CRITERION_KEYS = {
    "object",
    "id",
    "name",
    "version",
    "ref",
    "description",
    "instructions",
    "judge_model",
    "judge_settings",
    "created",
}
INPUT = {"messages": [{"role": "user", "content": "Say hi"}]}
OUTPUT = {"role": "assistant", "content": "Hello! How can I help you today?"}


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def api(server: Server, prefix: str = "/v1") -> httpx.Client:
    return httpx.Client(base_url=server.url + prefix, timeout=300)


def assert_error(response: httpx.Response, status: int, param: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == ERROR_KEYS
    if param is not None:
        assert error["param"] == param
    return error


def create(client: httpx.Client, name: str, **extra: Any) -> dict[str, Any]:
    body = {"name": name, "instructions": "PASS if the answer is polite; FAIL if it is rude."} | extra
    response = client.post("/criteria", json=body)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_define_version_read_and_delete(server: Server) -> None:
    name = unique("polite")
    with api(server) as client, api(server, "/api/v1") as openpipe:
        first = create(client, name, description="Tone", judge_settings={"max_tokens": 24})
        assert set(first) == CRITERION_KEYS
        assert first["object"] == "criterion" and first["id"].startswith("crit_")
        assert (first["name"], first["version"], first["ref"]) == (name, 1, f"{name}@v1")
        assert first["judge_model"] == MODEL and first["created"].endswith("Z")
        assert first["judge_settings"] == {"temperature": 0.0, "top_p": 1.0, "max_tokens": 24, "seed": None}

        error = assert_error(client.post("/criteria", json={"name": name, "instructions": "x"}), 409, "name")
        assert error["code"] == "criterion_exists"

        second = openpipe.post(f"/criteria/{name}/versions", json={"instructions": "PASS if very polite."})
        assert second.status_code == 200, second.text
        v2 = second.json()
        assert (v2["version"], v2["ref"], v2["description"]) == (2, f"{name}@v2", "Tone")
        assert v2["judge_settings"]["max_tokens"] == 24

        assert client.get(f"/criteria/{name}").json() == v2
        assert client.get(f"/criteria/{name}@v1").json() == first
        assert [c["version"] for c in client.get(f"/criteria/{name}/versions").json()["data"]] == [1, 2]
        listed = client.get("/criteria").json()
        assert listed["object"] == "list" and v2 in listed["data"] and first not in listed["data"]

        deleted = client.delete(f"/criteria/{name}")
        assert deleted.json() == {"id": v2["id"], "name": name, "object": "criterion", "deleted": True}
        assert_error(client.get(f"/criteria/{name}"), 404, "name")
        assert_error(client.get(f"/criteria/{name}/versions"), 404, "name")
        assert_error(client.delete(f"/criteria/{name}"), 404, "name")
        assert all(c["name"] != name for c in client.get("/criteria").json()["data"])


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"name": "bad name", "instructions": "x"}, "name"),
        ({"name": "ok"}, "instructions"),
        ({"name": "ok", "instructions": "x", "judge_model": "gpt-9"}, "judge_model"),
        ({"name": "ok", "instructions": "x", "judge_settings": {"temperature": "0"}}, "judge_settings.temperature"),
        ({"name": "ok", "instructions": "x", "colour": "red"}, "colour"),
    ],
)
def test_bad_definitions(server: Server, body: dict[str, Any], param: str) -> None:
    with api(server) as client:
        assert_error(client.post("/criteria", json=body), 400, param)


def test_version_errors(server: Server) -> None:
    name = unique("v")
    with api(server) as client:
        create(client, name)
        assert_error(client.post(f"/criteria/{name}/versions", json={}), 400)
        assert_error(client.post(f"/criteria/{name}/versions", json={"judge_model": "gpt-9"}), 400, "judge_model")
        assert_error(client.post(f"/criteria/{name}/versions", json={"judge_settings": {"x": 1}}), 400)
        assert_error(client.post(f"/criteria/{unique('none')}/versions", json={"instructions": "x"}), 404, "name")


def test_judge_by_name_ref_and_id(server: Server) -> None:
    name = unique("polite")
    with api(server, "/api/v1") as client:
        criterion = create(client, name, judge_settings={"max_tokens": 24})
        for criterion_id in (name, f"{name}@v1", criterion["id"]):
            response = client.post(
                "/criteria/judge", json={"criterion_id": criterion_id, "input": INPUT, "output": OUTPUT}
            )
            assert response.status_code == 200, response.text
            body = response.json()
            assert set(body) == {"score", "explanation", "usage", "criterion"}
            assert isinstance(body["score"], float) and 0.0 <= body["score"] <= 1.0
            assert isinstance(body["explanation"], str)
            usage = body["usage"]
            assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
            assert body["criterion"] == f"{name}@v1"
        # No input, tool calls and reasoning in the output: all judged.
        output = {
            "role": "assistant",
            "content": None,
            "reasoning_content": "Call the tool.",
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        }
        response = client.post("/criteria/judge", json={"criterion_id": name, "output": output})
        assert response.status_code == 200, response.text


def test_judge_errors(server: Server) -> None:
    name = unique("polite")
    with api(server) as client:
        create(client, name, judge_settings={"max_tokens": 24})
        judge = {"criterion_id": name, "input": INPUT, "output": OUTPUT}
        assert_error(client.post("/criteria/judge", json=judge | {"criterion_id": unique("none")}), 404, "criterion_id")
        assert_error(client.post("/criteria/judge", json=judge | {"criterion_id": f"{name}@v7"}), 404, "criterion_id")
        assert_error(client.post("/criteria/judge", json={"criterion_id": name, "input": INPUT}), 400, "output")
        bad = judge | {"output": {"role": "user", "content": "x"}}
        assert_error(client.post("/criteria/judge", json=bad), 400)
        assert_error(client.post("/criteria/judge", json=judge | {"extra": 1}), 400, "extra")
        # A judge that fails is this endpoint's error: a prompt beyond the judge's context.
        too_long = judge | {"output": {"role": "assistant", "content": "word " * 9000}}
        error = assert_error(client.post("/criteria/judge", json=too_long), 400)
        assert error["code"] == "judge_failed" and "context length" in error["message"]


def test_a_judge_model_no_longer_served_fails_the_judgement(server: Server) -> None:
    name = unique("gone")

    async def define() -> None:  # as if the server had been started with another [[models]] since
        db = await open_database(Settings(data_dir=server.data_dir).store_url)
        try:
            await CriteriaService(db, "gone-model").sync("default", [(name, CriterionSpec("", "x", "", {}))])
        finally:
            await db.close()

    asyncio.run(define())
    with api(server) as client:
        response = client.post("/criteria/judge", json={"criterion_id": name, "input": INPUT, "output": OUTPUT})
        error = assert_error(response, 404)
        assert error["code"] == "judge_failed" and "gone-model" in error["message"]


def test_alignment(server: Server) -> None:
    name = unique("polite")
    rows = [
        {"input": INPUT, "output": OUTPUT, "label": "PASS"},
        {"input": INPUT, "output": {"role": "assistant", "content": "Go away, idiot."}, "label": "FAIL"},
        {"output": {"role": "assistant", "content": "Thanks for asking, happy to help!"}, "label": "PASS"},
        {"input": INPUT, "output": {"role": "assistant", "content": "word " * 9000}, "label": "FAIL"},
    ]
    with api(server) as client:
        create(client, name, judge_settings={"max_tokens": 24})
        response = client.post(f"/criteria/{name}/alignment", json={"rows": rows})
        assert response.status_code == 200, response.text
        result = response.json()
        assert result["object"] == "criterion.alignment" and result["criterion"] == f"{name}@v1"
        assert (result["rows"], result["judged"], result["errors"], result["threshold"]) == (4, 3, 1, 0.5)
        confusion = result["confusion"]
        assert sum(confusion.values()) == 3
        judged = [r for r in result["results"] if r["error"] is None]
        assert [r["index"] for r in result["results"]] == [0, 1, 2, 3]
        for r in judged:
            assert 0.0 <= r["score"] <= 1.0 and r["verdict"] == ("PASS" if r["score"] >= 0.5 else "FAIL")
        predicted_fail = [r for r in judged if r["verdict"] == "FAIL"]
        true_fail = sum(r["label"] == "FAIL" for r in predicted_fail)
        assert confusion["true_fail"] == true_fail
        assert confusion["false_fail"] == len(predicted_fail) - true_fail
        expected_precision = true_fail / len(predicted_fail) if predicted_fail else None
        assert result["precision"] == expected_precision
        assert result["recall"] == true_fail / sum(r["label"] == "FAIL" for r in judged)
        failed = result["results"][3]
        assert failed["error"]["code"] == 400 and failed["score"] is None and failed["verdict"] is None

        assert_error(client.post(f"/criteria/{name}/alignment", json={"rows": []}), 400, "rows")
        assert_error(client.post(f"/criteria/{name}/alignment", json={"rows": [rows[0] | {"label": "ok"}]}), 400)
        assert_error(client.post(f"/criteria/{name}/alignment", json={"rows": rows, "threshold": 2}), 400)
        assert_error(client.post(f"/criteria/{unique('none')}/alignment", json={"rows": rows}), 404, "name")


def test_config_criteria_become_versions_at_start_up(tmp_path: Path) -> None:
    config = """
[[criteria]]
name = "polite"
instructions = "PASS if polite."
judge_settings = {max_tokens = 24}
"""
    first = start_server(tmp_path, config=config)
    try:
        with api(first) as client:
            polite = client.get("/criteria/polite").json()
            assert (polite["ref"], polite["judge_model"], polite["judge_settings"]["max_tokens"]) == (
                "polite@v1",
                MODEL,
                24,
            )
            response = client.post("/criteria/judge", json={"criterion_id": "polite", "input": INPUT, "output": OUTPUT})
            assert response.status_code == 200, response.text
    finally:
        stop_server(first)
    changed = config + '\n[[criteria]]\nname = "brief"\ninstructions = "PASS if short."\n'
    changed = changed.replace("PASS if polite.", "PASS if polite and warm.")
    second = start_server(tmp_path, config=changed)
    try:
        with api(second) as client:
            refs = {c["name"]: c["ref"] for c in client.get("/criteria").json()["data"]}
            assert refs == {"polite": "polite@v2", "brief": "brief@v1"}
            assert client.get("/criteria/polite@v1").json()["instructions"] == "PASS if polite."
    finally:
        stop_server(second)
    third = start_server(tmp_path, config=changed)  # unchanged: nothing written
    try:
        with api(third) as client:
            assert [c["version"] for c in client.get("/criteria/polite/versions").json()["data"]] == [1, 2]
    finally:
        stop_server(third)
