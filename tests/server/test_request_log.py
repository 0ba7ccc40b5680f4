"""Request logging on chat completions: what is logged, when, and that it is committed before the answer ends."""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import MODEL, Server, start_server, stop_server

HELLO = [{"role": "user", "content": "Say hello"}]
PRICES = '[prices."SmolLM2-135M-Instruct"]\nprompt = 1.5\ncompletion = 4.0\n'


@pytest.fixture(scope="module")
def priced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("priced"), config=PRICES)
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def quiet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server that logs only what asks to be logged."""
    server = start_server(tmp_path_factory.mktemp("quiet"), config="log_requests = false\n")
    yield server
    stop_server(server)


def logs(server: Server, **where: Any) -> list[dict[str, Any]]:
    """The server's log rows, read from its SQLite file right away (no waiting: they must be committed)."""
    conn = sqlite3.connect(server.data_dir / "pipeserve.db")
    conn.row_factory = sqlite3.Row
    try:
        clauses = " AND ".join(f"{k} = ?" for k in where) or "1 = 1"
        rows = conn.execute(f"SELECT * FROM logs WHERE {clauses} ORDER BY requested_at", tuple(where.values()))
        out = []
        for row in rows:
            item = dict(row)
            for column in ("req_payload", "resp_payload", "meta", "tags"):
                if item[column] is not None:
                    item[column] = json.loads(item[column])
            out.append(item)
        return out
    finally:
        conn.close()


def marker() -> str:
    return uuid.uuid4().hex


def logged_with(server: Server, key: str, value: str) -> list[dict[str, Any]]:
    return [row for row in logs(server) if row["meta"].get(key) == value]


def test_a_completion_is_logged_with_metadata_tags_usage_and_cost(priced: Server) -> None:
    run = marker()
    raw = priced.client().chat.completions.with_raw_response.create(
        model=MODEL,
        messages=HELLO,  # type: ignore[arg-type]
        max_tokens=5,
        metadata={"run": run, "shared": "body"},
        extra_headers={"op-tags": json.dumps({"prompt_id": "greet", "n": 3, "flag": True, "shared": "tag"})},
    )
    completion = raw.parse()
    [row] = logged_with(priced, "run", run)
    assert row["source"] == "chat"
    assert row["completion_id"] == completion.id
    assert row["model"] == MODEL
    assert row["status_code"] == 200 and row["error_message"] is None
    assert row["meta"] == {"run": run, "shared": "body", "prompt_id": "greet", "n": "3", "flag": "true"}
    assert row["tags"] == {"prompt_id": "greet", "n": "3", "flag": "true", "shared": "tag"}
    assert row["req_payload"]["messages"] == HELLO and row["req_payload"]["max_tokens"] == 5
    assert row["resp_payload"] == raw.http_response.json()
    assert completion.usage is not None
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        completion.usage.prompt_tokens,
        completion.usage.completion_tokens,
    )
    expected = (completion.usage.prompt_tokens * 1.5 + completion.usage.completion_tokens * 4.0) / 1e6
    assert row["cost"] == pytest.approx(expected)
    assert row["cache_hit"] == 0
    assert 0 < row["ttft_ms"] <= row["duration_ms"]
    assert row["requested_at"] <= row["received_at"]


def test_a_stream_is_logged_as_the_completion_the_sdk_assembles(priced: Server) -> None:
    run = marker()
    with priced.client().chat.completions.stream(
        model=MODEL,
        messages=HELLO,  # type: ignore[arg-type]
        max_tokens=8,
        metadata={"run": run},
        logprobs=True,
        top_logprobs=2,
    ) as stream:
        for _ in stream:
            pass
        final = stream.current_completion_snapshot  # what the SDK assembled (get_final_completion refuses 'length')
    [row] = logged_with(priced, "run", run)
    logged = row["resp_payload"]
    assert logged["id"] == final.id
    assert logged["usage"] is None  # no usage chunk was asked for, so the SDK has none either
    choice = final.choices[0]
    assert logged["choices"][0]["message"]["content"] == choice.message.content
    assert logged["choices"][0]["finish_reason"] == choice.finish_reason
    assert choice.logprobs is not None and choice.logprobs.content is not None
    assert [t["token"] for t in logged["choices"][0]["logprobs"]["content"]] == [
        t.token for t in choice.logprobs.content
    ]
    assert row["completion_tokens"] == len(choice.logprobs.content)
    assert row["ttft_ms"] < row["duration_ms"]


