"""A `trainingConfig` resolved into what a job runs: every default decided, every value checked (a 400 naming
the field, before anything runs). The result is stored with the model and shown as `openpipe.hyperparameters`.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, Field

from pipeserve.errors import InvalidRequestError
from pipeserve.finetune.spec import BASE_LEARNING_RATE, BASE_PREFERENCE_LEARNING_RATE, Preference, Sft
from pipeserve.protocol.models_api import LegacyHyperparameters, PreferenceHyperparameters, SftHyperparameters
from pipeserve.protocol.models_api import TrainingConfig as TrainingConfigWire

MAX_EPOCHS = 50
MAX_BATCH = 256
DEFAULT_BATCH = 8
DEFAULT_MAX_LENGTH = 2048


class BaseRef(BaseModel):
    """The model a job trains from."""

    kind: str  # served: a configured llama.cpp model | trained: a model trained here
    model: str  # the configured model's id, or the trained model's slug
    # The base's llama.cpp options (its `[[models]]` keys), which the trained model is served with too.
    options: dict[str, Any] = Field(default_factory=dict)


class Plan(BaseModel):
    base: BaseRef
    method: str  # lora | full
    lora_rank: int | None
    lora_alpha: int | None
    max_length: int
    seed: int
    sft: Sft | None
    preference: Preference | None


def _param(name: str) -> str:
    return f"trainingConfig.{name}"


def _bad(message: str, name: str) -> InvalidRequestError:
    return InvalidRequestError(message, param=_param(name))


def _in_range(value: float | None, name: str, low: float, high: float, *, low_open: bool = True) -> float | None:
    if value is None:
        return None
    if (value <= low if low_open else value < low) or value > high:
        bound = f"greater than {low}" if low_open else f"at least {low}"
        raise _bad(f"'{name.rsplit('.', 1)[-1]}' must be {bound} and at most {high}; got {value}.", name)
    return value


def _integer(value: float | None, name: str, low: int, high: int) -> int | None:
    if value is None:
        return None
    if value != int(value) or not low <= value <= high:
        raise _bad(f"'{name.rsplit('.', 1)[-1]}' must be a whole number from {low} to {high}; got {value}.", name)
    return int(value)


def _batch(value: str | float | None, name: str, examples: int) -> int:
    if value is None or value == "auto":
        return max(1, min(DEFAULT_BATCH, examples))
    return _integer(float(value), name, 1, MAX_BATCH) or 1


def auto_epochs(examples: int) -> float:
    """Enough passes that a small dataset is seen about 200 times in all, between 2 and 10 epochs."""
    return float(min(10, max(2, math.ceil(200 / max(1, examples)))))


def _merge_legacy(config: TrainingConfigWire) -> TrainingConfigWire:
    """The deprecated flat `hyperparameters` as the current fields; both at once is ambiguous."""
    legacy: LegacyHyperparameters | None = config.hyperparameters
    if legacy is None:
        return config
    if config.sft_hyperparameters is not None or config.preference_hyperparameters is not None:
        raise _bad(
            "Send either the deprecated 'hyperparameters' or 'sft_hyperparameters'/'preference_hyperparameters', "
            "not both.",
            "hyperparameters",
        )
    sft = SftHyperparameters(
        batch_size=legacy.batch_size,
        learning_rate_multiplier=legacy.learning_rate_multiplier,
        num_epochs=legacy.num_epochs,
    )
    preference = PreferenceHyperparameters(
        variant=legacy.preference_tuning_variant,
        learning_rate_multiplier=legacy.preference_tuning_learning_rate_multiplier,
        num_epochs=legacy.preference_tuning_num_epochs,
        training_beta=legacy.preference_tuning_training_beta,
        adapter_weight=legacy.preference_tuning_adapter_weight,
    )
    return config.model_copy(
        update={
            "enable_sft": config.enable_sft if config.enable_sft is not None else legacy.is_sft_enabled,
            "enable_preference_tuning": (
                config.enable_preference_tuning
                if config.enable_preference_tuning is not None
                else legacy.is_preference_tuning_enabled
            ),
            "sft_hyperparameters": sft,
            "preference_hyperparameters": preference,
            "hyperparameters": None,
        }
    )


def resolve(config: TrainingConfigWire, base: BaseRef, *, train_entries: int, preference_entries: int) -> Plan:
    """The plan for a dataset of `train_entries` TRAIN entries, `preference_entries` of them with a rejected
    message."""
    legacy_sent = config.hyperparameters is not None
    config = _merge_legacy(config)
    sft_on = config.enable_sft is not False
    preference_on = config.enable_preference_tuning is True
    sft_wire = config.sft_hyperparameters or SftHyperparameters()
    pref_wire = config.preference_hyperparameters or PreferenceHyperparameters()
    if not legacy_sent:
        if config.sft_hyperparameters is not None and not sft_on:
            raise _bad("'sft_hyperparameters' are given but 'enable_sft' is false; drop one.", "sft_hyperparameters")
        if config.preference_hyperparameters is not None and not preference_on:
            raise _bad(
                "'preference_hyperparameters' are given but 'enable_preference_tuning' is not true; set it to true "
                "to tune on the entries' rejected messages.",
                "preference_hyperparameters",
            )
    if not sft_on and not preference_on:
        raise _bad("Nothing to train: 'enable_sft' is false and 'enable_preference_tuning' is not true.", "enable_sft")
    if preference_on and preference_entries == 0:
        raise InvalidRequestError(
            "Preference tuning needs TRAIN entries with a 'rejected_message' (the answer not to give), and this "
            "dataset has none. Add them, or leave 'enable_preference_tuning' off.",
            param="trainingConfig.enable_preference_tuning",
        )

    full = bool(sft_wire.full_fine_tuning)
    method = "full" if full else "lora"
    if full and (sft_wire.lora_rank is not None or sft_wire.lora_alpha is not None):
        raise _bad(
            "'lora_rank' and 'lora_alpha' apply to LoRA; with 'full_fine_tuning' every weight is trained. Drop one.",
            "sft_hyperparameters.lora_rank",
        )
    rank = None if full else (_integer(sft_wire.lora_rank, "sft_hyperparameters.lora_rank", 1, 256) or 16)
    alpha = (
        None if full else (_integer(sft_wire.lora_alpha, "sft_hyperparameters.lora_alpha", 1, 4096) or 2 * (rank or 16))
    )
    max_length = _integer(sft_wire.max_length, "sft_hyperparameters.max_length", 16, 131072) or DEFAULT_MAX_LENGTH
    seed = sft_wire.seed if sft_wire.seed is not None else 0
    if not 0 <= seed < 2**32:
        raise _bad(f"'seed' must be from 0 to {2**32 - 1}; got {seed}.", "sft_hyperparameters.seed")

    sft: Sft | None = None
    if sft_on:
        if sft_wire.learning_rate is not None and sft_wire.learning_rate_multiplier is not None:
            raise _bad(
                "Send 'learning_rate' or 'learning_rate_multiplier', not both.", "sft_hyperparameters.learning_rate"
            )
        multiplier = _in_range(
            sft_wire.learning_rate_multiplier, "sft_hyperparameters.learning_rate_multiplier", 0, 100
        )
        rate = _in_range(sft_wire.learning_rate, "sft_hyperparameters.learning_rate", 0, 1)
        epochs = _in_range(sft_wire.num_epochs, "sft_hyperparameters.num_epochs", 0, MAX_EPOCHS)
        sft = Sft(
            epochs=epochs or auto_epochs(train_entries),
            batch_size=_batch(sft_wire.batch_size, "sft_hyperparameters.batch_size", train_entries),
            learning_rate=rate or BASE_LEARNING_RATE[method] * (multiplier or 1.0),
        )
    preference: Preference | None = None
    if preference_on:
        multiplier = _in_range(
            pref_wire.learning_rate_multiplier, "preference_hyperparameters.learning_rate_multiplier", 0, 100
        )
        epochs = _in_range(pref_wire.num_epochs, "preference_hyperparameters.num_epochs", 0, MAX_EPOCHS)
        beta = _in_range(pref_wire.training_beta, "preference_hyperparameters.training_beta", 0, 100)
        weight = _in_range(pref_wire.adapter_weight, "preference_hyperparameters.adapter_weight", 0, 1, low_open=False)
        preference = Preference(
            variant=pref_wire.variant or "DPO",
            epochs=epochs or auto_epochs(preference_entries),
            batch_size=_batch(pref_wire.batch_size, "preference_hyperparameters.batch_size", preference_entries),
            learning_rate=BASE_PREFERENCE_LEARNING_RATE[method] * (multiplier or 1.0),
            beta=beta or 0.1,
            adapter_weight=1.0 if weight is None else weight,
        )
    return Plan(
        base=base,
        method=method,
        lora_rank=rank,
        lora_alpha=alpha,
        max_length=max_length,
        seed=seed,
        sft=sft,
        preference=preference,
    )


def shown(plan: Plan) -> dict[str, Any]:
    """`openpipe.hyperparameters`: the plan in OpenPipe's names, ours beside them."""
    out: dict[str, Any] = {"method": plan.method, "max_length": plan.max_length, "seed": plan.seed}
    if plan.lora_rank is not None:
        out |= {"lora_rank": plan.lora_rank, "lora_alpha": plan.lora_alpha}
    if plan.sft is not None:
        out["sft"] = {
            "num_epochs": plan.sft.epochs,
            "batch_size": plan.sft.batch_size,
            "learning_rate": plan.sft.learning_rate,
        }
    if plan.preference is not None:
        p = plan.preference
        out["preference"] = {
            "variant": p.variant,
            "num_epochs": p.epochs,
            "batch_size": p.batch_size,
            "learning_rate": p.learning_rate,
            "training_beta": p.beta,
            "adapter_weight": p.adapter_weight,
        }
    return out
