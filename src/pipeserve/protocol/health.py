"""Wire model of `GET /health` (a pipeserve endpoint; OpenAI and OpenPipe have none)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class ModelHealth(BaseModel):
    id: str
    running_sequences: int
    waiting_requests: int
    kv_cells_used: int
    kv_cells_total: int


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    models: list[ModelHealth]
