"""Models trained here, for the HTTP routes and the `pipeserve models` commands alike: a request checked in
full and queued (`create`), then read, listed and deleted. Every problem a request can have is a 400 (or a
404) here, before a job exists; the job itself can then only fail on the machine's side.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from pipeserve.engines.llamacpp.options import LlamaCppOptions
from pipeserve.errors import InvalidRequestError, NotFoundError
from pipeserve.finetune import INSTALL_HINT, missing_train_packages
from pipeserve.finetune.plan import BaseRef, resolve
from pipeserve.finetune.serving import model_dir
from pipeserve.finetune.spec import SUPPORTED_ARCHITECTURES
from pipeserve.finetune.store import PREFIX, SlugTakenError, TrainedModel, TrainedModelStore
from pipeserve.protocol.chat_completions import ChatCompletionRequest
from pipeserve.protocol.models_api import CreateModelRequest, TrainingConfig
from pipeserve.service.criteria import CriteriaService
from pipeserve.service.edge import to_params
from pipeserve.service.values import check_text, has_nul
from pipeserve.settings import EMBEDDED_MODEL_ID, ModelConfig, Settings
from pipeserve.store.db import new_id
from pipeserve.store.tables import dataset_entries, datasets
from pipeserve.validation import validate

SLUG = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


def _not_found(name: str) -> NotFoundError:
    return NotFoundError(
        f"No model '{name}' was trained in this project. GET /v1/models (or `pipeserve models list`) lists them.",
        param="model",
        code="model_not_found",
    )


def slug_of(name: str) -> str:
    """A trained model's slug from either of its names, `my-model` or `openpipe:my-model`."""
    return name[len(PREFIX) :] if name.startswith(PREFIX) else name


@dataclass(frozen=True)
class WeightsFile:
    name: str  # model.gguf | hf/<file>
    format: str  # gguf | hf
    path: Path


