"""API keys: open with none, required once one exists (even one created while the server runs)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import MODEL, Server, clean_env, create_key, start_server, stop_server

HELLO = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("keyed"))
    yield server
    stop_server(server)


def test_keys_take_effect_once_created(keyed_server: Server) -> None:
    # no key yet: any bearer token is accepted
    anyone = keyed_server.client("whatever")
    assert anyone.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=1).choices  # type: ignore[arg-type]

    key = create_key(keyed_server.data_dir)
    assert key.startswith("ps-")
    assert key not in (keyed_server.data_dir / "keys.json").read_text()

    with pytest.raises(openai.AuthenticationError) as caught:
        anyone.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=1)  # type: ignore[arg-type]
    assert caught.value.status_code == 401
    assert caught.value.body["code"] == "invalid_api_key"  # type: ignore[index]

    missing = httpx.post(f"{keyed_server.v1}/chat/completions", json={"model": MODEL, "messages": HELLO}, timeout=30)
    assert missing.status_code == 401
    assert set(missing.json()["error"]) == {"message", "type", "param", "code"}
    assert httpx.get(f"{keyed_server.v1}/models", timeout=30).status_code == 401

    owner = keyed_server.client(key)
    assert owner.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=1).choices  # type: ignore[arg-type]
    assert [m.id for m in owner.models.list()] == [MODEL]
    # health stays open for load balancers
    assert httpx.get(f"{keyed_server.url}/health", timeout=30).status_code == 200


def test_refuses_a_non_loopback_address_without_a_key(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pipeserve", "serve", "--host", "0.0.0.0", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
    )
    assert result.returncode == 2
    assert "pipeserve keys create" in result.stderr


def test_keys_list_and_revoke(tmp_path: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pipeserve", "keys", *args, "--data-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            env=clean_env(),
        )

    create_key(tmp_path)
    [line] = cli("list").stdout.splitlines()
    key_id, project, name, _ = line.split("\t")
    assert project == "default"
    assert name == "test"
    assert cli("revoke", key_id).returncode == 0
    assert cli("list").stdout == ""
    assert cli("revoke", key_id).returncode == 1
