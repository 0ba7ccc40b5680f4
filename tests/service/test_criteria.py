"""The criteria service on SQLite and PostgreSQL: versions, resolution, deletion, config sync, races."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pipeserve.errors import CriterionExistsError, InvalidRequestError, NotFoundError
from pipeserve.protocol.criteria import CreateCriterionRequest, NewCriterionVersionRequest
from pipeserve.service.criteria import CriteriaService, CriterionSpec, parse_ref
from pipeserve.store.db import Database
from pipeserve.validation import validate

JUDGE = "judge-model"
SERVED = {JUDGE, "other-model"}


def service(database: Database) -> CriteriaService:
    return CriteriaService(database, JUDGE, SERVED.__contains__)


def create_request(name: str = "polite", **extra: Any) -> CreateCriterionRequest:
    return validate(CreateCriterionRequest, {"name": name, "instructions": "PASS if polite."} | extra)


def version_request(**fields: Any) -> NewCriterionVersionRequest:
    return validate(NewCriterionVersionRequest, fields)


def test_refs_parse() -> None:
    assert parse_ref("polite") == ("polite", None)
    assert parse_ref("polite@v12") == ("polite", 12)
    assert parse_ref("a b") is None and parse_ref("x@2") is None and parse_ref("x@v") is None


async def test_create_fills_every_default(database: Database, project: str) -> None:
    criterion = await service(database).create(project, create_request(description="Tone"))
    assert (criterion.name, criterion.version, criterion.ref) == ("polite", 1, "polite@v1")
    assert criterion.id.startswith("crit_") and criterion.project == project
    assert criterion.judge_model == JUDGE and criterion.description == "Tone"
    assert criterion.judge_settings == {"temperature": 0.0, "top_p": 1.0, "max_tokens": 128, "seed": None}
    wire = criterion.to_wire()
    assert wire.object == "criterion" and wire.ref == "polite@v1" and wire.created.endswith("Z")


async def test_a_name_is_created_once(database: Database, project: str) -> None:
    criteria = service(database)
    await criteria.create(project, create_request())
    with pytest.raises(CriterionExistsError) as caught:
        await criteria.create(project, create_request())
    assert caught.value.status_code == 409 and caught.value.param == "name"


async def test_a_judge_model_must_be_served(database: Database, project: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        await service(database).create(project, create_request(judge_model="gpt-9"))
    assert caught.value.param == "judge_model" and "gpt-9" in caught.value.message


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"name": "has space", "instructions": "x"}, "name"),
        ({"name": "x" * 65, "instructions": "x"}, "name"),
        ({"name": "ok", "instructions": ""}, "instructions"),
        ({"name": "ok"}, "instructions"),
        ({"name": "ok", "instructions": "x", "judge_settings": {"temperature": 3}}, "judge_settings.temperature"),
        ({"name": "ok", "instructions": "x", "judge_settings": {"max_tokens": 4}}, "judge_settings.max_tokens"),
        ({"name": "ok", "instructions": "x", "judge_settings": {"top_k": 4}}, "judge_settings.top_k"),
        ({"name": "ok", "instructions": "x", "extra": 1}, "extra"),
    ],
)
def test_bad_definitions_are_400s_naming_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        validate(CreateCriterionRequest, body)
    assert caught.value.param == param


async def test_a_new_version_copies_what_it_does_not_change(database: Database, project: str) -> None:
    criteria = service(database)
    first = await criteria.create(project, create_request(description="Tone", judge_settings={"max_tokens": 64}))
    second = await criteria.new_version(
        project, "polite", version_request(instructions="PASS if very polite.", judge_settings={"temperature": 0.5})
    )
    assert second.version == 2 and second.ref == "polite@v2" and second.id != first.id
    assert second.instructions == "PASS if very polite." and second.description == "Tone"
    assert second.judge_settings == {"temperature": 0.5, "top_p": 1.0, "max_tokens": 64, "seed": None}
    # Versions are immutable: v1 still reads as it was written.
    assert await criteria.get(project, "polite@v1") == first
    assert await criteria.get(project, "polite") == second
    third = await criteria.new_version(project, "polite", version_request(judge_model="other-model"))
    assert third.version == 3 and third.judge_model == "other-model" and third.judge_settings == second.judge_settings
    assert [c.version for c in await criteria.versions(project, "polite")] == [1, 2, 3]


async def test_a_new_version_must_change_something(database: Database, project: str) -> None:
    criteria = service(database)
    await criteria.create(project, create_request())
    with pytest.raises(InvalidRequestError):
        await criteria.new_version(project, "polite", version_request())
    with pytest.raises(InvalidRequestError, match="Nothing changed"):
        await criteria.new_version(project, "polite", version_request(instructions="PASS if polite."))
    with pytest.raises(InvalidRequestError) as caught:
        await criteria.new_version(project, "polite", version_request(judge_model="gpt-9"))
    assert caught.value.param == "judge_model"
    with pytest.raises(NotFoundError):
        await criteria.new_version(project, "missing", version_request(instructions="x"))


async def test_resolve_latest_versions_and_ids(database: Database, project: str) -> None:
    criteria = service(database)
    polite = await criteria.create(project, create_request())
    brief = await criteria.create(project, create_request("brief"))
    polite2 = await criteria.new_version(project, "polite", version_request(description="v2"))
    resolved = await criteria.resolve(project, ["brief", "polite", "polite@v1", polite.id])
    assert resolved == [brief, polite2, polite, polite]
    for ref in ["nope", "nope@v1", "polite@1", "bad name", "crit_" + "0" * 32]:
        with pytest.raises(InvalidRequestError) as caught:
            await criteria.resolve(project, ["brief", ref])
        assert caught.value.param == "op-criteria" and caught.value.message == f"Criterion {ref} not found"
    # An unknown version of a known criterion, in OpenPipe's words
    with pytest.raises(InvalidRequestError) as caught:
        await criteria.resolve(project, ["polite@v9"])
    assert caught.value.message == "Criterion version v9 not found for criterion polite"
    assert [c.ref for c in await criteria.list_latest(project)] == ["brief@v1", "polite@v2"]


async def test_projects_do_not_see_each_other(database: Database, project: str) -> None:
    criteria = service(database)
    mine = await criteria.create(project, create_request())
    other = project + "-other"
    assert await criteria.find(other, "polite") is None and await criteria.find(other, mine.id) is None
    assert await criteria.list_latest(other) == []
    created = await criteria.create(other, create_request())  # the same name is free there
    assert created.version == 1
    with pytest.raises(NotFoundError):
        await criteria.delete(other + "-x", "polite")


async def test_delete_hides_every_version_and_a_new_one_continues_the_numbers(database: Database, project: str) -> None:
    criteria = service(database)
    first = await criteria.create(project, create_request())
    await criteria.new_version(project, "polite", version_request(description="2"))
    deleted = await criteria.delete(project, "polite")
    assert deleted.model_dump() == {"id": deleted.id, "name": "polite", "object": "criterion", "deleted": True}
    for ref in ("polite", "polite@v1", first.id):
        assert await criteria.find(project, ref) is None
    with pytest.raises(NotFoundError):
        await criteria.versions(project, "polite")
    with pytest.raises(NotFoundError):
        await criteria.delete(project, "polite")
    again = await criteria.create(project, create_request())
    # Judged logs may name polite@v1 and @v2 of the deleted criterion: the new one does not reuse them.
    assert again.version == 3
    assert [c.version for c in await criteria.versions(project, "polite")] == [3]


async def test_sync_writes_only_changes(database: Database, project: str) -> None:
    criteria = service(database)
    spec = CriterionSpec("Tone", "PASS if polite.", "", {"max_tokens": 32})
    [first] = await criteria.sync(project, [("polite", spec)])
    assert first.ref == "polite@v1" and first.judge_model == JUDGE and first.judge_settings["max_tokens"] == 32
    assert await criteria.sync(project, [("polite", spec)]) == []  # unchanged: nothing
    # Defaults spelled out are no change either.
    same = CriterionSpec("Tone", "PASS if polite.", JUDGE, {"max_tokens": 32, "temperature": 0})
    assert await criteria.sync(project, [("polite", same)]) == []
    changed = CriterionSpec("Tone", "PASS if very polite.", "", {"max_tokens": 32})
    [second] = await criteria.sync(project, [("polite", changed), ("polite", changed)])
    assert second.ref == "polite@v2"
    with pytest.raises(InvalidRequestError):
        await criteria.sync(project, [("x", CriterionSpec("", "i", "gpt-9", {}))])


async def test_concurrent_writers_get_distinct_versions(database: Database, project: str) -> None:
    criteria = service(database)
    await criteria.create(project, create_request())
    written = await asyncio.gather(
        *(criteria.new_version(project, "polite", version_request(description=str(i))) for i in range(5))
    )
    assert sorted(c.version for c in written) == [2, 3, 4, 5, 6]
    # The race is timing-dependent (PostgreSQL once let two of three creators win), so several rounds.
    for round_ in range(5):
        results = await asyncio.gather(
            *(criteria.create(project, create_request(f"racy{round_}")) for _ in range(6)), return_exceptions=True
        )
        assert sum(not isinstance(r, BaseException) for r in results) == 1
        assert all(isinstance(r, CriterionExistsError) for r in results if isinstance(r, BaseException))
        assert [c.version for c in await criteria.versions(project, f"racy{round_}")] == [1]


async def test_nul_characters_are_refused(database: Database, project: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        await service(database).create(project, create_request(instructions="a\x00b"))
    assert caught.value.param == "instructions"
    assert await service(database).find(project, "a\x00b") is None
