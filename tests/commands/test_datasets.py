"""`pipeserve datasets ...` on the store, without a server: list, create, add-from-logs, export."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import orjson
from sqlalchemy import insert

from pipeserve.settings import Settings
from pipeserve.store.db import open_database
from pipeserve.store.tables import logs
from tests.conftest import clean_env, create_pg_database, drop_pg_database
from tests.service.test_datasets import ANSWER, USER, completion, log_row


def cli(*args: str, data_dir: Path | None = None, database_url: str | None = None) -> subprocess.CompletedProcess[str]:
    store = ["--data-dir", str(data_dir)] if data_dir is not None else ["--database-url", str(database_url)]
    return subprocess.run(
        [sys.executable, "-m", "pipeserve", "datasets", *args, *store],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(),
    )


def insert_logs(url: str, rows: list[dict[str, object]]) -> None:
    async def work() -> None:
        db = await open_database(Settings(database_url=url).store_url)
        try:
            async with db.begin() as conn:
                await conn.execute(insert(logs), rows)
        finally:
            await db.close()

    asyncio.run(work())


def test_create_list_add_from_logs_and_export(tmp_path: Path) -> None:
    created = cli("create", "support chats", data_dir=tmp_path)
    assert created.returncode == 0, created.stderr
    dataset_id = created.stdout.strip()
    assert dataset_id.startswith("ds_")

    [line] = cli("list", data_dir=tmp_path).stdout.splitlines()
    listed_id, name, count, when = line.split("\t")
    assert (listed_id, name, count) == (dataset_id, "support chats", "0")
    assert when.endswith("Z")
    assert cli("list", "--project", "elsewhere", data_dir=tmp_path).stdout == ""

    rows = [
        log_row("default", {"model": "m", "messages": [USER]}, completion(ANSWER), requested_at=1_000, meta={"a": "1"}),
        log_row("default", {"model": "m", "messages": [USER]}, completion(ANSWER), requested_at=2_000, meta={"a": "2"}),
        log_row("elsewhere", {"model": "m", "messages": [USER]}, completion(ANSWER), requested_at=3_000),
    ]
    insert_logs(f"sqlite:///{tmp_path / 'pipeserve.db'}", rows)
    added = cli("add-from-logs", dataset_id, "--metadata", "a=2", "--split", "test", data_dir=tmp_path)
    assert added.returncode == 0, added.stderr
    assert added.stdout.startswith("Added 1 entries; skipped 0 logs")
    again = cli("add-from-logs", dataset_id, "--model", "m", "--since", "1970-01-01T00:00:00Z", data_dir=tmp_path)
    assert again.stdout.startswith("Added 1 entries; skipped 1 logs")  # log 2 is in the dataset already
    assert cli("list", data_dir=tmp_path).stdout.split("\t")[2] == "2"

    exported = cli("export", dataset_id, data_dir=tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout == 2 * (orjson.dumps({"messages": [USER, ANSWER]}).decode() + "\n")
    out = tmp_path / "test.jsonl"
    to_file = cli("export", dataset_id, "--split", "TEST", "-o", str(out), data_dir=tmp_path)
    assert to_file.returncode == 0 and to_file.stdout == ""
    assert out.read_bytes() == orjson.dumps({"messages": [USER, ANSWER]}) + b"\n"
    preference = cli("export", dataset_id, "--format", "preference", data_dir=tmp_path)
    assert preference.returncode == 0 and preference.stdout == ""  # no entry has a rejected message


def test_mistakes_exit_non_zero_with_a_message(tmp_path: Path) -> None:
    missing = tmp_path / "missing.jsonl"
    result = cli("export", "ds_nope", "-o", str(missing), data_dir=tmp_path)
    assert result.returncode == 1
    assert "No dataset with id 'ds_nope'" in result.stderr and "pipeserve datasets list" in result.stderr
    assert not missing.exists()
    assert cli("add-from-logs", "ds_nope", data_dir=tmp_path).returncode == 1
    dataset_id = cli("create", "d", data_dir=tmp_path).stdout.strip()
    other_project = cli("export", dataset_id, "--project", "other", data_dir=tmp_path)
    assert other_project.returncode == 1
    bad_time = cli("add-from-logs", dataset_id, "--since", "last week", data_dir=tmp_path)
    assert bad_time.returncode == 2 and "ISO 8601" in bad_time.stderr
    assert cli("create", "", data_dir=tmp_path).returncode == 2
    bad_flag = cli("add-from-logs", dataset_id, "--metadata", "novalue", data_dir=tmp_path)
    assert bad_flag.returncode == 2 and "KEY=VALUE" in bad_flag.stderr


def test_on_postgresql() -> None:
    url = asyncio.run(create_pg_database())
    try:
        dataset_id = cli("create", "pg", database_url=url).stdout.strip()
        assert cli("list", database_url=url).stdout.startswith(f"{dataset_id}\tpg\t0\t")
        assert cli("export", dataset_id, database_url=url).stdout == ""
    finally:
        asyncio.run(drop_pg_database(url))
