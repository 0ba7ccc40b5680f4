"""Criteria: named LLM-as-judge definitions, versioned, for the HTTP routes, the CLI and the chat pipeline.

A version never changes once written: a change is a new version (`name@v2`), so a judged log always names
the exact instructions and settings that judged it. Deleting a criterion marks all its versions deleted
(kept, so that old judgements still name their version); the name can then be created again, and its
version numbers go on from the last one rather than reusing a number that judged logs may already name.

Every query is scoped to the caller's project: another project's criterion is reported as missing.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from pipeserve.errors import ConflictError, CriterionExistsError, InvalidRequestError, NotFoundError
from pipeserve.keys import DEFAULT_PROJECT
from pipeserve.protocol import criteria as wire
from pipeserve.service.values import check_text, has_nul, iso
from pipeserve.settings import Settings
from pipeserve.store.db import Database, new_id, now_ms
from pipeserve.store.tables import criteria
from pipeserve.validation import validate

log = logging.getLogger("pipeserve.criteria")

_NAME = re.compile(wire.NAME_PATTERN)
_REF = re.compile(r"^(?P<name>[A-Za-z0-9_-]{1,64})(?:@v(?P<version>[0-9]{1,9}))?$")
_ID = re.compile(r"^crit_[0-9a-f]{32}$")
_FIELDS = ("description", "instructions", "judge_model", "judge_settings")
_WRITE_TRIES = 5  # concurrent writers of one name race for its next version number; the loser retries


@dataclass(frozen=True)
class Criterion:
    """One immutable version of a criterion."""

    id: str
    project: str
    name: str
    version: int
    description: str
    instructions: str
    judge_model: str
    judge_settings: dict[str, Any]
    created_at: int = field(default=0, compare=False)

    @property
    def ref(self) -> str:
        return f"{self.name}@v{self.version}"

    @property
    def settings(self) -> wire.JudgeSettings:
        return wire.JudgeSettings.model_validate(self.judge_settings)

    def to_wire(self) -> wire.Criterion:
        return wire.Criterion(
            id=self.id,
            name=self.name,
            version=self.version,
            ref=self.ref,
            description=self.description,
            instructions=self.instructions,
            judge_model=self.judge_model,
            judge_settings=self.settings,
            created=iso(self.created_at),
        )


@dataclass(frozen=True)
class CriterionSpec:
    """What a version holds, before it is stored: the content that makes two versions the same or not."""

    description: str
    instructions: str
    judge_model: str
    judge_settings: dict[str, Any]


def parse_ref(ref: str) -> tuple[str, int | None] | None:
    """`name` → (name, None); `name@v3` → (name, 3); anything else → None."""
    match = _REF.match(ref)
    if match is None:
        return None
    version = match.group("version")
    return match.group("name"), int(version) if version is not None else None


def _criterion(row: Row[Any]) -> Criterion:
    return Criterion(
        id=row.id,
        project=row.project,
        name=row.name,
        version=row.version,
        description=row.description,
        instructions=row.instructions,
        judge_model=row.judge_model,
        judge_settings=dict(row.judge_settings),
        created_at=row.created_at,
    )


def _not_found(ref: str, param: str) -> NotFoundError:
    return NotFoundError(
        f"No criterion '{ref}' in this project. GET /v1/criteria (or `pipeserve criteria list`) lists the "
        "criteria of the project your key belongs to.",
        param=param,
    )


class _SettingsHolder(BaseModel):
    judge_settings: wire.JudgeSettings


def _settings(values: Any, param: str) -> dict[str, Any]:
    """Judge settings, validated, with every default filled in: a version states all it was judged with."""
    data = {"judge_settings": values if values is not None else {}}
    try:
        settings = validate(_SettingsHolder, data).judge_settings
    except InvalidRequestError as error:
        raise InvalidRequestError(
            error.message.replace("'judge_settings", f"'{param}", 1),
            param=error.param.replace("judge_settings", param, 1) if error.param else param,
        ) from None
    return settings.model_dump()


class CriteriaService:
    """Criteria in the store. `known_models`, when given, answers whether a model name is served: a judge
    model that isn't is a 400 when a version is written."""

    def __init__(
        self, db: Database, default_judge_model: str, known_models: Callable[[str], bool] | None = None
    ) -> None:
        self.db = db
        self.default_judge_model = default_judge_model
        self.known_models = known_models

    # --- reading ------------------------------------------------------------------------------------------

    async def resolve(self, project: str, refs: list[str]) -> list[Criterion]:
        """`name` → its latest version, `name@v2` → that version (our ids work too), in the order given.
        An unknown or deleted name or version is a 400 naming the `op-criteria` header."""
        found: list[Criterion] = []
        async with self.db.connect() as conn:
            for ref in refs:
                criterion = await self._find(conn, project, ref)
                if criterion is None:
                    parsed = parse_ref(ref)
                    if parsed is not None and parsed[1] is not None and await self._find(conn, project, parsed[0]):
                        # OpenPipe's wording, which clients match on
                        raise InvalidRequestError(
                            f"Criterion version v{parsed[1]} not found for criterion {parsed[0]}", param="op-criteria"
                        )
                    raise InvalidRequestError(f"Criterion {ref} not found", param="op-criteria")
                found.append(criterion)
        return found

    async def find(self, project: str, ref: str) -> Criterion | None:
        """By id, `name` (latest version) or `name@vN`; None when the project has no such live version."""
        async with self.db.connect() as conn:
            return await self._find(conn, project, ref)

    async def get(self, project: str, ref: str, *, param: str = "name") -> Criterion:
        criterion = await self.find(project, ref)
        if criterion is None:
            raise _not_found(ref, param)
        return criterion

    async def list_latest(self, project: str) -> list[Criterion]:
        """The latest live version of each criterion, by name."""
        latest = (
            select(criteria.c.name, func.max(criteria.c.version).label("version"))
            .where(criteria.c.project == project, criteria.c.deleted_at.is_(None))
            .group_by(criteria.c.name)
            .subquery()
        )
        query = (
            select(criteria)
            .join(latest, (criteria.c.name == latest.c.name) & (criteria.c.version == latest.c.version))
            .where(criteria.c.project == project)
            .order_by(criteria.c.name)
        )
        async with self.db.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_criterion(row) for row in rows]

    async def versions(self, project: str, name: str) -> list[Criterion]:
        """Every live version of a criterion, oldest first."""
        query = (
            select(criteria)
            .where(criteria.c.project == project, criteria.c.name == name, criteria.c.deleted_at.is_(None))
            .order_by(criteria.c.version)
        )
        if has_nul(name):
            raise _not_found(name, "name")
        async with self.db.connect() as conn:
            rows = (await conn.execute(query)).all()
        if not rows:
            raise _not_found(name, "name")
        return [_criterion(row) for row in rows]

    async def _find(self, conn: AsyncConnection, project: str, ref: str) -> Criterion | None:
        if _ID.match(ref):
            row = (
                await conn.execute(
                    select(criteria).where(
                        criteria.c.id == ref, criteria.c.project == project, criteria.c.deleted_at.is_(None)
                    )
                )
            ).first()
            if row is not None:
                return _criterion(row)
        parsed = parse_ref(ref)
        if parsed is None:
            return None
        name, version = parsed
        query = select(criteria).where(
            criteria.c.project == project, criteria.c.name == name, criteria.c.deleted_at.is_(None)
        )
        if version is not None:
            query = query.where(criteria.c.version == version)
        row = (await conn.execute(query.order_by(criteria.c.version.desc()).limit(1))).first()
        return _criterion(row) if row is not None else None

    # --- writing ------------------------------------------------------------------------------------------

    async def create(self, project: str, request: wire.CreateCriterionRequest) -> Criterion:
        """Version 1 of a new criterion (or the next number, for a name that was deleted); 409 if it exists."""
        spec = self.spec(
            request.description,
            request.instructions,
            request.judge_model,
            request.judge_settings.model_dump() if request.judge_settings is not None else None,
        )
        for _ in range(_WRITE_TRIES):
            try:
                async with self.db.begin() as conn:
                    latest, version = await self._head(conn, project, request.name)
                    if latest is not None:
                        raise CriterionExistsError(
                            f"A criterion named '{request.name}' already exists in this project. Create a new "
                            f"version with POST /v1/criteria/{request.name}/versions, or delete it first.",
                            param="name",
                        )
                    return await self._insert(conn, project, request.name, spec, version)
            except IntegrityError:
                continue  # another writer took the number; look again
        raise _busy(request.name)

    async def new_version(self, project: str, name: str, request: wire.NewCriterionVersionRequest) -> Criterion:
        """The next version: the latest one with the fields the request sets changed."""
        if not any(getattr(request, f) is not None for f in _FIELDS):
            raise InvalidRequestError(
                "A new version must change at least one of: " + ", ".join(_FIELDS) + ".", param=None
            )
        for _ in range(_WRITE_TRIES):
            try:
                async with self.db.begin() as conn:
                    latest, version = await self._head(conn, project, name)
                    if latest is None:
                        raise _not_found(name, "name")
                    settings = None
                    if request.judge_settings is not None:
                        settings = {**latest.judge_settings, **request.judge_settings}
                    spec = self.spec(
                        request.description if request.description is not None else latest.description,
                        request.instructions if request.instructions is not None else latest.instructions,
                        request.judge_model if request.judge_model is not None else latest.judge_model,
                        settings if settings is not None else latest.judge_settings,
                    )
                    if spec == _normalized(latest):
                        raise InvalidRequestError(
                            f"Nothing changed: {latest.ref} already has these fields. A new version must "
                            "differ from the latest one.",
                        )
                    return await self._insert(conn, project, name, spec, version)
            except IntegrityError:
                continue
        raise _busy(name)

    async def delete(self, project: str, name: str) -> wire.DeletedCriterion:
        """Mark every version deleted; judged logs keep naming their version."""
        parsed = parse_ref(name)
        if parsed is None or parsed[1] is not None:
            raise _not_found(name, "name")  # versions are deleted together: `name@v2` names no criterion
        async with self.db.begin() as conn:
            latest, _ = await self._head(conn, project, name)
            if latest is None:
                raise _not_found(name, "name")
            await conn.execute(
                update(criteria)
                .where(criteria.c.project == project, criteria.c.name == name, criteria.c.deleted_at.is_(None))
                .values(deleted_at=now_ms())
            )
        return wire.DeletedCriterion(id=latest.id, name=name)

    async def sync(self, project: str, specs: Iterable[tuple[str, CriterionSpec]]) -> list[Criterion]:
        """Make each (name, spec) the latest version: a new criterion is created, a changed one gets a new
        version, an unchanged one is left alone. Returns the versions written. Criteria not named are kept."""
        written: list[Criterion] = []
        for name, spec in specs:
            spec = self.spec(spec.description, spec.instructions, spec.judge_model or None, spec.judge_settings)
            for _ in range(_WRITE_TRIES):
                try:
                    async with self.db.begin() as conn:
                        latest, version = await self._head(conn, project, name)
                        if latest is None or _normalized(latest) != spec:
                            written.append(await self._insert(conn, project, name, spec, version))
                    break
                except IntegrityError:
                    continue  # another replica wrote it meanwhile: compare again
            else:
                raise _busy(name)
        return written

    def spec(
        self,
        description: str | None,
        instructions: str,
        judge_model: str | None,
        judge_settings: dict[str, Any] | None,
    ) -> CriterionSpec:
        """A checked spec: the judge model defaults and must be served; settings get every default."""
        model = judge_model if judge_model is not None else self.default_judge_model
        if self.known_models is not None and not self.known_models(model):
            raise InvalidRequestError(
                f"The judge model `{model}` is not served here. GET /v1/models lists the models this server "
                "serves; leave judge_model out for the default.",
                param="judge_model",
                code="model_not_found",
            )
        spec = CriterionSpec(description or "", instructions, model, _settings(judge_settings, "judge_settings"))
        for name in ("description", "instructions", "judge_model"):
            check_text(getattr(spec, name), name)
        return spec

    @staticmethod
    async def _head(conn: AsyncConnection, project: str, name: str) -> tuple[Criterion | None, int]:
        """The latest live version (None when there is none) and the number the next version gets.

        Both come from one statement: under PostgreSQL's READ COMMITTED a second statement would see a
        version that a concurrent writer committed after the first, so two writers could both find no
        criterion and then insert different numbers. From one snapshot they insert the same number and
        the unique constraint turns the loser into a retry that sees the winner."""
        if has_nul(name):
            return None, 1
        row = (
            await conn.execute(
                select(criteria)
                .where(criteria.c.project == project, criteria.c.name == name)
                .order_by(criteria.c.version.desc())
                .limit(1)
            )
        ).first()
        if row is None:
            return None, 1
        # Versions are deleted together, so when the newest row is deleted every older one is too.
        top = _criterion(row)
        return (top if row.deleted_at is None else None), top.version + 1

    @staticmethod
    async def _insert(conn: AsyncConnection, project: str, name: str, spec: CriterionSpec, version: int) -> Criterion:
        if not _NAME.match(name):
            raise InvalidRequestError(
                f"Invalid criterion name {name!r}: use a-z, A-Z, 0-9, underscores and dashes, at most 64.",
                param="name",
            )
        criterion = Criterion(
            id=new_id("crit"),
            project=project,
            name=name,
            version=version,
            description=spec.description,
            instructions=spec.instructions,
            judge_model=spec.judge_model,
            judge_settings=spec.judge_settings,
            created_at=now_ms(),
        )
        await conn.execute(
            insert(criteria).values(
                id=criterion.id,
                project=project,
                name=name,
                version=criterion.version,
                description=criterion.description,
                instructions=criterion.instructions,
                judge_model=criterion.judge_model,
                judge_settings=criterion.judge_settings,
                created_at=criterion.created_at,
            )
        )
        return criterion


async def sync_config_criteria(service: CriteriaService, settings: Settings) -> list[Criterion]:
    """The config file's `[[criteria]]` as the latest versions of the project `default` (at start-up)."""
    written = await service.sync(
        DEFAULT_PROJECT,
        [
            (c.name, CriterionSpec(c.description, c.instructions, c.judge_model or "", c.judge_settings))
            for c in settings.criteria
        ],
    )
    for criterion in written:
        log.info("criterion %s written from the config file", criterion.ref)
    return written


def _normalized(criterion: Criterion) -> CriterionSpec:
    """A stored version's spec with today's defaults filled in, to compare with a new one."""
    try:
        settings = _settings(criterion.judge_settings, "judge_settings")
    except InvalidRequestError:
        settings = criterion.judge_settings
    return CriterionSpec(criterion.description, criterion.instructions, criterion.judge_model, settings)


def _busy(name: str) -> ConflictError:
    return ConflictError(f"Criterion '{name}' is being changed by other requests; try again.", code="conflict")
