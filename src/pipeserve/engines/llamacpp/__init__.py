"""The llama.cpp engine (llama-cpp-python's low-level API), the embedded default."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeserve.engines.base import Engine
    from pipeserve.settings import ModelConfig


def create_engine(config: ModelConfig, *, max_waiting: int, cache_dir: Path | None = None) -> Engine:
    # Imported here so that naming another engine never loads llama.cpp.
    from pipeserve.engines.llamacpp.engine import LlamaCppEngine

    return LlamaCppEngine(config, max_waiting=max_waiting, cache_dir=cache_dir)
