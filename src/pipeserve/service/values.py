"""Values the data API reads and writes alike: times, and text the stores can hold."""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Any

from pipeserve.errors import InvalidRequestError
from pipeserve.protocol.logs import MAX_TIME_MS


def iso(ms: int) -> str:
    """Milliseconds since the epoch as OpenPipe writes times (JavaScript's `toISOString()`)."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(value: int | str, param: str) -> int:
    """An ISO 8601 time (UTC unless it says otherwise) or Unix milliseconds, as milliseconds."""
    text = value.strip() if isinstance(value, str) else value
    try:
        if isinstance(text, int):
            ms = text
        elif text.isdigit():
            ms = int(text)
        else:
            moment = datetime.fromisoformat(text)
            moment = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
            ms = round(moment.timestamp() * 1000)
        # Beyond the year 9999 a time is a mistake, and it would overflow the database's integers.
        if 0 <= ms <= MAX_TIME_MS:
            return ms
    except (ValueError, OverflowError):
        pass
    raise InvalidRequestError(
        f"Invalid value for '{param}': {value!r} is not a time. Use ISO 8601 (2024-05-01 or "
        "2024-05-01T12:00:00Z) or Unix milliseconds.",
        param=param,
    )


def has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(has_nul(key) or has_nul(item) for key, item in value.items())
    if isinstance(value, list | tuple):
        return any(has_nul(item) for item in value)
    return False


def check_text(value: Any, param: str) -> None:
    """PostgreSQL can hold no NUL character in text or JSONB: refuse it with a 400, on SQLite too."""
    if has_nul(value):
        raise InvalidRequestError(
            f"Invalid value for '{param}': it contains a NUL character (\\u0000), which the store cannot hold. "
            "Remove it and send again.",
            param=param,
        )


def encode_cursor(created: int, row_id: str) -> str:
    """A keyset cursor: the (time, id) of a page's last row, opaque to clients."""
    return base64.urlsafe_b64encode(f"{created}:{row_id}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[int, str]:
    """The (time, id) of an `encode_cursor` cursor; a 400 for anything a client made up or changed."""
    try:
        created, _, row_id = base64.urlsafe_b64decode(cursor.encode()).decode().partition(":")
        position = int(created), row_id
    except (binascii.Error, UnicodeError, ValueError):
        position = None
    if position is None or not 0 <= position[0] <= MAX_TIME_MS or has_nul(row_id):
        raise InvalidRequestError(
            "Invalid value for 'cursor': pass the next_cursor of a previous page unchanged.", param="cursor"
        )
    return position
