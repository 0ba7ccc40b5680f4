"""The database: one async engine per process, SQLite tuned for concurrent use, migrations at start-up."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import event, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

MIGRATIONS = Path(__file__).parent / "migrations"
# Any constant works; it only has to be the same in every replica that may migrate at the same time.
_MIGRATION_LOCK = 7_216_254_001


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


# orjson for JSON columns: several times faster than the standard library on the logging path, and a value
# that is already JSON can be stored as `orjson.Fragment(raw)` without being parsed and encoded again.
_JSON: dict[str, Any] = {"json_serializer": _dumps, "json_deserializer": orjson.loads}


def now_ms() -> int:
    return int(time.time() * 1000)


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            path = url.split("///", 1)[1] if "///" in url else ""
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.engine: AsyncEngine = create_async_engine(url, **_JSON)
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        else:
            self.engine = create_async_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True, **_JSON)

    async def migrate(self) -> None:
        """Bring the schema to the newest revision; replicas starting together take turns on PostgreSQL."""
        async with self.engine.begin() as conn:
            if self.engine.dialect.name == "postgresql":
                await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
            await conn.run_sync(_upgrade)

    def connect(self) -> Any:
        return self.engine.connect()

    def begin(self) -> Any:
        return self.engine.begin()

    async def close(self) -> None:
        await self.engine.dispose()


async def open_database(url: str) -> Database:
    db = Database(url)
    try:
        await db.migrate()
    except Exception:
        await db.close()
        raise
    return db


def _upgrade(connection: Connection) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def _sqlite_pragmas(dbapi_connection: Any, _: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL: readers don't block the writer. synchronous=NORMAL keeps every commit across a crash of the
    # process (kill -9); only a power loss can drop the last commits.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


__all__ = ["AsyncConnection", "Database", "new_id", "now_ms", "open_database"]
