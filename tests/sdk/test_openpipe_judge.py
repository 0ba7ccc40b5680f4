"""The `openpipe` SDK's `get_criterion_judgement` against pipeserve, the embedded model judging."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Server
from tests.sdk.test_openpipe_sdk import sdk_python


@pytest.fixture(scope="module")
def judged(server: Server) -> dict[str, Any]:
    name = f"counts-{uuid.uuid4().hex[:8]}"
    body = {"name": name, "instructions": "PASS if the answer counts correctly.", "judge_settings": {"max_tokens": 24}}
    created = httpx.post(f"{server.v1}/criteria", json=body, timeout=30)
    assert created.status_code == 200, created.text
    result = subprocess.run(
        [str(sdk_python()), str(Path(__file__).with_name("openpipe_judge_flow.py")), f"{server.url}/api/v1", name],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    return {"name": name, **json.loads(result.stdout.strip().splitlines()[-1])}


def test_get_criterion_judgement(judged: dict[str, Any]) -> None:
    judgement = judged["judgement"]
    assert judgement["score_type"] == "float" and 0.0 <= judgement["score"] <= 1.0
    assert isinstance(judgement["explanation"], str)
    assert judgement["total_tokens"] > 0
    assert 0.0 <= judged["with_tools"] <= 1.0


def test_an_unknown_criterion_is_a_404(judged: dict[str, Any]) -> None:
    missing = judged["missing"]
    assert missing["status"] == 404
    assert missing["body"]["error"]["param"] == "criterion_id"


def test_a_chat_completion_with_criteria_through_the_sdk(judged: dict[str, Any]) -> None:
    chat = judged["chat"]
    name = judged["name"]
    choices = chat["choices"]
    assert [c["index"] for c in choices] == [0, 1]
    scores = []
    for choice in choices:
        [(key, result)] = choice["criteria_results"].items()
        assert key == name
        assert result["status"] == "success" and 0 <= result["score"] <= 1
        scores.append(result["score"])
    assert scores == sorted(scores, reverse=True)  # Best-of-N: best first
    [usage] = chat["usage_criteria"].values()
    assert usage["total_tokens"] > 0
