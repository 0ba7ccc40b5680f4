"""The model endpoints on the real server: one `GET /models` both SDKs read, and every bad `POST /models` a 400
in OpenAI's error shape before any job exists. (Training itself: test_end_to_end.py.)"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import openai
import pytest

from pipeserve.finetune import missing_train_packages
from pipeserve.protocol.models import ModelCard, ModelList
from tests.conftest import MODEL, Server
from tests.finetune.task import entries

# Refusals that come after the check for the train extra (a base model's GGUF is read with it).
with_train_extra = pytest.mark.skipif(
    bool(missing_train_packages()), reason="needs the train extra: pip install '.[train]'"
)

TURN = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]


@pytest.fixture(scope="module")
def datasets(server: Server) -> dict[str, str]:
    """A dataset with TRAIN and TEST entries, one with TEST entries only, one with an entry no request can be."""
    made = {}
    for name, rows in {
        "good": [dict(e, split="TRAIN") for e in entries(4)] + [dict(e, split="TEST") for e in entries(2, seed=5)],
        "test_only": [{"messages": TURN, "split": "TEST"}],
        "image": [
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}]},
                    {"role": "assistant", "content": "A cat."},
                ],
                "split": "TRAIN",
            }
        ],
    }.items():
        dataset = httpx.post(f"{server.v1}/datasets", json={"name": f"ft-{name}"}, timeout=30).json()["id"]
        added = httpx.post(f"{server.v1}/datasets/{dataset}/entries", json={"entries": rows}, timeout=30).json()
        assert added["entries_created"] == len(rows), added
        made[name] = dataset
    return made


def create(server: Server, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server.url}/api/v1/models", json=body, timeout=60)


def error_of(response: httpx.Response, status: int = 400) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error  # type: ignore[no-any-return]


def test_the_model_list_is_read_by_the_openai_sdk_and_has_openpipe_fields(
    server: Server, client: openai.OpenAI
) -> None:
    listed = [model.id for model in client.models.list()]
    assert MODEL in listed
    for base in (server.v1, f"{server.url}/api/v1"):
        data = ModelList.model_validate(httpx.get(f"{base}/models", timeout=30).json()).data
        embedded = next(card for card in data if card.id == MODEL)
        assert embedded.openpipe.status == "DEPLOYED" and embedded.name == MODEL
        assert embedded.contextWindow == embedded.context_window and embedded.contextWindow > 0
        assert embedded.capabilities == ["chat", "tools", "json"]
    one = ModelCard.model_validate(httpx.get(f"{server.v1}/models/openpipe:smollm2-135m-instruct", timeout=30).json())
    assert one.id == MODEL


def valid(datasets: dict[str, str], **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "datasetId": datasets["good"],
        "slug": f"never-{uuid.uuid4().hex[:8]}",
        "trainingConfig": {"provider": "openpipe", "baseModel": MODEL},
    }
    return body | changes


def _config(**config: Any) -> dict[str, Any]:
    return {"trainingConfig": {"provider": "openpipe", **config}}


SFT = "trainingConfig.sft_hyperparameters"


@with_train_extra
@pytest.mark.parametrize(
    ("change", "param", "words"),
    [
        ({"datasetId": "ds_missing"}, "datasetId", "No dataset"),
        ({"slug": "Bad Slug!"}, "slug", "Invalid slug"),
        ({"slug": "smollm2-135m-instruct"}, "slug", "taken"),
        ({"trainingConfig": {"provider": "openai", "baseModel": "gpt-4o-mini"}}, "trainingConfig.provider", "openpipe"),
        (_config(baseModel="meta-llama/Llama-3.1-8B"), "trainingConfig.baseModel", "fine-tune"),
        (_config(enable_preference_tuning=True), "trainingConfig.enable_preference_tuning", "rejected"),
        (_config(sft_hyperparameters={"num_epochs": -1}), f"{SFT}.num_epochs", "num_epochs"),
        (_config(sft_hyperparameters={"dropout": 0.1}), f"{SFT}.dropout", ""),
        (_config(sft_hyperparameters={"batch_size": "big"}), f"{SFT}.batch_size", ""),
        ({"pruningRuleIds": ["pr_1"]}, "pruningRuleIds", "Pruning"),
        ({"defaultTemperature": 0.5}, "defaultTemperature", "temperature"),
        ({"evaluation": {"criteria": ["no-such-criterion"]}}, "evaluation.criteria", "not found"),
    ],
)
def test_bad_requests_are_400s_before_anything_runs(
    server: Server, datasets: dict[str, str], change: dict[str, Any], param: str, words: str
) -> None:
    body = valid(datasets, **change)
    error = error_of(create(server, body))
    assert error["param"] == param and words in error["message"]
    assert httpx.get(f"{server.v1}/models/{body['slug']}", timeout=30).status_code in (400, 404)


@with_train_extra
def test_datasets_that_cannot_train_are_refused(server: Server, datasets: dict[str, str]) -> None:
    error = error_of(create(server, valid(datasets, datasetId=datasets["test_only"])))
    assert "no TRAIN entries" in error["message"]
    error = error_of(create(server, valid(datasets, datasetId=datasets["image"])))
    assert "text only" in error["message"]
    error = error_of(create(server, {"slug": "x", "trainingConfig": {"provider": "openpipe"}}))
    assert error["param"] == "datasetId"


def test_unknown_and_configured_models_cannot_be_deleted_or_downloaded(server: Server) -> None:
    assert error_of(httpx.delete(f"{server.v1}/models/no-such-model", timeout=30), 404)["code"] == "model_not_found"
    assert "configured" in error_of(httpx.delete(f"{server.v1}/models/{MODEL}", timeout=30))["message"]
    assert httpx.get(f"{server.v1}/models/no-such-model", timeout=30).status_code == 404
    assert httpx.get(f"{server.v1}/models/no-such-model/weights", timeout=30).status_code == 404
    assert httpx.get(f"{server.v1}/models/no-such-model/weights/model.gguf", timeout=30).status_code == 404


@pytest.mark.skipif(not missing_train_packages(), reason="the train extra is installed here")
def test_without_the_train_extra_training_is_a_400_saying_how_to_install_it(
    server: Server, datasets: dict[str, str]
) -> None:
    error = error_of(create(server, valid(datasets)))
    assert error["code"] == "train_extra_missing" and "pip install" in error["message"]
