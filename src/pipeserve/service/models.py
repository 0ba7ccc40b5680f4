"""The served models, by id and alias, and the providers that serve `prefix:<model>` ids."""

from __future__ import annotations

import functools
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
    # A provider's route (`openai:gpt-4o`): the model name its upstream is asked for, and the provider's prefix.
    upstream_name: str | None = None
    provider: str | None = None

    @functools.cached_property
    def fingerprint(self) -> str:
        """OpenAI's `system_fingerprint`: changes when the server version or the model changes."""
        return f"fp_{uuid.uuid5(uuid.NAMESPACE_URL, f'pipeserve/{__version__}/{self.config.id}').hex[:10]}"

    @property
    def fallbacks(self) -> list[str]:
        """The models tried in order when this one fails before answering; a provider's route has none."""
        return self.config.fallbacks if self.upstream_name is None else []

    @property
    def label(self) -> str:
        """The model's name in metrics: a provider's routes share their prefix's, since clients choose the
        names after it."""
        return f"{self.provider}:*" if self.provider is not None else self.config.id


class ModelRegistry:
    """Configured models by id and alias; a name `prefix:<model>` not configured as such routes to the
    provider of that prefix. Replaced whole on a reload, so a request keeps the model it resolved."""

    def __init__(self, models: list[ServedModel], providers: list[ServedModel] | None = None) -> None:
        self.aliases: dict[str, str] = {}  # a configured model's other names -> its id
        self.replace(models, providers or [])

    def replace(self, models: list[ServedModel], providers: list[ServedModel]) -> None:
        """Serve these from now on (a reload); requests already started keep the models they resolved."""
        self._models = models
        self._providers = {p.provider: p for p in providers if p.provider is not None}
        self._by_name = {name: m for m in models for name in (m.config.id, *m.config.aliases)}
        # Updated in place, so that those holding it (prices by alias) see a reload.
        self.aliases.clear()
        self.aliases.update({alias: m.config.id for m in models for alias in m.config.aliases})

    def serves(self, name: str) -> bool:
        """Whether `name` resolves: a configured model's id or alias, or a provider's route."""
        try:
            self.resolve(name)
        except ModelNotFoundError:
            return False
        return True

    def resolve(self, name: str) -> ServedModel:
        served = self._by_name.get(name)
        if served is not None:
            return served
        prefix, colon, rest = name.partition(":")
        provider = self._providers.get(prefix) if colon and rest else None
        if provider is None:
            raise ModelNotFoundError(name)
        return ServedModel(
            config=provider.config.model_copy(update={"id": name}),
            engine=provider.engine,
            created=provider.created,
            upstream_name=rest,
            provider=prefix,
        )

    def __iter__(self) -> Iterator[ServedModel]:
        """The configured models (not the providers' routes)."""
        return iter(self._models)

    @property
    def providers(self) -> list[ServedModel]:
        return list(self._providers.values())

    def engines(self) -> list[tuple[str, Engine]]:
        """Every engine by its label: the models' and the providers'."""
        return [(m.label, m.engine) for m in [*self._models, *self._providers.values()]]
