"""How the templates write numbers and times. Each returns plain text; Jinja2 escapes it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipeserve.console.transcript import pretty

DASH = "—"


def when(iso_time: str | None) -> str:
    """`2024-05-01T12:00:03.123Z` → `2024-05-01 12:00:03` (UTC, as stored)."""
    if not iso_time:
        return DASH
    return iso_time.replace("T", " ")[:19]


def duration(ms: float | None) -> str:
    if ms is None:
        return DASH
    if ms < 1000:
        return f"{ms:.0f} ms"
    return f"{ms / 1000:.2f} s"


def cost(dollars: float | None) -> str:
    if dollars is None:
        return DASH
    if dollars == 0:
        return "$0"
    return f"${dollars:.6f}".rstrip("0") if dollars < 0.01 else f"${dollars:.4f}"


def score(value: float | None) -> str:
    return DASH if value is None else f"{value:.2f}"


def count(value: int | float | None) -> str:
    return DASH if value is None else f"{value:,}"


def percent(value: float | None) -> str:
    return DASH if value is None else f"{value * 100:.0f}%"


def status_class(status: int | None) -> str:
    """A CSS class for a status: ok, client (4xx), server (5xx) or unknown."""
    if status is None:
        return "unknown"
    return "ok" if status < 400 else "client" if status < 500 else "server"


FILTERS: dict[str, Callable[..., Any]] = {
    "when": when,
    "duration": duration,
    "cost": cost,
    "score": score,
    "count": count,
    "percent": percent,
    "status_class": status_class,
    "pretty": pretty,
}
