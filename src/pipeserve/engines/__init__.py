"""Engines: one module (or package) per engine, each exposing `create_engine(config) -> Engine`.

The engine named in a model's config is imported here by name, so adding an engine means adding a module
and nothing else; heavy imports stay inside that module.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Protocol, cast

from pipeserve.engines.base import Engine
from pipeserve.settings import ModelConfig


class _EngineModule(Protocol):
    def create_engine(self, config: ModelConfig, *, max_waiting: int, cache_dir: Path | None = None) -> Engine: ...


def available_engines() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in ("base",))


def create_engine(config: ModelConfig, *, max_waiting: int, cache_dir: Path | None = None) -> Engine:
    """`cache_dir`: where an engine may keep files derived from its model (llama.cpp: converted weights)."""
    if config.engine not in available_engines():
        raise ValueError(f"model {config.id!r}: unknown engine {config.engine!r}; choose one of {available_engines()}")
    module = cast(_EngineModule, importlib.import_module(f"{__name__}.{config.engine}"))
    return module.create_engine(config, max_waiting=max_waiting, cache_dir=cache_dir)
