"""Wire models of OpenPipe's model endpoints: `POST /models` (training), and the `openpipe` object every model
of `GET /models` and `GET /models/{id}` carries (the `openpipe` SDK's `create_model`, `get_model`,
`list_models`, `delete_model`). Names are OpenPipe's, camelCase included.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from pipeserve.protocol.chat_completions import _Strict

ModelStatus = Literal[
    "PENDING", "TRAINING", "DEPLOYED", "ERROR", "DEPRECATED", "PENDING_DEPRECATION", "QUEUED", "PROVISIONING"
]
Capability = Literal["chat", "tools", "json"]

# ---------------------------------------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------------------------------------

Number = Annotated[float, Field(allow_inf_nan=False)]


class SftHyperparameters(_Strict):
    batch_size: Literal["auto"] | Number | None = None
    learning_rate_multiplier: Number | None = None
    num_epochs: Number | None = None
    # --- pipeserve extensions: how the model is trained here -------------------------------------------
    learning_rate: Number | None = None  # instead of the multiplier: the learning rate itself
    lora_rank: int | None = None
    lora_alpha: Number | None = None
    full_fine_tuning: bool | None = None  # every weight trained rather than LoRA adapters
    max_length: int | None = None  # longest example in tokens; longer ones are left out
    seed: int | None = None


class PreferenceHyperparameters(_Strict):
    variant: Literal["DPO", "APO Zero"] | None = None
    learning_rate_multiplier: Number | None = None
    num_epochs: Number | None = None
    training_beta: Number | None = None
    adapter_weight: Number | None = None
    # --- pipeserve extension ---
    batch_size: Literal["auto"] | Number | None = None


class LegacyHyperparameters(_Strict):
    """OpenPipe's deprecated `hyperparameters`: the same settings as `sft_hyperparameters` and
    `preference_hyperparameters`, flattened."""

    is_sft_enabled: bool | None = None
    batch_size: Literal["auto"] | Number | None = None
    learning_rate_multiplier: Number | None = None
    num_epochs: Number | None = None
    is_preference_tuning_enabled: bool | None = None
    preference_tuning_variant: Literal["DPO", "APO Zero"] | None = None
    preference_tuning_learning_rate_multiplier: Number | None = None
    preference_tuning_num_epochs: Number | None = None
    preference_tuning_training_beta: Number | None = None
    preference_tuning_adapter_weight: Number | None = None


class TrainingConfig(_Strict):
    """`trainingConfig` with `provider: "openpipe"`, the only provider that trains here (others are refused
    with a 400 before this model applies)."""

    provider: Literal["openpipe"]
    # The base: a served llama.cpp model (id or alias), or the slug of a model trained here. Default: the
    # embedded model.
    baseModel: str | None = None
    enable_sft: bool | None = None
    enable_preference_tuning: bool | None = None
    sft_hyperparameters: SftHyperparameters | None = None
    preference_hyperparameters: PreferenceHyperparameters | None = None
    hyperparameters: LegacyHyperparameters | None = None


class EvaluationRequest(_Strict):
    """pipeserve extension: how the trained model is compared with its base on the dataset's TEST entries."""

    criteria: list[str] | None = None  # criteria (name or name@vN) judging both models' answers
    max_entries: int | None = None


class CreateModelRequest(_Strict):
    datasetId: str
    slug: str
    pruningRuleIds: list[str] | None = None
    trainingConfig: dict[str, Any]  # validated as `TrainingConfig` once its provider is known
    defaultTemperature: Number | None = None
    # --- pipeserve extension ---
    evaluation: EvaluationRequest | None = None


# ---------------------------------------------------------------------------------------------------------
# Responses
# ---------------------------------------------------------------------------------------------------------


class Pricing(BaseModel):
    chatIn: float  # dollars per million tokens
    chatOut: float


class WeightsFile(BaseModel):
    """pipeserve extension: one downloadable file of a trained model's weights."""

    name: str  # `model.gguf`, or `hf/<file>` for the Hugging Face directory
    format: Literal["gguf", "hf"]
    bytes: int
    url: str  # the path to GET it, under the base path the request used


class OpenPipeInfo(BaseModel):
    baseModel: str
    hyperparameters: dict[str, Any] | None = None
    status: ModelStatus
    datasetId: str
    errorMessage: str | None = None
    # --- pipeserve extensions: a training job's progress, its evaluation, and the weights to download ------
    progress: dict[str, Any] | None = None
    evaluation: dict[str, Any] | None = None
    weights: list[WeightsFile] | None = None


class DeletedModel(BaseModel):
    id: str
    object: Literal["model"] = "model"
    deleted: bool = True


class WeightsList(BaseModel):
    object: Literal["list"] = "list"
    data: list[WeightsFile]
