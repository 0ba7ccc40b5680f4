"""Small text helpers shared by the stream processors."""

from __future__ import annotations

from collections.abc import Iterable


def partial_suffix(text: str, markers: Iterable[str]) -> int:
    """Length of the longest end of `text` that some marker starts with (without being the whole marker):
    text that must be held back in a stream until it is known not to begin a marker."""
    best = 0
    for marker in markers:
        for size in range(min(len(marker) - 1, len(text)), best, -1):
            if text.endswith(marker[:size]):
                best = size
                break
    return best
