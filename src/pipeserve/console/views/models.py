"""The Models page: each served model and provider with its health and load, as `/health` and `/metrics`
report them, and generated tokens per second over the last minutes."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from pipeserve.console.sampler import INTERVAL_SECONDS, KEPT_SAMPLES, Sampler, sparkline
from pipeserve.console.web import ConsoleRoute, Signed, is_fragment, render
from pipeserve.service.models import ModelRegistry, ServedModel
from pipeserve.store.logwriter import LogWriter

router = APIRouter(route_class=ConsoleRoute)


@dataclass(frozen=True)
class ModelRow:
    label: str
    kind: str  # model | provider
    engine: str
    names: list[str]  # aliases, or a provider's listed models
    state: str
    problem: str | None
    running: int
    waiting: int
    kv_used: float  # share of KV cells held, 0..1
    kv_total: int
    context_window: int | None
    tokens_per_second: float
    chart: str  # SVG polyline points


def _row(served: ServedModel, sampler: Sampler) -> ModelRow:
    engine = served.engine
    stats = engine.stats()
    problem = engine.problem()
    points = sampler.points(served.label)
    provider = served.provider is not None
    held = stats.kv_cells_used + stats.kv_cells_cached
    return ModelRow(
        label=served.label,
        kind="provider" if provider else "model",
        engine=served.config.engine,
        names=engine.listed_models() if provider else list(served.config.aliases),
        state="ready" if problem is None else "unavailable",
        problem=problem,
        running=stats.running_sequences,
        waiting=stats.waiting_requests,
        kv_used=held / stats.kv_cells_total if stats.kv_cells_total else 0.0,
        kv_total=stats.kv_cells_total,
        context_window=None if provider else engine.context_window,
        tokens_per_second=points[-1].tokens_per_second if points else 0.0,
        chart=sparkline(points),
    )


@router.get("/models")
async def models_page(request: Request, viewer: Signed) -> Response:
    registry: ModelRegistry = request.app.state.models
    sampler: Sampler = request.app.state.console_sampler
    rows = [_row(served, sampler) for served in [*registry, *registry.providers]]
    writer: LogWriter = request.app.state.log_writer
    context = {
        "rows": rows,
        "store": {"available": writer.available, "backlog": writer.backlog, "dropped": writer.dropped},
        "window_minutes": int(KEPT_SAMPLES * INTERVAL_SECONDS / 60),
        "interval": int(INTERVAL_SECONDS),
    }
    if is_fragment(request):
        return render(request, "_models_table.html", context)
    return render(request, "models.html", context)
