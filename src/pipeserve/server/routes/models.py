"""`GET /models` and `GET /models/{id}`: the served models and the project's trained ones, in one shape that
OpenAI's SDK (`models.list`) and OpenPipe's (`list_models`, `get_model`) both read."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends
from starlette.requests import Request
from starlette.responses import Response

from pipeserve.errors import ModelNotFoundError, StoreUnavailableError
from pipeserve.finetune.jobs import FineTuning
from pipeserve.finetune.plan import Plan, shown
from pipeserve.finetune.store import TrainedModel
from pipeserve.protocol.models import ModelCard, ModelList
from pipeserve.protocol.models_api import Capability, OpenPipeInfo, Pricing, WeightsFile
from pipeserve.server.auth import Authenticated, Principal, require_key
from pipeserve.server.responses import json_response
from pipeserve.service.models import ModelRegistry, ServedModel
from pipeserve.settings import Settings

router = APIRouter(dependencies=[Depends(require_key)])
log = logging.getLogger("pipeserve.server")


def _pricing(settings: Settings, names: list[str]) -> Pricing:
    price = next((settings.prices[name] for name in names if name in settings.prices), None)
    return Pricing(chatIn=price.prompt if price else 0.0, chatOut=price.completion if price else 0.0)


def _capabilities(served: ServedModel | None) -> list[Capability]:
    if served is None:
        return ["chat", "tools", "json"]  # a llama.cpp model, once served
    can = served.engine.capabilities
    return ["chat", *(["tools"] if can.tools else []), *(["json"] if can.structured_output else [])]  # type: ignore[list-item]


def _window(served: ServedModel | None) -> int | None:
    # A provider's engine serves many models; the window it learnt is one model's.
    if served is None or served.provider is not None:
        return None
    try:
        return served.engine.context_window
    except Exception:  # an engine that is restarting knows no window for now
        return None


def card(served: ServedModel, settings: Settings) -> ModelCard:
    """A served model (configured, or a provider's route): OpenPipe's `openpipe` says it is deployed as is."""
    window = _window(served)
    config = served.config
    return ModelCard(
        id=config.id,
        created=served.created,
        owned_by="pipeserve",
        aliases=config.aliases,
        context_window=window,
        name=config.id,
        updated=served.created,
        openpipe=OpenPipeInfo(baseModel=config.id, status="DEPLOYED", datasetId=""),
        contextWindow=window or 0,
        maxCompletionTokens=window or 0,
        capabilities=_capabilities(served),
        pricing=_pricing(settings, [config.id, *config.aliases]),
    )


def weights_files(model: TrainedModel, request: Request) -> list[WeightsFile]:
    """A DEPLOYED model's downloadable files, each with its URL under the base path the request used."""
    fine_tuning: FineTuning = request.app.state.fine_tuning
    base = "/api/v1" if request.url.path.startswith("/api/v1/") else "/v1"
    return [
        WeightsFile(
            name=f.name,
            format=f.format,
            bytes=f.path.stat().st_size,
            url=f"{base}/models/{model.slug}/weights/{f.name}",
        )
        for f in fine_tuning.service.weights(model)
    ]


def trained_card(model: TrainedModel, request: Request) -> ModelCard:
    """A model trained here: its job's state while it trains, then the served model with its evaluation."""
    registry: ModelRegistry = request.app.state.models
    served = registry.resolve(model.served_id) if registry.serves(model.served_id) else None
    if served is not None and served.provider is not None:
        served = None  # a provider's route that happens to match the name, not this model
    window = _window(served)
    if window is None and registry.serves(model.base_model):
        window = _window(registry.resolve(model.base_model))
    weights = weights_files(model, request)
    return ModelCard(
        id=model.served_id,
        created=model.created_at // 1000,
        owned_by=model.project,
        aliases=[],
        context_window=window,
        name=model.slug,
        updated=model.updated_at // 1000,
        openpipe=OpenPipeInfo(
            baseModel=model.base_model,
            hyperparameters=shown(Plan.model_validate(model.plan)),
            status=model.status,  # type: ignore[arg-type]
            datasetId=model.dataset_id,
            errorMessage=model.error_message,
            progress=model.progress,
            evaluation=model.evaluation,
            weights=weights or None,
        ),
        contextWindow=window or 0,
        maxCompletionTokens=window or 0,
        capabilities=_capabilities(served),
        pricing=_pricing(request.app.state.settings, [model.served_id]),
    )


async def _trained(request: Request, principal: Principal) -> list[TrainedModel] | None:
    """The project's trained models; None while the store can't be reached (the served list still answers)."""
    fine_tuning: FineTuning = request.app.state.fine_tuning
    try:
        return await fine_tuning.service.of_project(principal.project)
    except StoreUnavailableError as exc:
        log.warning("GET /models without the trained models: %s", exc)
        return None


@router.get("/models")
async def list_models(request: Request, principal: Authenticated) -> Response:
    """The served models (configured, then trained ones), each provider's routes to the models its upstream
    lists, then the project's trained models not served (yet): queued, training, or failed."""
    registry: ModelRegistry = request.app.state.models
    settings: Settings = request.app.state.settings
    trained = {model.served_id: model for model in await _trained(request, principal) or []}
    cards = []
    for served in registry:
        mine = trained.pop(served.config.id, None)
        cards.append(trained_card(mine, request) if mine is not None else card(served, settings))
    for provider in registry.providers:
        cards += [
            card(registry.resolve(f"{provider.provider}:{name}"), settings) for name in provider.engine.listed_models()
        ]
    cards += [trained_card(model, request) for model in trained.values()]
    return json_response(ModelList(data=cards))


@router.get("/models/{model_id:path}")
async def get_model(model_id: str, request: Request, principal: Authenticated) -> Response:
    """A model trained in the project, by slug or `openpipe:<slug>`, else a served model by id or alias."""
    registry: ModelRegistry = request.app.state.models
    fine_tuning: FineTuning = request.app.state.fine_tuning
    trained = None
    if "/" not in model_id:
        try:
            trained = await fine_tuning.service.get(principal.project, model_id)
        except StoreUnavailableError:
            if not registry.serves(model_id):
                raise
    if trained is not None:
        return json_response(trained_card(trained, request))
    try:
        served = registry.resolve(model_id)
    except ModelNotFoundError:
        raise ModelNotFoundError(model_id) from None
    return json_response(card(served, request.app.state.settings))