class TrainingService:
    def __init__(
        self, store: TrainedModelStore, settings: Callable[[], Settings], criteria: CriteriaService | None = None
    ) -> None:
        self.store = store
        self.settings = settings  # the latest settings (a reload may change the configured models)
        self.criteria = criteria

    # --- creating -----------------------------------------------------------------------------------------

    async def create(self, project: str, request: CreateModelRequest) -> TrainedModel:
        missing = missing_train_packages()
        if missing:
            raise InvalidRequestError(
                f"Training needs the `train` extra, which is not installed here (missing: {', '.join(missing)}). "
                f"Install it with: {INSTALL_HINT}; then restart the server.",
                code="train_extra_missing",
            )
        check_text(request.model_dump(mode="json"), "body")
        config = _training_config(request.trainingConfig)
        if request.pruningRuleIds:
            raise InvalidRequestError(
                "Pruning rules are not supported by this server: send 'pruningRuleIds' empty or leave it out.",
                param="pruningRuleIds",
            )
        if request.defaultTemperature is not None:
            raise InvalidRequestError(
                "A default temperature per model is not supported by this server: leave 'defaultTemperature' out "
                "and send 'temperature' with each chat completion.",
                param="defaultTemperature",
            )
        slug = await self._free_slug(request.slug)
        base = await self._base(project, config.baseModel)
        counts = await self._dataset(project, request.datasetId)
        plan = resolve(config, base, train_entries=counts["TRAIN"], preference_entries=counts["preference"])
        evaluation = request.evaluation
        if evaluation is not None:
            if evaluation.max_entries is not None and evaluation.max_entries < 1:
                raise InvalidRequestError(
                    "'evaluation.max_entries' must be at least 1.", param="evaluation.max_entries"
                )
            if evaluation.criteria and self.criteria is not None:
                try:
                    resolved = await self.criteria.resolve(project, list(evaluation.criteria))
                except InvalidRequestError as exc:
                    raise InvalidRequestError(exc.message, param="evaluation.criteria") from None
                evaluation = evaluation.model_copy(update={"criteria": [c.ref for c in resolved]})
        sent: dict[str, Any] = {"trainingConfig": request.trainingConfig}
        if evaluation is not None:
            sent["evaluation"] = evaluation.model_dump(exclude_none=True)
        try:
            return await self.store.insert(
                {
                    "id": new_id("ft"),
                    "project": project,
                    "slug": slug,
                    "base_model": base.model if base.kind == "served" else PREFIX + base.model,
                    "dataset_id": request.datasetId,
                    "request": sent,
                    "plan": plan.model_dump(mode="json"),
                }
            )
        except SlugTakenError:
            raise _slug_taken(slug) from None

    async def _free_slug(self, slug: str) -> str:
        if not SLUG.fullmatch(slug):
            raise InvalidRequestError(
                f"Invalid slug {slug!r}: use 1 to 64 lower-case letters, digits, '.', '_' and '-', starting with a "
                "letter or digit. The model will answer to 'openpipe:<slug>'.",
                param="slug",
            )
        names = {name for model in self.settings().models for name in (model.id, *model.aliases)}
        if PREFIX + slug in names or slug in names or await self.store.slug_taken(slug):
            raise _slug_taken(slug)
        return slug

    async def _base(self, project: str, name: str | None) -> BaseRef:
        configured = self.settings().models
        if name is None:
            name = _default_base(configured)
        check_text(name, "trainingConfig.baseModel")
        for model in configured:
            if name in (model.id, *model.aliases):
                if model.engine != "llamacpp":
                    raise InvalidRequestError(
                        f"The base model '{name}' is served by the '{model.engine}' engine (an upstream server); only "
                        "llama.cpp models (GGUF files) can be fine-tuned here.",
                        param="trainingConfig.baseModel",
                    )
                try:
                    options = LlamaCppOptions(**model.engine_options)
                    _check_architecture(options.resolved_path(), name)
                except (FileNotFoundError, ValueError) as exc:
                    raise InvalidRequestError(
                        f"The base model '{name}' can't be trained: {exc}", param="trainingConfig.baseModel"
                    ) from None
                return BaseRef(kind="served", model=model.id, options=model.engine_options)
        trained = await self.store.get(project, slug_of(name))
        if trained is not None:
            if trained.status != "DEPLOYED":
                raise InvalidRequestError(
                    f"The base model '{name}' is {trained.status}, not DEPLOYED: train from it once it is.",
                    param="trainingConfig.baseModel",
                )
            return BaseRef(kind="trained", model=trained.slug, options=trained.plan["base"]["options"])
        choices = [m.id for m in configured if m.engine == "llamacpp"]
        raise InvalidRequestError(
            f"'{name}' is not a model this server can fine-tune. Use a served llama.cpp model ({', '.join(choices)}) "
            "or the slug of a model trained here (GET /v1/models lists them).",
            param="trainingConfig.baseModel",
        )

    async def _dataset(self, project: str, dataset_id: str) -> dict[str, int]:
        """Entry counts of the project's dataset; every entry must make a valid request to the model."""
        if has_nul(dataset_id):
            raise _no_dataset(dataset_id)
        async with self.store.db.connect() as conn:
            found = (
                await conn.execute(
                    select(datasets.c.id).where(datasets.c.id == dataset_id, datasets.c.project == project)
                )
            ).first()
            if found is None:
                raise _no_dataset(dataset_id)
            rows = (
                await conn.execute(
                    select(
                        dataset_entries.c.split,
                        func.count(),
                        func.count(dataset_entries.c.rejected_message),
                    )
                    .where(dataset_entries.c.dataset_id == dataset_id)
                    .group_by(dataset_entries.c.split)
                )
            ).all()
        counts = {"TRAIN": 0, "TEST": 0, "preference": 0}
        for split, count, rejected in rows:
            counts[split] = count
            if split == "TRAIN":
                counts["preference"] = rejected
        if counts["TRAIN"] == 0:
            raise InvalidRequestError(
                f"Dataset {dataset_id} has no TRAIN entries ({counts['TEST']} TEST entries): there is nothing to "
                "train on. Add entries (POST /v1/datasets/{id}/entries, or from logs), with split TRAIN or none.",
                param="datasetId",
            )
        await self._check_entries(dataset_id)
        return counts

    async def _check_entries(self, dataset_id: str) -> None:
        async for row in self.store.entries(dataset_id):
            body: dict[str, Any] = {"model": "check", "messages": row.messages}
            for key in ("tools", "tool_choice", "response_format"):
                if getattr(row, key) is not None:
                    body[key] = getattr(row, key)
            try:
                to_params(validate(ChatCompletionRequest, body))
            except InvalidRequestError as exc:
                raise InvalidRequestError(
                    f"Dataset entry {row.id} can't be shown to the model: {exc.message} Fix or delete the entry.",
                    param="datasetId",
                ) from None

    # --- reading and deleting -------------------------------------------------------------------------------

    async def get(self, project: str, name: str) -> TrainedModel | None:
        return await self.store.get(project, slug_of(name))

    async def require(self, project: str, name: str) -> TrainedModel:
        model = await self.get(project, name)
        if model is None:
            raise _not_found(name)
        return model

    async def of_project(self, project: str) -> list[TrainedModel]:
        return await self.store.of_project(project)

    async def delete(self, project: str, name: str) -> TrainedModel:
        """Remove the model: a queued job never runs, a running one stops within seconds (its runner notices),
        a served one stops being served (each replica notices); its files go."""
        model = await self.store.delete(project, slug_of(name))
        if model is None:
            raise _not_found(name)
        if model.status in ("DEPLOYED", "ERROR", "PENDING"):
            # A running job's runner removes its own directory once it has stopped the worker.
            shutil.rmtree(model_dir(self.settings(), model), ignore_errors=True)
        return model

    def weights(self, model: TrainedModel) -> list[WeightsFile]:
        """The files of a DEPLOYED model's weights: the GGUF, then the Hugging Face directory."""
        if model.status != "DEPLOYED":
            return []
        directory = model_dir(self.settings(), model)
        files = (
            [WeightsFile("model.gguf", "gguf", directory / "model.gguf")]
            if (directory / "model.gguf").is_file()
            else []
        )
        hf = directory / "hf"
        if hf.is_dir():
            files += [WeightsFile(f"hf/{p.name}", "hf", p) for p in sorted(hf.iterdir()) if p.is_file()]
        return files


