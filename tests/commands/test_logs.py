"""`pipeserve logs list|show|export` against the store directly, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from pipeserve.store.db import Database
from tests.conftest import clean_env
from tests.service.test_logs import T0
from tests.service.test_logs import insert as insert_log


async def insert(db: Database, project: str, **extra: Any) -> str:
    """A log as the service tests insert it, with usage and an answer to preview."""
    answer = {"choices": [{"message": {"role": "assistant", "content": "Hello\nthere, friend"}}]}
    defaults: dict[str, Any] = {"prompt_tokens": 12, "completion_tokens": 3, "resp_payload": answer}
    return await insert_log(db, project, **(defaults | extra))


def cli(db: Database, project: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeserve", "logs", *args, "--database-url", db.url, "--project", project],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(),
    )


async def test_list_show_and_export(database: Database, project: str, tmp_path: Path) -> None:
    old = await insert(database, project, requested_at=T0, meta={"env": "prod"})
    new = await insert(database, project, requested_at=T0 + 1000, model="m2", meta={"env": "dev"}, status_code=500)
    await insert(database, project + "-other", requested_at=T0 + 2000)

    listed = cli(database, project, "list")
    assert listed.returncode == 0, listed.stderr
    lines = [line.split("\t") for line in listed.stdout.splitlines()]
    assert [line[0] for line in lines] == [new, old]
    assert lines[1] == [old, "2023-11-14T22:13:20.000Z", "m1", "200", "12+3", "Hello there, friend"]

    def ids(*args: str) -> list[str]:
        result = cli(database, project, "list", *args)
        assert result.returncode == 0, result.stderr
        return [line.split("\t")[0] for line in result.stdout.splitlines()]

    assert ids("--metadata", "env=prod") == [old]
    assert ids("--model", "m2") == [new]
    assert ids("--status", "200") == [old]
    assert ids("--since", "2023-11-14T22:13:21Z") == [new]
    assert ids("--limit", "1") == [new]

    shown = cli(database, project, "show", old)
    assert shown.returncode == 0, shown.stderr
    log = json.loads(shown.stdout)
    assert log["id"] == old and log["metadata"] == {"env": "prod"} and log["usage"]["total_tokens"] == 15

    out = tmp_path / "logs.jsonl"
    exported = cli(database, project, "export", "-o", str(out))
    assert exported.returncode == 0, exported.stderr
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == [new, old]
    piped = cli(database, project, "export", "--metadata", "env=dev")
    assert [json.loads(line) for line in piped.stdout.splitlines()] == [json.loads(out.read_text().splitlines()[0])]


async def test_errors_are_clear(database: Database, project: str) -> None:
    missing = cli(database, project, "show", "log_nope")
    assert missing.returncode == 1 and "pipeserve logs list" in missing.stderr
    other = await insert(database, project + "-other")
    assert cli(database, project, "show", other).returncode == 1  # another project's log is not there
    bad = cli(database, project, "list", "--metadata", "novalue")
    assert bad.returncode == 2 and "KEY=VALUE" in bad.stderr
    bad_time = cli(database, project, "list", "--since", "last tuesday")
    assert bad_time.returncode == 2 and "ISO 8601" in bad_time.stderr
