"""The official `openpipe` SDK (5.0.0) works against pipeserve, changing only its base URL.

The SDK caps `openai` below the version the rest of the suite uses, so it runs in its own virtualenv
(made once under build/, from the package index) and reports what it saw as JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import MODEL, Server

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / "build" / "openpipe-sdk-venv"
SDK = "openpipe==5.0.0"


def sdk_python() -> Path:
    python = VENV / "bin" / "python"
    probe = [str(python), "-c", "import importlib.metadata as m; assert m.version('openpipe') == '5.0.0'"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", SDK],
        capture_output=True,
        text=True,
    )
    if install.returncode != 0:
        pytest.fail(f"could not install {SDK} into {VENV} (the package index must be reachable):\n{install.stderr}")
    return python


@pytest.fixture(scope="module")
def flow(server: Server) -> dict[str, Any]:
    run = uuid.uuid4().hex
    result = subprocess.run(
        [str(sdk_python()), str(Path(__file__).with_name("openpipe_flow.py")), f"{server.url}/api/v1", run, MODEL],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    return {"run": run, **json.loads(result.stdout.strip().splitlines()[-1])}


def logs(server: Server, **query: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{server.v1}/logs", params=query | {"limit": "100"}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["data"]  # type: ignore[no-any-return]


def test_a_completion_is_logged_with_the_sdk_tags_and_metadata(flow: dict[str, Any]) -> None:
    assert flow["direct_content"]
    latest = flow["latest"]
    assert latest["respPayload"]["id"] == flow["direct_id"]
    assert latest["statusCode"] == 200 and latest["cacheHit"] is False
    assert latest["metadata"]["run"] == flow["run"]
    assert latest["metadata"]["prompt_id"] == "greeting"
    assert latest["metadata"]["kind"] == "direct"  # the body's metadata wins over a tag of the same name
    assert latest["metadata"]["$sdk"] == "python"  # what the SDK adds to every call's tags
    assert latest["tags"]["prompt_id"] == "greeting"


def test_update_log_metadata_and_tags(server: Server, flow: dict[str, Any]) -> None:
    assert flow["updated"] == 1
    [direct] = [
        log for log in logs(server, **{"metadata.run": flow["run"]}) if log["completion_id"] == flow["direct_id"]
    ]
    assert direct["metadata"]["stage"] == "reviewed"
    assert "kind" not in direct["metadata"]  # null deletes
    assert flow["tagged"] >= 1
    assert direct["metadata"]["batch"] == "7"


def test_other_models_are_reported(server: Server, flow: dict[str, Any]) -> None:
    assert flow["reported"] == "ok"
    reported = logs(server, **{"metadata.run": flow["run"], "model": "gpt-4o"})
    assert [log["source"] for log in reported] == ["report"]
    assert reported[0]["usage"]["prompt_tokens"] == 9
    plain = [log for log in logs(server, **{"metadata.kind": "reported"}) if log["completion_id"] == flow["plain_id"]]
    # the wrapper reports what the plain OpenAI client got (the server also logged the call itself, untagged)
    assert [log["source"] for log in plain] == ["report"]


def test_the_cache_flow(flow: dict[str, Any]) -> None:
    first, again = flow["cache"]
    assert first == again
    assert flow["cache_latest_hit"] is True


def test_datasets(flow: dict[str, Any]) -> None:
    assert flow["entries_created"] == 2
    assert flow["entry_errors"] == [2]
    [(_, name, count)] = flow["listed"]
    assert name == f"sdk-{flow['run']}" and count == 2
    assert flow["deleted"][1] is True
    assert flow["listed_after"] == []
