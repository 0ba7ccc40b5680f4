"""The `openai` engine: any OpenAI-compatible upstream (vLLM, SGLang, llama.cpp's llama-server, OpenAI,
another pipeserve), over one or more replicas."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeserve.engines.base import Engine
    from pipeserve.settings import ModelConfig


def create_engine(config: ModelConfig, *, max_waiting: int, cache_dir: Path | None = None) -> Engine:
    del cache_dir  # nothing of a remote model is kept here
    # Imported here so that listing the engines (docs, config checks) loads no HTTP client.
    from pipeserve.engines.openai.engine import OpenAIEngine

    return OpenAIEngine(config, max_waiting=max_waiting)
