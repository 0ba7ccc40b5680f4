"""Migration 0003 on a SQLite store that older versions wrote: every row stays, and reads back."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext

from pipeserve.service import logs as service
from pipeserve.store.db import MIGRATIONS, open_database
from pipeserve.store.tables import metadata

# (JSON text as the API wrote it, what SQLite's NUMERIC affinity kept, what reads back after 0003)
PAYLOADS: list[tuple[str, str, Any]] = [
    ("5", "integer", 5),
    ("1.0", "integer", 1),
    ("0.30000000000000004", "real", 0.30000000000000004),  # 15 digits if SQLite turned it into text itself
    ("18446744073709551615", "real", 18446744073709551615.0),  # already rounded by the old column
    ('"text"', "text", "text"),
    ('{"a": [1, 2.5, null]}', "text", {"a": [1, 2.5, None]}),
    ("null", "text", None),
]


def _schema_at(path: Path, revision: str) -> None:
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = conn
        command.upgrade(config, revision)
    engine.dispose()


def _old_rows(path: Path) -> None:
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("PRAGMA foreign_keys=ON")
        for index, (payload, _, _) in enumerate(PAYLOADS):
            conn.execute(
                "INSERT INTO logs (id, project, source, requested_at, cache_hit, req_payload, meta, tags) "
                "VALUES (?, 'p', 'report', ?, 0, ?, '{\"k\": \"v\"}', '{}')",
                (f"log_{index}", 1000 + index, payload),
            )
            conn.execute(
                "INSERT INTO log_criteria (log_id, choice_index, name, version, status, score) "
                "VALUES (?, 0, 'c', 1, 'success', 0.5)",
                (f"log_{index}",),
            )
        conn.execute("INSERT INTO datasets VALUES ('ds_1', 'p', 'd', 0, 0)")
        conn.execute(
            "INSERT INTO dataset_entries (id, dataset_id, created_at, split, messages, tools) "
            "VALUES ('de_1', 'ds_1', 0, 'TRAIN', '[]', '7')"
        )
        conn.execute("INSERT INTO cache_entries VALUES ('p', 'k', 'm', 0, 1, '2.5')")
    kinds = [kind for (kind,) in conn.execute("SELECT typeof(req_payload) FROM logs ORDER BY id")]
    conn.close()
    assert kinds == [kind for _, kind, _ in PAYLOADS]  # the bug, as older versions left it


async def test_rows_written_before_0003_read_back_and_keep_their_judgements(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    _schema_at(path, "0002")
    _old_rows(path)

    db = await open_database(f"sqlite+aiosqlite:///{path}")
    try:
        for index, (_, _, expected) in enumerate(PAYLOADS):
            log = await service.get_log(db, "p", f"log_{index}")
            assert log is not None and log.request == expected and type(log.request) is type(expected)
            assert log.metadata == {"k": "v"}
        page = await service.list_logs(db, "p", service.ListQuery(filter=service.LogFilter()))
        assert len(page.data) == len(PAYLOADS)

        async with db.connect() as conn:
            assert await conn.run_sync(lambda c: compare_metadata(MigrationContext.configure(c), metadata)) == []
            judged = (await conn.exec_driver_sql("SELECT count(*) FROM log_criteria")).scalar_one()
            tools = (await conn.exec_driver_sql("SELECT tools, typeof(tools) FROM dataset_entries")).one()
            cached = (await conn.exec_driver_sql("SELECT completion, typeof(completion) FROM cache_entries")).one()
            foreign_keys = (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar_one()
        assert judged == len(PAYLOADS)  # rebuilding `logs` must not cascade into its judgements
        assert tuple(tools) == ("7", "text") and tuple(cached) == ("2.5", "text")
        assert foreign_keys == 1
    finally:
        await db.close()

    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        assert {kind for (kind,) in conn.execute("SELECT typeof(req_payload) FROM logs")} == {"text"}
    finally:
        conn.close()


async def test_a_migration_that_fails_leaves_the_previous_schema(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    _schema_at(path, "0002")
    _old_rows(path)
    conn = sqlite3.connect(path)
    with conn:  # a dangling judgement: the foreign key check at the end of the migration refuses it
        conn.execute("PRAGMA foreign_keys=OFF")
        conn.execute(
            "INSERT INTO log_criteria (log_id, choice_index, name, version, status) VALUES ('x', 0, 'c', 1, 's')"
        )
    conn.close()

    try:
        await open_database(f"sqlite+aiosqlite:///{path}")
    except RuntimeError as error:
        assert "foreign keys" in str(error)
    else:
        raise AssertionError("the migration should have refused a dangling foreign key")
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == ("0002",)
        assert conn.execute("SELECT typeof(req_payload) FROM logs WHERE id = 'log_0'").fetchone() == ("integer",)
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert not any(name.startswith("_alembic_tmp") for name in tables)
    finally:
        conn.close()
