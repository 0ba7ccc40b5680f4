"""The served models, by id and alias."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from pipeserve import __version__
from pipeserve.engines.base import Engine
from pipeserve.errors import ModelNotFoundError
from pipeserve.settings import ModelConfig


@dataclass
class ServedModel:
    config: ModelConfig
    engine: Engine
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def fingerprint(self) -> str:
        """OpenAI's `system_fingerprint`: changes when the server version or the model changes."""
        return f"fp_{uuid.uuid5(uuid.NAMESPACE_URL, f'pipeserve/{__version__}/{self.config.id}').hex[:10]}"


class ModelRegistry:
    def __init__(self, models: list[ServedModel]) -> None:
        self._models = models
        self._by_name = {name: m for m in models for name in (m.config.id, *m.config.aliases)}

    def resolve(self, name: str) -> ServedModel:
        served = self._by_name.get(name)
        if served is None:
            raise ModelNotFoundError(name)
        return served

    def __iter__(self) -> Iterator[ServedModel]:
        return iter(self._models)
