"""The Anthropic engine: a model served by Anthropic's Messages API (no SDK: HTTP with httpx)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeserve.engines.base import Engine
    from pipeserve.settings import ModelConfig


def create_engine(config: ModelConfig, *, max_waiting: int, cache_dir: Path | None = None) -> Engine:
    del cache_dir  # nothing of a remote model is kept here
    from pipeserve.engines.anthropic.engine import AnthropicEngine

    return AnthropicEngine(config, max_waiting=max_waiting)