def test_a_stream_with_usage_logs_the_usage(priced: Server) -> None:
    run = marker()
    with priced.client().chat.completions.stream(
        model=MODEL,
        messages=HELLO,  # type: ignore[arg-type]
        max_tokens=4,
        metadata={"run": run},
        stream_options={"include_usage": True},
    ) as stream:
        for _ in stream:
            pass
        final = stream.current_completion_snapshot  # what the SDK assembled (get_final_completion refuses 'length')
    [row] = logged_with(priced, "run", run)
    assert final.usage is not None
    assert row["resp_payload"]["usage"]["completion_tokens"] == final.usage.completion_tokens


@pytest.mark.parametrize(
    ("header", "store", "logged"),
    [
        (None, None, True),  # the server's default
        ("false", None, False),
        (None, False, False),
        ("true", False, True),  # the header wins over the body
        ("false", True, False),
    ],
)
def test_the_logging_rule(priced: Server, header: str | None, store: bool | None, logged: bool) -> None:
    run = marker()
    body: dict[str, Any] = {"model": MODEL, "messages": HELLO, "max_tokens": 1, "metadata": {"run": run}}
    if store is not None:
        body["store"] = store
    headers = {"op-log-request": header} if header is not None else {}
    assert httpx.post(f"{priced.v1}/chat/completions", json=body, headers=headers, timeout=60).status_code == 200
    assert len(logged_with(priced, "run", run)) == int(logged)


@pytest.mark.parametrize(("header", "store", "logged"), [(None, None, False), (None, True, True), ("true", None, True)])
def test_log_requests_false_logs_only_what_asks(
    quiet: Server, header: str | None, store: bool | None, logged: bool
) -> None:
    run = marker()
    body: dict[str, Any] = {"model": MODEL, "messages": HELLO, "max_tokens": 1, "metadata": {"run": run}}
    if store is not None:
        body["store"] = store
    headers = {"op-log-request": header} if header is not None else {}
    assert httpx.post(f"{quiet.v1}/chat/completions", json=body, headers=headers, timeout=60).status_code == 200
    assert len(logged_with(quiet, "run", run)) == int(logged)


def test_a_rejected_request_is_logged_with_its_status_and_message(priced: Server) -> None:
    run = marker()
    body = {"model": MODEL, "messages": HELLO, "temperature": 7, "metadata": {"run": run}}
    response = httpx.post(f"{priced.v1}/chat/completions", json=body, timeout=60)
    assert response.status_code == 400
    [row] = logged_with(priced, "run", run)
    assert row["status_code"] == 400
    assert row["error_message"] == response.json()["error"]["message"]
    assert row["resp_payload"] is None
    assert row["req_payload"]["temperature"] == 7


@pytest.mark.parametrize(
    ("header", "value"), [("op-log-request", "maybe"), ("op-tags", "[1, 2]"), ("op-tags", "{nope"), ("op-cache", "x")]
)
def test_bad_op_headers_are_400s(priced: Server, header: str, value: str) -> None:
    body = {"model": MODEL, "messages": HELLO, "max_tokens": 1}
    response = httpx.post(f"{priced.v1}/chat/completions", json=body, headers={header: value}, timeout=60)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == header


def test_a_price_covers_the_models_aliases(priced: Server) -> None:
    run = marker()
    body = {"model": "openpipe:smollm2-135m-instruct", "messages": HELLO, "max_tokens": 2, "metadata": {"run": run}}
    assert httpx.post(f"{priced.v1}/chat/completions", json=body, timeout=60).status_code == 200
    [row] = logged_with(priced, "run", run)
    assert row["model"] == "openpipe:smollm2-135m-instruct"
    assert row["cost"] == pytest.approx((row["prompt_tokens"] * 1.5 + row["completion_tokens"] * 4.0) / 1e6)


def test_a_bad_log_header_on_a_quiet_server_is_refused_and_not_logged(quiet: Server) -> None:
    run = marker()
    body = {"model": MODEL, "messages": HELLO, "max_tokens": 1, "metadata": {"run": run}}
    response = httpx.post(f"{quiet.v1}/chat/completions", json=body, headers={"op-log-request": "maybe"}, timeout=60)
    assert response.status_code == 400
    assert logged_with(quiet, "run", run) == []


def test_chat_logging_on_postgresql(pg_server: Server) -> None:
    run = marker()
    with pg_server.client().chat.completions.stream(
        model=MODEL,
        messages=HELLO,  # type: ignore[arg-type]
        max_tokens=4,
        metadata={"run": run},
        extra_headers={"op-tags": json.dumps({"env": "pg"})},
    ) as stream:
        for _ in stream:
            pass
        final = stream.current_completion_snapshot
    [log] = httpx.get(f"{pg_server.v1}/logs", params={"metadata.run": run}, timeout=30).json()["data"]
    assert log["completion_id"] == final.id
    assert log["metadata"] == {"run": run, "env": "pg"}
    assert log["response"]["choices"][0]["message"]["content"] == final.choices[0].message.content
