"""A trainingConfig resolved into a job's plan: OpenPipe's hyperparameters act, ours sit beside them, and every
bad value is a 400 naming its field."""

from __future__ import annotations

from typing import Any

import pytest

from pipeserve.errors import InvalidRequestError
from pipeserve.finetune.plan import BaseRef, Plan, resolve, shown
from pipeserve.protocol.models_api import TrainingConfig
from pipeserve.validation import validate

BASE = BaseRef(kind="served", model="SmolLM2-135M-Instruct")


def plan(config: dict[str, Any], train: int = 100, preference: int = 0) -> Plan:
    wire = validate(TrainingConfig, {"provider": "openpipe", **config})
    return resolve(wire, BASE, train_entries=train, preference_entries=preference)


def test_defaults_are_lora_with_automatic_epochs_and_batch() -> None:
    small = plan({})
    assert small.method == "lora" and small.lora_rank == 16 and small.lora_alpha == 32
    assert small.sft is not None and small.sft.epochs == 2 and small.sft.batch_size == 8
    assert small.sft.learning_rate == pytest.approx(5e-4)
    assert small.preference is None
    tiny = plan({}, train=5)
    assert tiny.sft is not None and tiny.sft.epochs == 10 and tiny.sft.batch_size == 5


def test_the_sdk_hyperparameters_act_and_ours_sit_beside_them() -> None:
    resolved = plan(
        {
            "sft_hyperparameters": {
                "num_epochs": 1.5,
                "batch_size": 4.0,
                "learning_rate_multiplier": 2,
                "lora_rank": 8,
                "max_length": 512,
                "seed": 7,
            }
        }
    )
    assert resolved.sft is not None
    assert (resolved.sft.epochs, resolved.sft.batch_size) == (1.5, 4)
    assert resolved.sft.learning_rate == pytest.approx(1e-3)
    assert (resolved.lora_rank, resolved.lora_alpha, resolved.max_length, resolved.seed) == (8, 16, 512, 7)
    full = plan({"sft_hyperparameters": {"full_fine_tuning": True, "learning_rate": 1e-5}})
    assert full.method == "full" and full.lora_rank is None and full.sft is not None
    assert full.sft.learning_rate == 1e-5
    assert shown(full)["method"] == "full" and "lora_rank" not in shown(full)


def test_preference_tuning_uses_the_rejected_messages() -> None:
    resolved = plan(
        {
            "enable_preference_tuning": True,
            "preference_hyperparameters": {"variant": "APO Zero", "training_beta": 0.2, "adapter_weight": 0.5},
        },
        preference=10,
    )
    assert resolved.preference is not None and resolved.sft is not None
    assert (resolved.preference.variant, resolved.preference.beta, resolved.preference.adapter_weight) == (
        "APO Zero",
        0.2,
        0.5,
    )
    only = plan({"enable_sft": False, "enable_preference_tuning": True}, preference=3)
    assert only.sft is None and only.preference is not None


def test_the_deprecated_hyperparameters_still_act() -> None:
    resolved = plan(
        {"hyperparameters": {"num_epochs": 3, "is_preference_tuning_enabled": True, "preference_tuning_num_epochs": 1}},
        preference=4,
    )
    assert resolved.sft is not None and resolved.sft.epochs == 3
    assert resolved.preference is not None and resolved.preference.epochs == 1


@pytest.mark.parametrize(
    ("config", "preference", "param"),
    [
        ({"sft_hyperparameters": {"num_epochs": 0}}, 0, "trainingConfig.sft_hyperparameters.num_epochs"),
        ({"sft_hyperparameters": {"num_epochs": 51}}, 0, "trainingConfig.sft_hyperparameters.num_epochs"),
        ({"sft_hyperparameters": {"batch_size": 2.5}}, 0, "trainingConfig.sft_hyperparameters.batch_size"),
        ({"sft_hyperparameters": {"batch_size": 0}}, 0, "trainingConfig.sft_hyperparameters.batch_size"),
        ({"sft_hyperparameters": {"learning_rate_multiplier": -1}}, 0, None),
        ({"sft_hyperparameters": {"lora_rank": 1000}}, 0, "trainingConfig.sft_hyperparameters.lora_rank"),
        ({"sft_hyperparameters": {"full_fine_tuning": True, "lora_rank": 8}}, 0, None),
        ({"sft_hyperparameters": {"learning_rate": 1e-4, "learning_rate_multiplier": 2}}, 0, None),
        ({"sft_hyperparameters": {"max_length": 8}}, 0, "trainingConfig.sft_hyperparameters.max_length"),
        ({"enable_sft": False}, 0, "trainingConfig.enable_sft"),
        ({"enable_sft": False, "sft_hyperparameters": {"num_epochs": 1}}, 0, None),
        ({"enable_preference_tuning": True}, 0, "trainingConfig.enable_preference_tuning"),
        ({"preference_hyperparameters": {"training_beta": 0.1}}, 5, "trainingConfig.preference_hyperparameters"),
        (
            {"enable_preference_tuning": True, "preference_hyperparameters": {"adapter_weight": 2}},
            5,
            "trainingConfig.preference_hyperparameters.adapter_weight",
        ),
        ({"hyperparameters": {"num_epochs": 1}, "sft_hyperparameters": {"num_epochs": 1}}, 0, None),
    ],
)
def test_bad_values_are_400s_naming_the_field(config: dict[str, Any], preference: int, param: str | None) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        plan(config, preference=preference)
    assert caught.value.message
    assert caught.value.param is not None and caught.value.param.startswith("trainingConfig")
    if param is not None:
        assert caught.value.param == param
