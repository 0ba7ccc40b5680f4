"""The logs endpoints."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from pipeserve.server.auth import require_key

router = APIRouter(dependencies=[Depends(require_key)])
