"""Datasets and their entries, for the HTTP routes and the `pipeserve datasets` commands alike.

Every query is scoped to the caller's project: a dataset of another project is reported as missing, never
as forbidden, so that ids do not leak across projects.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import BigInteger, and_, case, delete, func, insert, literal, null, or_, select, update
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from pipeserve.errors import InvalidRequestError, NotFoundError
from pipeserve.protocol.datasets import (
    CreateDatasetEntriesRequest,
    CreateDatasetRequest,
    Dataset,
    DatasetEntriesCreated,
    DatasetEntriesFromLogs,
    DatasetEntry,
    DatasetEntryList,
    DatasetList,
    DeletedDataset,
    EntryCreationError,
    EntryCreationErrors,
    ExportFormat,
    LogFilter,
    Split,
)
from pipeserve.service.dataset_entries import entry_from_log, entry_values, export_line
from pipeserve.service.log_filters import metadata_equals, metadata_missing
from pipeserve.service.recording import tag_value
from pipeserve.service.values import check_text, decode_cursor, encode_cursor, has_nul, iso, parse_time
from pipeserve.store.db import Database, new_id, now_ms
from pipeserve.store.tables import dataset_entries, datasets, logs

# Logs are read, and entries exported, this many rows at a time: memory stays flat on any dataset size,
# and no transaction is held long enough to stall the log writer on SQLite.
PAGE = 500
MAX_ENTRIES_PAGE = 1000

_ENTRY_COUNT = (
    select(func.count())
    .where(dataset_entries.c.dataset_id == datasets.c.id)
    .correlate(datasets)
    .scalar_subquery()
    .label("entry_count")
)


def _not_found(dataset_id: str) -> NotFoundError:
    return NotFoundError(
        f"No dataset with id '{dataset_id}' in this project. GET /v1/datasets (or `pipeserve datasets list`) "
        "lists the datasets of the project your key belongs to.",
        param="dataset_id",
    )


def _dataset(row: Row[Any]) -> Dataset:
    return Dataset(
        id=row.id,
        name=row.name,
        created=iso(row.created_at),
        updated=iso(row.updated_at),
        dataset_entry_count=row.entry_count,
    )


def _entry(row: Row[Any]) -> DatasetEntry:
    return DatasetEntry(
        id=row.id,
        created=iso(row.created_at),
        split=row.split,
        messages=row.messages,
        rejected_message=row.rejected_message,
        tools=row.tools,
        tool_choice=row.tool_choice,
        response_format=row.response_format,
        metadata=row.meta,
        log_id=row.log_id,
    )


def _after(created_col: Any, id_col: Any, created: int, row_id: str) -> ColumnElement[bool]:
    """Keyset pagination: the rows strictly after (created, id) in (created, id) order."""
    return or_(created_col > created, and_(created_col == created, id_col > row_id))


class DatasetService:
    def __init__(self, db: Database) -> None:
        self.db = db

    # --- datasets -----------------------------------------------------------------------------------------

    async def list_datasets(self, project: str) -> DatasetList:
        query = (
            select(datasets, _ENTRY_COUNT)
            .where(datasets.c.project == project)
            .order_by(datasets.c.created_at.desc(), datasets.c.id.desc())
        )
        async with self.db.connect() as conn:
            rows = (await conn.execute(query)).all()
        return DatasetList(data=[_dataset(row) for row in rows])

    async def create_dataset(self, project: str, request: CreateDatasetRequest) -> Dataset:
        check_text(request.name, "name")
        now = now_ms()
        dataset_id = new_id("ds")
        values = {"id": dataset_id, "project": project, "name": request.name, "created_at": now, "updated_at": now}
        async with self.db.begin() as conn:
            await conn.execute(insert(datasets).values(values))
        return Dataset(id=dataset_id, name=request.name, created=iso(now), updated=iso(now), dataset_entry_count=0)

    async def get_dataset(self, project: str, dataset_id: str) -> Dataset:
        async with self.db.connect() as conn:
            return _dataset(await self._require(conn, project, dataset_id))

    async def delete_dataset(self, project: str, dataset_id: str) -> DeletedDataset:
        if has_nul(dataset_id):
            raise _not_found(dataset_id)
        async with self.db.begin() as conn:
            # The entries go with it: the foreign key cascades.
            result = await conn.execute(
                delete(datasets).where(datasets.c.id == dataset_id, datasets.c.project == project)
            )
        if result.rowcount == 0:
            raise _not_found(dataset_id)
        return DeletedDataset(id=dataset_id)

    # --- entries ------------------------------------------------------------------------------------------

    async def add_entries(
        self, project: str, dataset_id: str, request: CreateDatasetEntriesRequest
    ) -> DatasetEntriesCreated:
        """Store the valid entries; each invalid one is reported by its index and fails alone."""
        rows: list[dict[str, Any]] = []
        errors: list[EntryCreationError] = []
        for index, raw in enumerate(request.entries):
            try:
                rows.append(entry_values(raw))
            except InvalidRequestError as exc:
                errors.append(EntryCreationError(entry_index=index, message=exc.message))
        async with self.db.begin() as conn:
            if rows:
                await self._insert(conn, dataset_id, await self._touch(conn, project, dataset_id), rows)
            else:
                await self._require(conn, project, dataset_id)
        return DatasetEntriesCreated(entries_created=len(rows), errors=EntryCreationErrors(data=errors))

    async def add_entries_from_logs(
        self, project: str, dataset_id: str, log_filter: LogFilter
    ) -> DatasetEntriesFromLogs:
        """Turn the project's successful chat completions into entries, oldest first.

        `limit` caps the logs read, skipped ones included; errors carry the index of the log among those
        read. A log already in the dataset is skipped, so running the same filter again adds only new logs;
        so is a cache hit, which repeats the completion it was cached from.
        """
        async with self.db.connect() as conn:
            await self._require(conn, project, dataset_id)
        conditions = _log_conditions(project, log_filter, sqlite=self.db.is_sqlite)
        remaining = log_filter.limit
        last: tuple[int, str] | None = None
        read = created = skipped = 0
        errors: list[EntryCreationError] = []
        while remaining is None or remaining > 0:
            size = PAGE if remaining is None else min(PAGE, remaining)
            query = select(
                logs.c.id,
                logs.c.source,
                logs.c.requested_at,
                logs.c.cache_hit,
                logs.c.req_payload,
                logs.c.resp_payload,
                logs.c.meta,
            ).where(*conditions)
            if last is not None:
                query = query.where(_after(logs.c.requested_at, logs.c.id, *last))
            async with self.db.connect() as conn:
                page = (await conn.execute(query.order_by(logs.c.requested_at, logs.c.id).limit(size))).all()
            if not page:
                break
            last = (page[-1].requested_at, page[-1].id)
            if remaining is not None:
                remaining -= len(page)
            rows: list[dict[str, Any]] = []
            for log in page:
                try:
                    values = entry_from_log(log, log_filter.split)
                except InvalidRequestError as exc:
                    errors.append(EntryCreationError(entry_index=read, message=f"Log {log.id}: {exc.message}"))
                else:
                    if values is None:
                        skipped += 1
                    else:
                        rows.append(values)
                read += 1
            if rows:
                async with self.db.begin() as conn:
                    added = await self._add_new_logs(conn, project, dataset_id, rows)
                skipped += len(rows) - added
                created += added
            if len(page) < size:
                break
        return DatasetEntriesFromLogs(entries_created=created, errors=EntryCreationErrors(data=errors), skipped=skipped)

    async def list_entries(
        self, project: str, dataset_id: str, *, limit: int = 100, cursor: str | None = None
    ) -> DatasetEntryList:
        if not 1 <= limit <= MAX_ENTRIES_PAGE:
            raise InvalidRequestError(f"'limit' must be between 1 and {MAX_ENTRIES_PAGE}.", param="limit")
        query = select(dataset_entries).where(dataset_entries.c.dataset_id == dataset_id)
        if cursor is not None:
            query = query.where(_after(dataset_entries.c.created_at, dataset_entries.c.id, *decode_cursor(cursor)))
        query = query.order_by(dataset_entries.c.created_at, dataset_entries.c.id).limit(limit + 1)
        async with self.db.connect() as conn:
            await self._require(conn, project, dataset_id)
            rows = (await conn.execute(query)).all()
        more = len(rows) > limit
        rows = rows[:limit]
        return DatasetEntryList(
            data=[_entry(row) for row in rows],
            has_more=more,
            next_cursor=encode_cursor(rows[-1].created_at, rows[-1].id) if more else None,
        )

    async def export(
        self, project: str, dataset_id: str, *, split: Split | None = None, fmt: ExportFormat = "sft"
    ) -> AsyncIterator[bytes]:
        """The dataset as JSONL. A missing dataset fails here, before the first byte is sent."""
        async with self.db.connect() as conn:
            await self._require(conn, project, dataset_id)
        return self._export(dataset_id, split, fmt)

    async def _export(self, dataset_id: str, split: Split | None, fmt: ExportFormat) -> AsyncIterator[bytes]:
        conditions = [dataset_entries.c.dataset_id == dataset_id]
        if split is not None:
            conditions.append(dataset_entries.c.split == split)
        if fmt == "preference":
            conditions.append(dataset_entries.c.rejected_message.is_not(None))
        last: tuple[int, str] | None = None
        while True:
            query = select(dataset_entries).where(*conditions)
            if last is not None:
                query = query.where(_after(dataset_entries.c.created_at, dataset_entries.c.id, *last))
            async with self.db.connect() as conn:
                query = query.order_by(dataset_entries.c.created_at, dataset_entries.c.id).limit(PAGE)
                rows = (await conn.execute(query)).all()
            if not rows:
                return
            lines = [export_line(row, fmt) for row in rows]
            yield b"".join(line for line in lines if line is not None)
            if len(rows) < PAGE:
                return
            last = (rows[-1].created_at, rows[-1].id)

    # --- helpers ------------------------------------------------------------------------------------------

    async def _require(self, conn: AsyncConnection, project: str, dataset_id: str) -> Row[Any]:
        if has_nul(dataset_id):  # no id has one, and PostgreSQL would refuse to compare it
            raise _not_found(dataset_id)
        query = select(datasets, _ENTRY_COUNT).where(datasets.c.id == dataset_id, datasets.c.project == project)
        row = (await conn.execute(query)).first()
        if row is None:
            raise _not_found(dataset_id)
        return row

    async def _touch(self, conn: AsyncConnection, project: str, dataset_id: str) -> int:
        """Mark the dataset changed, locking it for the transaction; the time its new entries get.

        The time is kept strictly increasing per dataset, so that (created_at, id) lists entries in the
        order they were added even when two batches arrive within the same millisecond.
        """
        if has_nul(dataset_id):
            raise _not_found(dataset_id)
        now = literal(now_ms(), BigInteger)
        stamp = case((datasets.c.updated_at >= now, datasets.c.updated_at + 1), else_=now)
        statement = (
            update(datasets)
            .where(datasets.c.id == dataset_id, datasets.c.project == project)
            .values(updated_at=stamp)
            .returning(datasets.c.updated_at)
        )
        row = (await conn.execute(statement)).first()
        if row is None:
            raise _not_found(dataset_id)
        return int(row[0])

    async def _insert(self, conn: AsyncConnection, dataset_id: str, created: int, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        # Sorted ids keep a batch in request order under the (created_at, id) index.
        ids = sorted(new_id("dse") for _ in rows)
        await conn.execute(
            insert(dataset_entries),
            [
                {
                    "id": entry_id,
                    "dataset_id": dataset_id,
                    "created_at": created,
                    "log_id": None,
                    # null(): SQL NULL rather than JSON null, so that `IS NULL` finds entries without one.
                    **{key: null() if value is None else value for key, value in values.items()},
                }
                for entry_id, values in zip(ids, rows, strict=True)
            ],
        )

    async def _add_new_logs(
        self, conn: AsyncConnection, project: str, dataset_id: str, rows: list[dict[str, Any]]
    ) -> int:
        """Insert the rows whose log is not in the dataset yet; how many that was."""
        # The dataset's lock comes first, so that concurrent runs cannot both find a log new and add it twice.
        created = await self._touch(conn, project, dataset_id)
        known_query = select(dataset_entries.c.log_id).where(
            dataset_entries.c.dataset_id == dataset_id,
            dataset_entries.c.log_id.in_([row["log_id"] for row in rows]),
        )
        known = set((await conn.execute(known_query)).scalars())
        fresh = [row for row in rows if row["log_id"] not in known]
        await self._insert(conn, dataset_id, created, fresh)
        return len(fresh)


def _log_conditions(project: str, log_filter: LogFilter, *, sqlite: bool) -> list[ColumnElement[bool]]:
    check_text(log_filter.model, "model")
    check_text(log_filter.metadata, "metadata")
    conditions = [logs.c.project == project]
    if log_filter.status_code is not None:
        conditions.append(logs.c.status_code == log_filter.status_code)
    else:
        # A report may leave its status out; one without an error message is taken as the success it
        # looks like (its response must still hold a choice).
        unknown = and_(logs.c.status_code.is_(None), logs.c.error_message.is_(None))
        conditions.append(or_(logs.c.status_code == 200, unknown))
    if log_filter.model is not None:
        conditions.append(logs.c.model == log_filter.model)
    if log_filter.from_ is not None:
        conditions.append(logs.c.requested_at >= parse_time(log_filter.from_, "from"))
    if log_filter.to is not None:
        conditions.append(logs.c.requested_at < parse_time(log_filter.to, "to"))
    for key, value in (log_filter.metadata or {}).items():
        text = tag_value(value)
        conditions.append(
            metadata_missing(key, sqlite=sqlite) if text is None else metadata_equals(key, text, sqlite=sqlite)
        )
    return conditions
