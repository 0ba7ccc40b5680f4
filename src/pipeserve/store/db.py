"""The database: one async engine per process, SQLite tuned for concurrent use, migrations at start-up.

Every way in (`connect`, `begin`) turns "the database can't be reached right now" (refused, reset or hung
connections, a full disk, a locked SQLite file) into `StoreUnavailableError`, which the routes answer as a 503:
one place for it, rather than a 500 or a hang in each route.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Table, event, exc, insert, text
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from pipeserve.errors import StoreUnavailableError
from pipeserve.store.inserts import Batch
from pipeserve.store.postgres_rows import PostgresRows
from pipeserve.store.sqlite_rows import ConnectHook, SqliteRows

MIGRATIONS = Path(__file__).parent / "migrations"
# Any constant works; it only has to be the same in every replica that may migrate at the same time.
_MIGRATION_LOCK = 7_216_254_001
# How long getting a connection may take (pool wait, pre-ping, TCP and PostgreSQL start-up) before the store
# counts as unreachable. Short, because the one who waits is a client.
CONNECT_TIMEOUT = 5.0
RETRY_AFTER_SECONDS = 5

log = logging.getLogger("pipeserve.store")


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _loads(value: str | bytes | int | float) -> Any:
    # A SQLite column made before migration 0003 (declared JSON: NUMERIC affinity) may hand back a bare number
    # already converted; it is that number. A read must not fail on a row that a write accepted.
    if isinstance(value, int | float):
        return value
    return orjson.loads(value)


# orjson for JSON columns: several times faster than the standard library on the logging path, and a value
# that is already JSON can be stored as `orjson.Fragment(raw)` without being parsed and encoded again.
_JSON: dict[str, Any] = {"json_serializer": _dumps, "json_deserializer": _loads}

# SQLite result codes (primary, the low byte) that mean "not now" rather than "not this statement": busy or
# locked by another writer, out of memory, read-only or failing disk, disk full, file gone.
_SQLITE_UNAVAILABLE = {5, 6, 7, 8, 10, 13, 14, 15}
# PostgreSQL SQLSTATE classes of the same kind: connection exception, insufficient resources (disk full, too
# many connections), operator intervention (shutdown, restart, cannot connect now), system error.
_PG_UNAVAILABLE = ("08", "53", "57P", "58")


def now_ms() -> int:
    return int(time.time() * 1000)


def new_id(prefix: str) -> str:
    return f"{prefix}_{random_hex()}"


def random_hex() -> str:
    """A unique id of 32 hex digits: the time in milliseconds (12 digits), then 80 random bits, so that ids
    made later sort later. The indexes they key then grow at their end, as the time index does, rather than
    at a random page each (a log row's commit writes fewer pages).

    The random bits come from the process's Mersenne Twister (seeded from os.urandom, reseeded in a forked
    child), not uuid4: that reads os.urandom, a system call per id, which cost ~2% of a gateway request here.
    Ids must be unique, not secret: no secret is made this way."""
    return f"{time.time_ns() // 1_000_000:012x}{random.getrandbits(80):020x}"


def is_unavailable(error: BaseException) -> bool:
    """Whether `error` says the store can't be reached now (worth a retry later), not that a statement is
    wrong."""
    if isinstance(error, StoreUnavailableError | OSError | exc.TimeoutError):
        return True  # OSError holds refused and reset connections and TimeoutError
    if isinstance(error, exc.DBAPIError) and error.connection_invalidated:
        return True
    cause = error.orig if isinstance(error, exc.DBAPIError) else error
    code = getattr(cause, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in _SQLITE_UNAVAILABLE
    if isinstance(error, exc.InterfaceError):
        return True  # asyncpg: the connection is closed or broken
    state = getattr(cause, "sqlstate", None)
    return isinstance(state, str) and state.startswith(_PG_UNAVAILABLE)


def is_refused(error: BaseException) -> bool:
    """Whether `error` is the store refusing these rows themselves (a duplicate key, a value it can't hold, a
    value that can't be encoded): retrying them can't help, unlike any other failure."""
    if isinstance(error, exc.IntegrityError | exc.DataError | sqlite3.IntegrityError | sqlite3.DataError):
        return True
    if isinstance(error, TypeError | ValueError | OverflowError) and not isinstance(error, sqlite3.Error):
        return True  # a value that can't be encoded (orjson) or bound (an integer beyond 64 bits)
    if isinstance(error, exc.StatementError) and not isinstance(error, exc.DBAPIError):
        return True  # a parameter that could not be bound (or serialised) at all
    state = getattr(error.orig if isinstance(error, exc.DBAPIError) else error, "sqlstate", None)
    return isinstance(state, str) and state.startswith(("22", "23"))  # data exception, integrity violation


def describe(error: BaseException) -> str:
    """What went wrong, without the statement and its parameters (request payloads) that SQLAlchemy adds."""
    cause = error.__cause__ if isinstance(error, StoreUnavailableError) and error.__cause__ else error
    if isinstance(cause, exc.DBAPIError) and cause.orig is not None:
        cause = cause.orig
    return f"{type(cause).__name__}: {str(cause) or 'no answer in time'}"


def unavailable_error(cause: BaseException) -> StoreUnavailableError:
    _log_outage(cause)
    error = StoreUnavailableError(
        "The database that holds logs, datasets and criteria can't be reached right now. Retry in a few "
        "seconds: chat completions are still served, and their logs are written when it is back. If this "
        "lasts, the server's log says why."
    )
    error.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return error


_last_outage_log = 0.0


def _log_outage(cause: BaseException) -> None:
    # Every request fails the same way during an outage: one line every few seconds says it.
    global _last_outage_log
    now = time.monotonic()
    if now - _last_outage_log >= RETRY_AFTER_SECONDS:
        _last_outage_log = now
        log.warning("the store can't be reached: %s", describe(cause))


class Database:
    def __init__(self, url: str, *, timeout: float = CONNECT_TIMEOUT, log_synchronous_commit: bool = False) -> None:
        self.url = url
        self.timeout = timeout
        self.is_sqlite = url.startswith("sqlite")
        self._hooks: list[ConnectHook] = []
        self._rows: SqliteRows | PostgresRows | None = None  # the fast way in for inserts (`insert`)
        if self.is_sqlite:
            path = url.split("///", 1)[1] if "///" in url else ""
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                self._rows = SqliteRows(path, self._hooks)
            self.engine: AsyncEngine = create_async_engine(url, **_JSON)
            self.on_connect(_sqlite_pragmas)
        else:
            self.engine = create_async_engine(
                url,
                pool_size=10,
                max_overflow=20,
                pool_pre_ping=True,
                connect_args={"timeout": timeout},  # asyncpg's own default is a minute
                **_JSON,
            )
            _, connect_kwargs = self.engine.dialect.create_connect_args(self.engine.url)
            connect_kwargs["timeout"] = timeout
            self._rows = PostgresRows(connect_kwargs, synchronous_commit=log_synchronous_commit)

    def on_connect(self, hook: ConnectHook) -> None:
        """Run `hook(dbapi_connection, record)` on every new connection, of the async engine and of the SQLite
        inserter alike (SQLAlchemy's "connect" event); PostgreSQL's log inserter, a plain asyncpg connection, runs
        none."""
        self._hooks.append(hook)
        event.listen(self.engine.sync_engine, "connect", hook)

    async def reconnect(self) -> None:
        """Close pooled connections: new ones are made (and hooked) when next needed."""
        await self.engine.dispose()
        if self._rows is not None:
            await self._rows.reconnect()

    def insert_now(self, batches: Sequence[Batch]) -> bool:
        """`insert`, done at once without waiting for anything, where the store allows it (SQLite while no
        other connection writes); False when it doesn't: then nothing was done."""
        if not isinstance(self._rows, SqliteRows):
            return False
        try:
            return self._rows.insert_now(batches)
        except Exception as error:
            if is_unavailable(error):
                raise unavailable_error(error) from error
            raise

    async def insert(self, batches: Sequence[Batch]) -> None:
        """Insert rows of several tables in one transaction: `(table, rows, skip_stored)` each, where
        `skip_stored` skips a row whose primary key is already stored instead of failing."""
        if self._rows is not None:
            try:  # no deadline here: the log writer sets its own (store_timeout_seconds)
                await self._rows.insert(batches)
            except Exception as error:
                if is_unavailable(error):
                    raise unavailable_error(error) from error
                raise
            return
        # Only an in-memory SQLite database has no fast way in: a SQLite file and PostgreSQL each have one.
        async with self.begin() as conn:
            for table, rows, skip_stored in batches:
                if rows:
                    await conn.execute(_insert_statement(table, skip_stored), list(rows))

    async def migrate(self) -> None:
        """Bring the schema to the newest revision; replicas starting together take turns on PostgreSQL."""
        async with self.engine.connect() as conn:
            if self.is_sqlite:
                await _migrate_sqlite(conn)
                return
            async with conn.begin():
                await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
                await conn.run_sync(_upgrade)

    def connect(self) -> AbstractAsyncContextManager[Any]:
        """A connection (an `AsyncConnection`); StoreUnavailableError if the store can't be reached."""
        return self._connection(begin=False)

    def begin(self) -> AbstractAsyncContextManager[Any]:
        """A connection inside a transaction, committed when the block ends without an error."""
        return self._connection(begin=True)

    @asynccontextmanager
    async def _connection(self, *, begin: bool) -> AsyncIterator[AsyncConnection]:
        conn = self.engine.connect()
        try:
            async with asyncio.timeout(self.timeout):  # a hung network must not hold the caller
                await conn.start()
        except Exception as error:
            # Nothing of the caller's has run yet: whatever stops a connection (refused, timed out, a database
            # that doesn't accept connections or exist, a password refused) is the store being unavailable.
            raise unavailable_error(error) from error
        try:
            try:
                if not begin:
                    yield conn
                    return
                async with conn.begin():
                    yield conn
            finally:
                await conn.close()
        except StoreUnavailableError:
            raise
        except Exception as error:
            if is_unavailable(error):
                raise unavailable_error(error) from error
            raise

    async def close(self) -> None:
        await self.engine.dispose()
        if self._rows is not None:
            await self._rows.close()


async def open_database(
    url: str, *, timeout: float = CONNECT_TIMEOUT, log_synchronous_commit: bool = False
) -> Database:
    db = Database(url, timeout=timeout, log_synchronous_commit=log_synchronous_commit)
    try:
        await db.migrate()
    except Exception:
        await db.close()
        raise
    return db


async def _migrate_sqlite(conn: AsyncConnection) -> None:
    # Migrations rebuild SQLite tables (batch mode). With foreign keys on, dropping the old `logs` would delete
    # every judgement that references it (ON DELETE CASCADE); the pragma only works outside a transaction.
    await conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
    await conn.commit()
    try:
        async with conn.begin():
            # One real transaction around all of it (the driver would leave DDL outside one): a migration
            # interrupted half-way leaves the previous schema, not a half-built table.
            await conn.exec_driver_sql("BEGIN IMMEDIATE")
            migrated = await conn.run_sync(_upgrade)
            broken = (await conn.exec_driver_sql("PRAGMA foreign_key_check")).all() if migrated else []
            if broken:
                raise RuntimeError(f"a migration left rows whose foreign keys point nowhere: {broken[:5]}")
    finally:
        await conn.exec_driver_sql("PRAGMA foreign_keys=ON")
        await conn.commit()


def _upgrade(connection: Connection) -> bool:
    """Migrate to the newest revision; whether there was anything to do."""
    from alembic import command
    from alembic.config import Config
    from alembic.migration import MigrationContext

    def revision() -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    before = revision()
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
    return revision() != before


def _insert_statement(table: Table, skip_stored: bool) -> Any:
    if not skip_stored:
        return insert(table)  # a duplicate id is the caller's error, and it hears of it
    keys = [column.name for column in table.primary_key]
    return sqlite.insert(table).on_conflict_do_nothing(index_elements=keys)


def _sqlite_pragmas(dbapi_connection: Any, _: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL: readers don't block the writer. synchronous=NORMAL keeps every commit across a crash of the
    # process (kill -9); only a power loss can drop the last commits.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


__all__ = [
    "AsyncConnection",
    "Database",
    "describe",
    "is_refused",
    "is_unavailable",
    "new_id",
    "now_ms",
    "open_database",
    "random_hex",
]
