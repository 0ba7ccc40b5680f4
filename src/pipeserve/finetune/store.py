"""The `trained_models` table: training jobs and the models they made, with the queue's atomic steps.

A job is claimed by one runner at a time (`runner`, `heartbeat_at`): the update that claims it only succeeds on
a row still PENDING, and every later write of that runner names it, so a runner that lost its job (deleted, or
given to another after a restart) learns so from a write that changes nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, insert, null, or_, select, update
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError

from pipeserve.service.values import has_nul
from pipeserve.store.db import Database, now_ms
from pipeserve.store.tables import dataset_entries, trained_models

PREFIX = "openpipe:"


@dataclass(frozen=True)
class TrainedModel:
    id: str
    project: str
    slug: str
    status: str
    base_model: str
    dataset_id: str
    request: dict[str, Any]
    plan: dict[str, Any]
    error_message: str | None
    progress: dict[str, Any] | None
    result: dict[str, Any] | None
    evaluation: dict[str, Any] | None
    attempts: int
    runner: str | None
    heartbeat_at: int | None
    created_at: int
    updated_at: int

    @property
    def served_id(self) -> str:
        """The name it answers to on `/chat/completions`."""
        return PREFIX + self.slug


def _model(row: Row[Any]) -> TrainedModel:
    return TrainedModel(**{column: getattr(row, column) for column in TrainedModel.__dataclass_fields__})


def _json(value: Any) -> Any:
    # SQL NULL rather than JSON null, so that a cleared column reads back as None either way.
    return null() if value is None else value


class SlugTakenError(Exception):
    pass


ENTRY_PAGE = 500  # dataset entries read per query


class TrainedModelStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def entries(self, dataset_id: str) -> AsyncIterator[Row[Any]]:
        """A dataset's entries in their order, read a page at a time (a connection held per page only)."""
        offset = 0
        while True:
            query = (
                select(dataset_entries)
                .where(dataset_entries.c.dataset_id == dataset_id)
                .order_by(dataset_entries.c.created_at, dataset_entries.c.id)
                .limit(ENTRY_PAGE)
                .offset(offset)
            )
            async with self.db.connect() as conn:
                rows = (await conn.execute(query)).all()
            for row in rows:
                yield row
            if len(rows) < ENTRY_PAGE:
                return
            offset += ENTRY_PAGE

    async def insert(self, values: dict[str, Any]) -> TrainedModel:
        now = now_ms()
        row = {
            "status": "PENDING",
            "error_message": None,
            "progress": None,
            "result": None,
            "evaluation": None,
            "attempts": 0,
            "runner": None,
            "heartbeat_at": None,
            "created_at": now,
            "updated_at": now,
            **values,
        }
        try:
            async with self.db.begin() as conn:
                await conn.execute(insert(trained_models).values({k: _json(v) for k, v in row.items()}))
        except IntegrityError:
            raise SlugTakenError(values["slug"]) from None
        return TrainedModel(**row)

    async def get(self, project: str, slug: str) -> TrainedModel | None:
        if has_nul(slug):
            return None
        query = select(trained_models).where(trained_models.c.project == project, trained_models.c.slug == slug)
        async with self.db.connect() as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else _model(row)

    async def by_id(self, model_id: str) -> TrainedModel | None:
        async with self.db.connect() as conn:
            row = (await conn.execute(select(trained_models).where(trained_models.c.id == model_id))).first()
        return None if row is None else _model(row)

    async def slug_taken(self, slug: str) -> bool:
        async with self.db.connect() as conn:
            row = (await conn.execute(select(trained_models.c.id).where(trained_models.c.slug == slug))).first()
        return row is not None

    async def of_project(self, project: str) -> list[TrainedModel]:
        query = (
            select(trained_models)
            .where(trained_models.c.project == project)
            .order_by(trained_models.c.created_at.desc(), trained_models.c.id.desc())
        )
        async with self.db.connect() as conn:
            return [_model(row) for row in (await conn.execute(query)).all()]

    async def deployed(self) -> list[TrainedModel]:
        """Every project's DEPLOYED models: all of them are served by every replica."""
        query = (
            select(trained_models).where(trained_models.c.status == "DEPLOYED").order_by(trained_models.c.created_at)
        )
        async with self.db.connect() as conn:
            return [_model(row) for row in (await conn.execute(query)).all()]

    async def delete(self, project: str, slug: str) -> TrainedModel | None:
        found = await self.get(project, slug)
        if found is None:
            return None
        async with self.db.begin() as conn:
            result = await conn.execute(delete(trained_models).where(trained_models.c.id == found.id))
        return found if result.rowcount else None

    # --- the queue ----------------------------------------------------------------------------------------

    async def claim(self, runner: str, job_id: str | None = None) -> TrainedModel | None:
        """The oldest PENDING job (or `job_id`, if still PENDING), now TRAINING under `runner`; None if none."""
        for _ in range(5):  # another runner may take the one found first
            query = select(trained_models.c.id).where(trained_models.c.status == "PENDING")
            if job_id is not None:
                query = query.where(trained_models.c.id == job_id)
            async with self.db.connect() as conn:
                found = (await conn.execute(query.order_by(trained_models.c.created_at).limit(1))).first()
            if found is None:
                return None
            now = now_ms()
            statement = (
                update(trained_models)
                .where(trained_models.c.id == found.id, trained_models.c.status == "PENDING")
                .values(
                    status="TRAINING",
                    runner=runner,
                    heartbeat_at=now,
                    updated_at=now,
                    attempts=trained_models.c.attempts + 1,
                    progress={"phase": "starting"},
                    error_message=None,
                )
            )
            async with self.db.begin() as conn:
                claimed = (await conn.execute(statement)).rowcount
            if claimed:
                return await self.by_id(found.id)
        return None

    async def claim_evaluation(self, runner: str, model_id: str | None = None) -> TrainedModel | None:
        """A DEPLOYED model (or `model_id`) whose evaluation waits for a runner (it was interrupted), now
        running here."""
        query = select(trained_models).where(trained_models.c.status == "DEPLOYED")
        if model_id is not None:
            query = query.where(trained_models.c.id == model_id)
        async with self.db.connect() as conn:
            rows = (await conn.execute(query)).all()
        for row in rows:
            model = _model(row)
            if (model.evaluation or {}).get("status") != "pending":
                continue
            now = now_ms()
            statement = (
                update(trained_models)
                .where(trained_models.c.id == model.id, trained_models.c.updated_at == model.updated_at)
                .values(runner=runner, heartbeat_at=now, updated_at=now, evaluation={"status": "running"})
            )
            async with self.db.begin() as conn:
                if (await conn.execute(statement)).rowcount:
                    return await self.by_id(model.id)
        return None

    async def update(self, model_id: str, owner: str, **values: Any) -> bool:
        """Write as the job's runner; False if the job is gone or no longer this runner's."""
        now = now_ms()
        changes = {key: _json(value) if key in _JSON_COLUMNS else value for key, value in values.items()}
        statement = (
            update(trained_models)
            .where(trained_models.c.id == model_id, trained_models.c.runner == owner)
            .values(**changes, heartbeat_at=now, updated_at=now)
        )
        async with self.db.begin() as conn:
            return bool((await conn.execute(statement)).rowcount)

    async def recover(self, stale_ms: int, max_attempts: int) -> list[str]:
        """Jobs whose runner stopped beating (killed, or the machine restarted): queued again, or failed once
        they have been started `max_attempts` times; evaluations cut short wait for a runner again."""
        cutoff = now_ms() - stale_ms
        stale = or_(trained_models.c.heartbeat_at.is_(None), trained_models.c.heartbeat_at < cutoff)
        async with self.db.connect() as conn:
            rows = (
                await conn.execute(
                    select(trained_models).where(
                        trained_models.c.status.in_(("TRAINING", "DEPLOYED")),
                        trained_models.c.runner.is_not(None),
                        stale,
                    )
                )
            ).all()
        recovered: list[str] = []
        for row in rows:
            model = _model(row)
            guard = [trained_models.c.id == model.id, trained_models.c.heartbeat_at == model.heartbeat_at]
            if model.status == "DEPLOYED":
                if (model.evaluation or {}).get("status") != "running":
                    continue
                values: dict[str, Any] = {"evaluation": {"status": "pending"}, "runner": None}
            elif model.attempts >= max_attempts:
                values = {
                    "status": "ERROR",
                    "runner": None,
                    "progress": None,
                    "error_message": f"Training was interrupted {model.attempts} times (the process running it "
                    "stopped); not retried again. Check the server's memory and log, then train again.",
                }
            else:
                values = {"status": "PENDING", "runner": None, "progress": {"phase": "queued", "interrupted": True}}
            statement = update(trained_models).where(*guard).values(**values, updated_at=now_ms())
            async with self.db.begin() as conn:
                if (await conn.execute(statement)).rowcount:
                    recovered.append(model.slug)
        return recovered


_JSON_COLUMNS = {"request", "plan", "progress", "result", "evaluation"}
