"""`GET /health` (liveness plus each model's load) and `GET /metrics` (Prometheus), without authentication."""

from __future__ import annotations

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response

from pipeserve.protocol.health import Health, ModelHealth, StoreHealth
from pipeserve.server.responses import json_response
from pipeserve.service.models import ModelRegistry
from pipeserve.store.logwriter import LogWriter

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> Response:
    registry: ModelRegistry = request.app.state.models
    models = []
    down = False
    for label, engine in registry.engines():
        stats = engine.stats()
        problem = engine.problem()
        down = down or (problem is not None and not engine.remote)
        models.append(
            ModelHealth(
                id=label,
                state="ready" if problem is None else "unavailable",
                problem=problem,
                running_sequences=stats.running_sequences,
                waiting_requests=stats.waiting_requests,
                kv_cells_used=stats.kv_cells_used,
                kv_cells_cached=stats.kv_cells_cached,
                kv_cells_total=stats.kv_cells_total,
            )
        )
    writer: LogWriter = request.app.state.log_writer
    store = StoreHealth(available=writer.available, log_backlog=writer.backlog, logs_dropped=writer.dropped)
    degraded = not store.available or any(model.problem is not None for model in models)
    status = "unavailable" if down else "degraded" if degraded else "ok"
    return json_response(Health(status=status, models=models, store=store), status_code=503 if down else 200)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    registry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
