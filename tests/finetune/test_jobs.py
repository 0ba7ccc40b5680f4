"""The training queue in the store (SQLite and PostgreSQL): one runner per job, interrupted jobs queued again or
failed, and the service's checks that refuse a bad request before a job exists."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import update

from pipeserve.errors import InvalidRequestError
from pipeserve.finetune import service as service_module
from pipeserve.finetune.service import TrainingService
from pipeserve.finetune.store import SlugTakenError, TrainedModelStore
from pipeserve.protocol.datasets import CreateDatasetEntriesRequest, CreateDatasetRequest
from pipeserve.protocol.models_api import CreateModelRequest
from pipeserve.service.datasets import DatasetService
from pipeserve.settings import Settings
from pipeserve.store.db import Database, now_ms
from pipeserve.store.tables import trained_models
from pipeserve.validation import validate


def row(project: str, slug: str | None = None) -> dict[str, Any]:
    return {
        "id": f"ft_{uuid.uuid4().hex}",
        "project": project,
        "slug": slug or f"m-{uuid.uuid4().hex[:12]}",
        "base_model": "SmolLM2-135M-Instruct",
        "dataset_id": "ds_x",
        "request": {"trainingConfig": {"provider": "openpipe"}},
        "plan": {"base": {"kind": "served", "model": "SmolLM2-135M-Instruct"}},
    }


async def test_a_job_is_claimed_once_and_its_runner_alone_writes_it(database: Database, project: str) -> None:
    store = TrainedModelStore(database)
    job = await store.insert(row(project))
    claimed = await store.claim("runner-a", job.id)
    assert claimed is not None and claimed.status == "TRAINING" and claimed.attempts == 1
    assert await store.claim("runner-b", job.id) is None
    assert await store.update(job.id, "runner-a", progress={"phase": "training", "step": 3})
    assert not await store.update(job.id, "runner-b", progress={"phase": "stolen"})
    found = await store.get(project, job.slug)
    assert found is not None and found.progress == {"phase": "training", "step": 3}
    with pytest.raises(SlugTakenError):
        await store.insert(row("another-project", job.slug))  # served names are one namespace


async def test_an_interrupted_job_is_queued_again_then_failed(database: Database, project: str) -> None:
    store = TrainedModelStore(database)
    job = await store.insert(row(project))
    for attempt in (1, 2, 3):
        claimed = await store.claim("gone", job.id)
        assert claimed is not None and claimed.attempts == attempt
        async with database.begin() as conn:  # the runner stopped beating a while ago
            stale = update(trained_models).where(trained_models.c.id == job.id).values(heartbeat_at=now_ms() - 120_000)
            await conn.execute(stale)
        assert job.slug in await store.recover(stale_ms=60_000, max_attempts=3)
        found = await store.get(project, job.slug)
        assert found is not None
        if attempt < 3:
            assert found.status == "PENDING" and found.progress == {"phase": "queued", "interrupted": True}
        else:
            assert found.status == "ERROR" and "interrupted 3 times" in (found.error_message or "")


async def test_a_live_job_is_left_alone(database: Database, project: str) -> None:
    store = TrainedModelStore(database)
    job = await store.insert(row(project))
    await store.claim("alive", job.id)
    assert job.slug not in await store.recover(stale_ms=60_000, max_attempts=3)
    assert (await store.get(project, job.slug)).status == "TRAINING"  # type: ignore[union-attr]


async def _dataset(database: Database, project: str, entries: list[dict[str, Any]]) -> str:
    datasets = DatasetService(database)
    dataset = await datasets.create_dataset(project, CreateDatasetRequest(name="d"))
    await datasets.add_entries(project, dataset.id, CreateDatasetEntriesRequest(entries=entries))
    return dataset.id


def _request(dataset_id: str, slug: str, **config: Any) -> CreateModelRequest:
    body = {"datasetId": dataset_id, "slug": slug, "trainingConfig": {"provider": "openpipe", **config}}
    return validate(CreateModelRequest, body)


async def test_without_the_train_extra_a_request_says_how_to_install_it(
    database: Database, project: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service_module, "missing_train_packages", lambda: ["torch", "peft"])
    service = TrainingService(TrainedModelStore(database), Settings)
    with pytest.raises(InvalidRequestError) as caught:
        await service.create(project, _request("ds_any", "needs-torch"))
    assert "pip install 'pipeserve[train]'" in caught.value.message and "torch, peft" in caught.value.message
    assert caught.value.code == "train_extra_missing"


async def test_a_valid_request_is_queued_with_its_plan(database: Database, project: str) -> None:
    pytest.importorskip("gguf", reason="reading the base model's architecture needs the train extra")
    turn = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    dataset_id = await _dataset(
        database, project, [{"messages": turn, "split": "TRAIN"}, {"messages": turn, "split": "TEST"}]
    )
    service = TrainingService(TrainedModelStore(database), Settings)
    slug = f"ok-{uuid.uuid4().hex[:8]}"
    model = await service.create(project, _request(dataset_id, slug, sft_hyperparameters={"num_epochs": 2}))
    assert model.status == "PENDING" and model.served_id == f"openpipe:{slug}"
    assert model.plan["sft"]["epochs"] == 2 and model.plan["base"]["model"] == "SmolLM2-135M-Instruct"
    # A queued job may serve as a base only once it is deployed.
    with pytest.raises(InvalidRequestError, match="not DEPLOYED"):
        await service.create(project, _request(dataset_id, f"{slug}-2", baseModel=f"openpipe:{slug}"))
    assert await service.delete(project, slug) == model
    assert await service.get(project, slug) is None
