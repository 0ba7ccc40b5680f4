"""Starting the served models' and providers' engines, and swapping them on a reload (SIGHUP) without
dropping a request in flight."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from pipeserve.engines import create_engine
from pipeserve.engines.base import Engine
from pipeserve.service.models import ModelRegistry, ServedModel
from pipeserve.settings import ModelConfig, ProviderConfig, Settings

log = logging.getLogger("pipeserve.serving")

_DRAIN_LIMIT = 600.0  # seconds a replaced engine may finish its requests before it is closed regardless
_DRAIN_POLL = 0.5


def _provider_model(provider: ProviderConfig) -> ModelConfig:
    return ModelConfig(id=provider.prefix, engine=provider.engine, **provider.engine_options)


def _identity(config: ModelConfig) -> str:
    """What makes two configs run the same engine: everything but the names clients use and the fallbacks."""
    dumped: dict[str, Any] = config.model_dump(exclude={"aliases", "fallbacks"})
    return repr(sorted(dumped.items()))


async def start_engines(
    settings: Settings, environ: Mapping[str, str], running: ModelRegistry | None = None
) -> tuple[list[ServedModel], list[ServedModel]]:
    """The models and providers `settings` asks for, reusing the running engines whose config is unchanged.
    On a failure, the engines started here are closed again and the error raised."""
    reusable: dict[str, Engine] = {}
    if running is not None:
        reusable = {_identity(m.config): m.engine for m in [*running, *running.providers]}
    started: list[Engine] = []

    async def engine_for(config: ModelConfig) -> Engine:
        engine = reusable.pop(_identity(config), None)
        if engine is None:
            engine = create_engine(config, max_waiting=settings.max_queued_requests, cache_dir=settings.weights_path)
            await engine.start()
            started.append(engine)
        return engine

    try:
        models = [ServedModel(config=config, engine=await engine_for(config)) for config in settings.models]
        providers = []
        for provider in settings.routed_providers(environ):
            config = _provider_model(provider)
            providers.append(ServedModel(config=config, engine=await engine_for(config), provider=provider.prefix))
    except BaseException:
        for engine in started:
            await engine.close()
        raise
    return models, providers


async def reload_engines(registry: ModelRegistry, settings: Settings, environ: Mapping[str, str]) -> list[Engine]:
    """Serve what `settings` asks for from now on; the engines no longer used are returned, still running
    the requests they have (see `retire`)."""
    before = [engine for _, engine in registry.engines()]
    models, providers = await start_engines(settings, environ, registry)
    registry.replace(models, providers)
    kept = {id(engine) for _, engine in registry.engines()}
    return [engine for engine in before if id(engine) not in kept]


async def retire(engines: list[Engine]) -> None:
    """Close replaced engines once their requests are done (or after a long grace period)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _DRAIN_LIMIT
    for engine in engines:
        while loop.time() < deadline:
            stats = engine.stats()
            if not stats.running_sequences and not stats.waiting_requests:
                break
            await asyncio.sleep(_DRAIN_POLL)
        await engine.close()


class Hangup:
    """Reloads `[[models]]` and `[[providers]]` on SIGHUP: new and changed ones start, unchanged ones keep
    their engines, and replaced ones finish their requests before they close. A config that fails to load or
    to start leaves everything as it was, and says why in the log."""

    def __init__(self, registry: ModelRegistry, reload: Callable[[], Settings]) -> None:
        self.registry = registry
        self.reload = reload
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def install(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            self._loop.add_signal_handler(signal.SIGHUP, self.trigger)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no SIGHUP here
            log.info("reload on SIGHUP is not available in this process")
            self._loop = None

    def trigger(self) -> None:
        self._spawn(self.run())

    async def run(self) -> None:
        async with self._lock:
            try:
                settings = await asyncio.to_thread(self.reload)
                replaced = await reload_engines(self.registry, settings, os.environ)
            except Exception as exc:
                log.error("reload failed, still serving the previous models: %s", exc)
                return
            names = [name for name, _ in self.registry.engines()]
            log.info("reloaded: serving %s; %d engine(s) to retire", names, len(replaced))
            if replaced:
                self._spawn(retire(replaced))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.remove_signal_handler(signal.SIGHUP)
        for task in self._tasks:
            task.cancel()
