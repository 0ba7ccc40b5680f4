"""The few reads and writes the console needs that no API route makes: a log's judgements, and one dataset
entry read, changed or deleted. Everything else goes through the services (`service.logs`, `DatasetService`,
`CriteriaService`). As there, every query is scoped to the viewer's project.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, case, delete, literal, null, select, update

from pipeserve.errors import NotFoundError
from pipeserve.protocol.datasets import DatasetEntry, Split
from pipeserve.service.dataset_entries import entry_values
from pipeserve.service.values import has_nul, iso
from pipeserve.store.db import Database, now_ms
from pipeserve.store.tables import dataset_entries, datasets, log_criteria


@dataclass(frozen=True)
class Judgement:
    choice_index: int
    name: str
    version: int
    status: str
    score: float | None
    explanation: str | None
    error_code: int | None
    error_message: str | None

    @property
    def ref(self) -> str:
        return f"{self.name}@v{self.version}"


async def judgements(db: Database, log_ids: Sequence[str], *, first_choice: bool = False) -> dict[str, list[Judgement]]:
    """The judgements of these logs (already read from the viewer's project), by log id."""
    if not log_ids:
        return {}
    query = select(log_criteria).where(log_criteria.c.log_id.in_(list(log_ids)))
    if first_choice:
        query = query.where(log_criteria.c.choice_index == 0)
    async with db.connect() as conn:
        rows = (await conn.execute(query.order_by(log_criteria.c.choice_index, log_criteria.c.name))).all()
    out: dict[str, list[Judgement]] = {}
    for row in rows:
        out.setdefault(row.log_id, []).append(
            Judgement(
                choice_index=row.choice_index,
                name=row.name,
                version=row.version,
                status=row.status,
                score=row.score,
                explanation=row.explanation,
                error_code=row.error_code,
                error_message=row.error_message,
            )
        )
    return out


def _entry_not_found(entry_id: str) -> NotFoundError:
    return NotFoundError(
        f"No entry '{entry_id}' in this dataset. It may have been deleted; go back to the dataset to see its entries.",
        param="entry_id",
    )


def _owned(project: str, dataset_id: str, entry_id: str) -> list[Any]:
    owned = select(datasets.c.id).where(datasets.c.id == dataset_id, datasets.c.project == project)
    return [
        dataset_entries.c.id == entry_id,
        dataset_entries.c.dataset_id == dataset_id,
        dataset_entries.c.dataset_id.in_(owned),
    ]


async def get_entry(db: Database, project: str, dataset_id: str, entry_id: str) -> DatasetEntry:
    if has_nul([dataset_id, entry_id]):
        raise _entry_not_found(entry_id)
    async with db.connect() as conn:
        row = (await conn.execute(select(dataset_entries).where(*_owned(project, dataset_id, entry_id)))).first()
    if row is None:
        raise _entry_not_found(entry_id)
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


async def update_entry(db: Database, project: str, dataset_id: str, entry_id: str, raw: Any, split: Split) -> None:
    """Replace an entry's content with `raw` (an entry as the API takes it), checked as the API checks it."""
    checked = entry_values(raw, split) | {"split": split}
    # null(): SQL NULL rather than JSON null, as the service stores a missing field.
    values = {key: null() if value is None else value for key, value in checked.items()}
    if has_nul([dataset_id, entry_id]):
        raise _entry_not_found(entry_id)
    async with db.begin() as conn:
        result = await conn.execute(
            update(dataset_entries).where(*_owned(project, dataset_id, entry_id)).values(values)
        )
        if result.rowcount == 0:
            raise _entry_not_found(entry_id)
        await _touch(conn, dataset_id)


async def delete_entry(db: Database, project: str, dataset_id: str, entry_id: str) -> None:
    if has_nul([dataset_id, entry_id]):
        raise _entry_not_found(entry_id)
    async with db.begin() as conn:
        result = await conn.execute(delete(dataset_entries).where(*_owned(project, dataset_id, entry_id)))
        if result.rowcount == 0:
            raise _entry_not_found(entry_id)
        await _touch(conn, dataset_id)


async def _touch(conn: Any, dataset_id: str) -> None:
    """Mark the dataset changed without moving its time back: new entries take their time from it."""
    now = literal(now_ms(), BigInteger)
    stamp = case((datasets.c.updated_at >= now, datasets.c.updated_at), else_=now)
    await conn.execute(update(datasets).where(datasets.c.id == dataset_id).values(updated_at=stamp))
