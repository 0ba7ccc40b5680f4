"""Training models here: `POST /models` (OpenPipe's `create_model`), `DELETE /models/{slug}` (`delete_model`),
and our extension to download a trained model's weights: `GET /models/{slug}/weights[/{file}]`.

Included before the `GET /models/{id}` router: a served model whose id contains `/weights` (an upstream's
`org/weights`, say) still reaches its card through the fallbacks below.
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import FileResponse, Response

from pipeserve.errors import InvalidRequestError, ModelNotFoundError
from pipeserve.finetune.jobs import FineTuning
from pipeserve.protocol.models_api import CreateModelRequest, DeletedModel, WeightsList
from pipeserve.server.auth import Authenticated
from pipeserve.server.body import parse_body
from pipeserve.server.responses import json_response
from pipeserve.server.routes.models import card, get_model, trained_card, weights_files
from pipeserve.service.models import ModelRegistry

router = APIRouter()


def _fine_tuning(request: Request) -> FineTuning:
    fine_tuning: FineTuning = request.app.state.fine_tuning
    return fine_tuning


@router.post("/models")
async def create_model(request: Request, principal: Authenticated) -> Response:
    body = await parse_body(request, CreateModelRequest)
    model = await _fine_tuning(request).service.create(principal.project, body)
    return json_response(trained_card(model, request))


@router.delete("/models/{model_id:path}")
async def delete_model(model_id: str, request: Request, principal: Authenticated) -> Response:
    service = _fine_tuning(request).service
    if await service.get(principal.project, model_id) is not None:
        model = await service.delete(principal.project, model_id)
        return json_response(DeletedModel(id=model.served_id))
    registry: ModelRegistry = request.app.state.models
    if registry.serves(model_id):
        raise InvalidRequestError(
            f"The model '{model_id}' is configured ([[models]] or [[providers]] in the config file), not trained "
            "here: remove it from the configuration and reload (SIGHUP) to stop serving it.",
            param="model",
        )
    raise ModelNotFoundError(model_id)


@router.get("/models/{slug}/weights")
async def list_weights(slug: str, request: Request, principal: Authenticated) -> Response:
    service = _fine_tuning(request).service
    model = await service.get(principal.project, slug)
    if model is None:  # not a trained model: perhaps a served model whose id ends in /weights
        return await get_model(f"{slug}/weights", request, principal)
    files = weights_files(model, request)
    if not files:
        raise InvalidRequestError(
            f"The model '{slug}' is {model.status}: its weights can be downloaded once it is DEPLOYED.", param="model"
        )
    return json_response(WeightsList(data=files))


@router.get("/models/{slug}/weights/{name:path}")
async def download_weights(slug: str, name: str, request: Request, principal: Authenticated) -> Response:
    service = _fine_tuning(request).service
    model = await service.get(principal.project, slug)
    if model is None:
        registry: ModelRegistry = request.app.state.models
        model_id = f"{slug}/weights/{name}"
        if registry.serves(model_id):
            return json_response(card(registry.resolve(model_id), request.app.state.settings))
        raise ModelNotFoundError(model_id)
    files = {f.name: f for f in service.weights(model)}
    found = files.get(name)
    if found is None:
        raise InvalidRequestError(
            f"The model '{slug}' has no weights file '{name}'"
            + (f"; it has: {', '.join(files)}." if files else f": it is {model.status}, not DEPLOYED."),
            param="name",
        )
    download = f"{slug}.gguf" if name == "model.gguf" else f"{slug}-{name.rsplit('/', 1)[-1]}"
    return FileResponse(found.path, filename=download, media_type="application/octet-stream")
