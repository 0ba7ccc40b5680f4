"""Serving the models trained here beside the configured ones, through the registry's own reload machinery.

A DEPLOYED model in the store is a llama.cpp model whose `path` is its GGUF file: it is added to the configured
`[[models]]` at start-up, after its training (without a restart), and after every SIGHUP reload, and dropped when
deleted. Every replica sharing the store (and the fine-tunes directory) serves the same ones: each checks the
store every few seconds (`sync`), so a model trained by another process, or by `pipeserve models train`, is
served here too.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeserve.finetune.store import TrainedModel, TrainedModelStore
from pipeserve.service.models import ModelRegistry
from pipeserve.service.serving import reload_engines, retire
from pipeserve.settings import ModelConfig, Settings

log = logging.getLogger("pipeserve.finetune")

# A model deployed here is served before the store says DEPLOYED (so that it answers as soon as it does): for
# this long, a sync that does not find it DEPLOYED yet leaves it served.
_PIN_SECONDS = 60.0


def fine_tunes_dir(settings: Settings) -> Path:
    return settings.finetune_dir or settings.data_dir / "fine-tunes"


def model_dir(settings: Settings, model: TrainedModel) -> Path:
    return fine_tunes_dir(settings) / model.id


def served_config(settings: Settings, model: TrainedModel) -> ModelConfig | None:
    """The `[[models]]` table of a trained model: its base's llama.cpp options, its own GGUF file, and
    `finetune_max_sequences` sequences of the base's window each. None while its file is missing."""
    from pipeserve.engines.llamacpp.options import LlamaCppOptions

    path = model_dir(settings, model) / "model.gguf"
    if not path.is_file():
        return None
    options: dict[str, Any] = dict(model.plan.get("base", {}).get("options") or {})
    for key in ("path", "sequence_window", "prefix_cache_size", "context_size", "max_sequences"):
        options.pop(key, None)
    window = LlamaCppOptions(**(model.plan.get("base", {}).get("options") or {})).window
    sequences = settings.finetune_max_sequences
    options |= {"path": str(path), "max_sequences": sequences, "context_size": window * sequences}
    if "weights" in LlamaCppOptions.model_fields:
        options["weights"] = "original"  # already written in a fast faithful format (Q8_0 or F16)
    return ModelConfig(id=model.served_id, engine="llamacpp", **options)


class TrainedModels:
    """The trained models this process serves, kept in step with the store."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings  # the latest settings loaded (start-up, then each reload)
        self.configs: dict[str, ModelConfig] = {}
        self.failed: dict[str, tuple[int, str]] = {}  # id -> (the row's updated_at, why it could not be served)
        self._pinned: dict[str, float] = {}  # id -> when `deploy` served it
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    def served_settings(self, settings: Settings | None = None) -> Settings:
        """`settings` with the trained models added to its `[[models]]` (a configured name wins a clash)."""
        settings = settings or self.settings
        names = {name for model in settings.models for name in (model.id, *model.aliases)}
        extra = [config for config in self.configs.values() if config.id not in names]
        return settings.model_copy(update={"models": [*settings.models, *extra]})

    def reloading(self, reload: Callable[[], Settings]) -> Callable[[], Settings]:
        """A reload (SIGHUP) that keeps the trained models served."""

        def with_trained() -> Settings:
            settings = reload()
            self.settings = settings
            return self.served_settings(settings)

        return with_trained

    async def load(self, store: TrainedModelStore) -> None:
        """At start-up, before the engines start: the DEPLOYED models whose files are here."""
        for model in await store.deployed():
            config = served_config(self.settings, model)
            if config is None:
                log.warning(
                    "trained model %s: %s is missing; not served", model.served_id, model_dir(self.settings, model)
                )
            else:
                self.configs[config.id] = config

    async def sync(self, registry: ModelRegistry, store: TrainedModelStore) -> None:
        """Serve exactly the store's DEPLOYED models; a model that fails to load is skipped until it changes."""
        wanted: dict[str, tuple[TrainedModel, ModelConfig]] = {}
        for model in await store.deployed():
            config = served_config(self.settings, model)
            failure = self.failed.get(model.served_id)
            if config is not None and (failure is None or failure[0] != model.updated_at):
                wanted[config.id] = (model, config)
        async with self._lock:
            now = time.monotonic()
            self._pinned = {name: at for name, at in self._pinned.items() if now - at < _PIN_SECONDS}
            gone = [name for name in self.configs if name not in wanted and name not in self._pinned]
            new = [name for name in wanted if name not in self.configs or not registry.serves(name)]
            if gone:
                for name in gone:
                    del self.configs[name]
                await self._apply(registry)
                log.info("no longer serving %s", gone)
            for name in new:
                model, config = wanted[name]
                try:
                    await self._add(registry, config)
                except Exception as exc:
                    self.failed[name] = (model.updated_at, str(exc))
                    log.error("trained model %s could not be served: %s", name, exc)

    async def deploy(self, registry: ModelRegistry, model: TrainedModel) -> None:
        """Serve a model just trained; raises if its engine does not start (the model is then not served)."""
        config = served_config(self.settings, model)
        if config is None:
            raise FileNotFoundError(f"{model_dir(self.settings, model) / 'model.gguf'} was not written")
        async with self._lock:
            await self._add(registry, config)
            self._pinned[config.id] = time.monotonic()

    async def _add(self, registry: ModelRegistry, config: ModelConfig) -> None:
        self.configs[config.id] = config
        try:
            await self._apply(registry)
        except BaseException:
            del self.configs[config.id]
            raise
        log.info("serving trained model %s from %s", config.id, config.engine_options.get("path"))

    async def _apply(self, registry: ModelRegistry) -> None:
        replaced = await reload_engines(registry, self.served_settings(), os.environ)
        if replaced:
            task = asyncio.ensure_future(retire(replaced))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
