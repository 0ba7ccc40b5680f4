"""Criteria on chat completions (`op-criteria`): results per choice, judge usage, Best-of-N, streams, logs."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest

from tests.conftest import MODEL, Server

ASK = [{"role": "user", "content": "What is the capital of France?"}]


def criterion(server: Server, **extra: Any) -> str:
    name = f"c-{uuid.uuid4().hex[:10]}"
    body = {
        "name": name,
        "instructions": "PASS if the answer names a city; FAIL otherwise.",
        "judge_settings": {"max_tokens": 24},  # a short explanation keeps the suite quick; the verdict comes first
    } | extra
    response = httpx.post(f"{server.v1}/criteria", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return name


def chat(server: Server, names: list[str], **body: Any) -> httpx.Response:
    payload = {"model": MODEL, "messages": ASK, "max_tokens": 12} | body
    headers = {"op-criteria": json.dumps(names)}
    return httpx.post(f"{server.v1}/chat/completions", json=payload, headers=headers, timeout=300)


def assert_success(result: dict[str, Any]) -> None:
    assert result["status"] == "success"
    assert 0.0 <= result["score"] <= 1.0
    assert isinstance(result["explanation"], str)
    assert set(result) == {"status", "score", "explanation"}


def test_every_choice_gets_results_and_usage_counts_the_judges(server: Server) -> None:
    first, second = criterion(server), criterion(server, instructions="PASS if the answer is polite.")
    completion = chat(server, [first, second]).json()
    [choice] = completion["choices"]
    assert set(choice["criteria_results"]) == {first, second}
    for result in choice["criteria_results"].values():
        assert_success(result)
    for name in (first, second):
        usage = completion["usage"]["criteria"][name]
        assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_without_criteria_the_results_are_empty(server: Server) -> None:
    completion = httpx.post(
        f"{server.v1}/chat/completions", json={"model": MODEL, "messages": ASK, "max_tokens": 2}, timeout=60
    ).json()
    assert completion["choices"][0]["criteria_results"] == {}
    assert completion["usage"]["criteria"] == {}


def test_an_unknown_criterion_is_a_400_before_any_generation(server: Server) -> None:
    name = f"missing-{uuid.uuid4().hex[:6]}"
    response = chat(server, [name])
    assert response.status_code == 400
    assert response.json()["error"]["message"] == f"Criterion {name} not found"


def test_an_unknown_version_of_a_criterion_is_named_as_openpipe_names_it(server: Server) -> None:
    name = criterion(server)
    response = chat(server, [f"{name}@v7"])
    assert response.status_code == 400
    assert response.json()["error"]["message"] == f"Criterion version v7 not found for criterion {name}"
    known = criterion(server)
    assert chat(server, [f"{known}@v9"]).status_code == 400


@pytest.mark.parametrize("header", ["relevance", '{"a": 1}', "[1]", "[nope"])
def test_a_malformed_header_is_a_400(server: Server, header: str) -> None:
    payload = {"model": MODEL, "messages": ASK, "max_tokens": 1}
    response = httpx.post(f"{server.v1}/chat/completions", json=payload, headers={"op-criteria": header}, timeout=30)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "op-criteria"


def test_best_of_n_orders_choices_by_mean_score(server: Server) -> None:
    first, second = criterion(server), criterion(server, instructions="PASS if the answer is one word.")
    completion = chat(server, [first, second], n=4, temperature=1.2, seed=7).json()
    choices = completion["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2, 3]

    def mean(choice: dict[str, Any]) -> float:
        results = choice["criteria_results"].values()
        return sum(r["score"] if r["status"] == "success" else 0.0 for r in results) / len(results)

    means = [mean(c) for c in choices]
    assert means == sorted(means, reverse=True)


def test_a_version_pins_the_judge_and_the_log_records_it(server: Server) -> None:
    name = criterion(server)
    response = httpx.post(
        f"{server.v1}/criteria/{name}/versions", json={"instructions": "PASS if the answer is short."}, timeout=30
    )
    assert response.json()["version"] == 2
    run = uuid.uuid4().hex
    chat(server, [f"{name}@v1"], metadata={"run": run})
    [log] = httpx.get(f"{server.v1}/logs", params={"metadata.run": run}, timeout=30).json()["data"]
    assert name in log["response"]["choices"][0]["criteria_results"]
    found = httpx.get(f"{server.url}/v1/logs?criteria.{name}.score>=0&metadata.run={run}", timeout=30).json()
    assert [entry["id"] for entry in found["data"]] == [log["id"]]


def test_logs_are_queryable_by_score(server: Server) -> None:
    name = criterion(server)
    run = uuid.uuid4().hex
    completion = chat(server, [name], metadata={"run": run}).json()
    score = completion["choices"][0]["criteria_results"][name]["score"]

    def found(condition: str) -> int:
        url = f"{server.v1}/logs?metadata.run={run}&{condition}"
        response = httpx.get(url, timeout=30)
        assert response.status_code == 200, response.text
        return len(response.json()["data"])

    assert found(f"criteria.{name}.score<={score}") == 1
    assert found(f"criteria.{name}.score>{score}") == 0
    assert found(f"criteria.{name}.score%3C{min(score + 0.01, 1.01)}") == 1  # URL-encoded '<'
    assert found(f"criteria.{name}.status=success") == 1
    assert found(f"criteria.{name}.status=error") == 0
    assert found("criteria.other-name.score>=0") == 0
    assert httpx.get(f"{server.v1}/logs?criteria.{name}.score<abc", timeout=30).status_code == 400


def test_a_stream_sends_results_in_a_final_chunk_before_usage(server: Server) -> None:
    name = criterion(server)
    response = chat(server, [name], stream=True, n=2, stream_options={"include_usage": True})
    lines = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(line) for line in lines[:-1]]
    usage_chunk, results_chunk = chunks[-1], chunks[-2]
    assert usage_chunk["choices"] == [] and set(usage_chunk["usage"]["criteria"]) == {name}
    assert sorted(c["index"] for c in results_chunk["choices"]) == [0, 1]
    for choice in results_chunk["choices"]:
        assert choice["delta"] == {} and choice["finish_reason"] is None
        assert_success(choice["criteria_results"][name])
    # the content came before, finished, and no other chunk carries results
    assert all("criteria_results" not in c for chunk in chunks[:-2] for c in chunk["choices"])


def test_the_openai_sdk_reads_a_judged_stream(server: Server) -> None:
    name = criterion(server)
    client = server.client()
    with client.chat.completions.stream(
        model=MODEL,
        messages=ASK,
        max_tokens=6,
        extra_headers={"op-criteria": json.dumps([name])},  # type: ignore[arg-type]
    ) as stream:
        for _ in stream:
            pass
        final = stream.current_completion_snapshot
    assert final.choices[0].message.content


def test_a_judge_failure_is_an_error_entry_not_a_failed_request(server: Server) -> None:
    window = httpx.get(f"{server.v1}/models/{MODEL}", timeout=30).json()["context_window"]
    name = criterion(server)
    # A prompt that just fits the model's window (the chat template adds a few dozen tokens, the answer 2): the
    # judge's prompt (its instructions + this + the answer) can't.
    long_message = "word " * (window - 80)
    completion = chat(server, [name], messages=[{"role": "user", "content": long_message}], max_tokens=2).json()
    result = completion["choices"][0]["criteria_results"][name]
    assert result["status"] == "error"
    assert set(result) == {"status", "errorCode", "errorMessage"}
    assert result["errorCode"] == 400 and result["errorMessage"]


def test_a_cache_hit_is_judged_again(server: Server) -> None:
    name = criterion(server)
    question = [{"role": "user", "content": f"Name a city {uuid.uuid4().hex}"}]
    payload = {"model": MODEL, "messages": question, "max_tokens": 6}
    stored = httpx.post(
        f"{server.v1}/chat/completions", json=payload, headers={"op-cache": "writeOnly"}, timeout=60
    ).json()
    headers = {"op-cache": "readOnly", "op-criteria": json.dumps([name])}
    hit = httpx.post(f"{server.v1}/chat/completions", json=payload, headers=headers, timeout=300).json()
    assert hit["id"] == stored["id"]
    assert_success(hit["choices"][0]["criteria_results"][name])
