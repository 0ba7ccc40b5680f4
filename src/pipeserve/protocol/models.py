"""Wire models of `GET /models` and `GET /models/{id}`.

One list serves both SDKs: OpenAI's fields (its `created` is a Unix time, which the `openpipe` SDK reads as the
string it types it as), then pipeserve's, then OpenPipe's (`openpipe`, `contextWindow`, ...), which the `openpipe`
SDK's `list_models` and `get_model` require of every model.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from pipeserve.protocol.models_api import Capability, OpenPipeInfo, Pricing


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    # --- pipeserve extension: the configured aliases and the model's context window --------------------
    aliases: list[str]
    context_window: int | None = None
    # --- OpenPipe's fields (models trained here carry their training in `openpipe`) ---------------------
    name: str
    description: str | None = None
    updated: int
    openpipe: OpenPipeInfo
    contextWindow: int
    maxCompletionTokens: int
    capabilities: list[Capability]
    pricing: Pricing


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
