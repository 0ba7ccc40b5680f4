"""Wire model of `GET /health` (a pipeserve endpoint; OpenAI and OpenPipe have none)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class ModelHealth(BaseModel):
    id: str
    state: Literal["ready", "unavailable"]
    problem: str | None  # why the model can't serve now: its engine stopped, is restarting or stalled
    running_sequences: int
    waiting_requests: int
    kv_cells_used: int  # held by running sequences
    kv_cells_cached: int  # kept from finished sequences as a prefix cache, free for the taking
    kv_cells_total: int


class StoreHealth(BaseModel):
    available: bool  # whether the last attempt to reach the database worked
    log_backlog: int  # request logs held (in memory or spilled to a file) until the database takes them
    logs_dropped: int  # request logs lost since start: nowhere left to hold them


class Health(BaseModel):
    # ok: everything serves. degraded (HTTP 200): completions are served, but the store can't be reached, so
    # logs wait and the data API answers 503. unavailable (HTTP 503): a model can't serve, so a load balancer
    # should look elsewhere.
    status: Literal["ok", "degraded", "unavailable"]
    models: list[ModelHealth]
    store: StoreHealth
