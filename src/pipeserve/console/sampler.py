"""Recent load per model for the Models page, sampled from the same registry `GET /metrics` serves.

Every few seconds one collection of the app's Prometheus registry is read: generated tokens (a counter,
turned into tokens per second between samples), running sequences and queue depth (gauges). The last
minutes are kept in memory, per process: the chart shows this replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

log = logging.getLogger("pipeserve.console")

INTERVAL_SECONDS = 5.0
KEPT_SAMPLES = 180  # 15 minutes


@dataclass(frozen=True)
class Point:
    at: float  # Unix seconds
    tokens_per_second: float
    running: float
    queued: float


@dataclass
class Series:
    points: deque[Point] = field(default_factory=lambda: deque(maxlen=KEPT_SAMPLES))
    last_tokens: float | None = None
    last_at: float = 0.0


def read(registry: CollectorRegistry) -> dict[str, dict[str, float]]:
    """`{model: {"tokens": total generated, "running": …, "queued": …}}` from one collection."""
    wanted = {
        "pipeserve_completion_tokens_total": "tokens",
        "pipeserve_running_sequences": "running",
        "pipeserve_queue_depth": "queued",
    }
    out: dict[str, dict[str, float]] = {}
    for metric in registry.collect():
        for sample in metric.samples:
            name = wanted.get(sample.name)
            if name is not None and "model" in sample.labels:
                out.setdefault(sample.labels["model"], {})[name] = sample.value
    return out


class Sampler:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.series: dict[str, Series] = {}
        self._task: asyncio.Task[None] | None = None

    def sample(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        for model, values in read(self.registry).items():
            series = self.series.setdefault(model, Series())
            tokens = values.get("tokens", 0.0)
            rate = 0.0
            if series.last_tokens is not None and now > series.last_at:
                rate = max(0.0, tokens - series.last_tokens) / (now - series.last_at)
            series.last_tokens, series.last_at = tokens, now
            series.points.append(Point(now, rate, values.get("running", 0.0), values.get("queued", 0.0)))

    def points(self, model: str) -> list[Point]:
        series = self.series.get(model)
        return list(series.points) if series is not None else []

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="console-sampler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                self.sample()
            except Exception:  # a chart is not worth a crash; the next tick tries again
                log.exception("could not sample the metrics for the console")
            await asyncio.sleep(INTERVAL_SECONDS)


def sparkline(points: list[Point], width: int = 240, height: int = 40) -> str:
    """SVG polyline points of tokens/s over the kept window, scaled to the box (the newest on the right)."""
    if not points:
        return ""
    top = max(p.tokens_per_second for p in points) or 1.0
    step = width / max(KEPT_SAMPLES - 1, 1)
    offset = width - step * (len(points) - 1)
    coords = (
        f"{offset + i * step:.1f},{height - 2 - (p.tokens_per_second / top) * (height - 4):.1f}"
        for i, p in enumerate(points)
    )
    return " ".join(coords)