def _training_config(raw: dict[str, Any]) -> TrainingConfig:
    provider = raw.get("provider")
    if provider != "openpipe":
        shown = provider if isinstance(provider, str) else repr(provider)
        raise InvalidRequestError(
            f"This server trains models itself: 'trainingConfig.provider' must be \"openpipe\", not {shown} (training "
            "through OpenAI or Gemini happens on their servers; train there and route to it as a provider model).",
            param="trainingConfig.provider",
        )
    try:
        return validate(TrainingConfig, raw)
    except InvalidRequestError as exc:
        param = f"trainingConfig.{exc.param}" if exc.param else "trainingConfig"
        raise InvalidRequestError(exc.message, param=param, code=exc.code) from None


def _default_base(configured: list[ModelConfig]) -> str:
    ids = [model.id for model in configured if model.engine == "llamacpp"]
    if EMBEDDED_MODEL_ID in ids:
        return EMBEDDED_MODEL_ID
    if not ids:
        raise InvalidRequestError(
            "This server serves no llama.cpp model to fine-tune; configure one in [[models]].",
            param="trainingConfig.baseModel",
        )
    return ids[0]


def _check_architecture(path: Path, name: str) -> None:
    from pipeserve.finetune.export import architecture

    arch = architecture(path)
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"its GGUF architecture is '{arch}', and this server writes trained weights back for "
            f"{', '.join(SUPPORTED_ARCHITECTURES)} models only"
        )


def _no_dataset(dataset_id: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"No dataset with id '{dataset_id}' in this project. GET /v1/datasets (or `pipeserve datasets list`) lists "
        "them.",
        param="datasetId",
    )


def _slug_taken(slug: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"The slug '{slug}' is taken: a model already answers to 'openpipe:{slug}' (or '{slug}'). Choose another, or "
        "delete that model first.",
        param="slug",
        code="slug_taken",
    )
