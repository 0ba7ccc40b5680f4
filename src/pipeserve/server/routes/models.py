"""`GET /models` and `GET /models/{id}`."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from starlette.requests import Request
from starlette.responses import Response

from pipeserve.protocol.models import ModelCard, ModelList
from pipeserve.server.auth import require_key
from pipeserve.server.responses import json_response
from pipeserve.service.models import ModelRegistry, ServedModel

router = APIRouter(dependencies=[Depends(require_key)])


def _card(served: ServedModel) -> ModelCard:
    return ModelCard(
        id=served.config.id,
        created=served.created,
        owned_by="pipeserve",
        aliases=served.config.aliases,
        # A provider's engine serves many models; the window it learnt is one model's.
        context_window=served.engine.context_window if served.provider is None else None,
    )


@router.get("/models")
async def list_models(request: Request) -> Response:
    """The configured models, then each provider's routes to the models its upstream lists."""
    registry: ModelRegistry = request.app.state.models
    cards = [_card(m) for m in registry]
    for provider in registry.providers:
        cards += [_card(registry.resolve(f"{provider.provider}:{name}")) for name in provider.engine.listed_models()]
    return json_response(ModelList(data=cards))


@router.get("/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> Response:
    registry: ModelRegistry = request.app.state.models
    return json_response(_card(registry.resolve(model_id)))
