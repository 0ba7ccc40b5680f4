"""Audio ids: what an answer's `audio.id` said, kept until its `expires_at`, so that a later turn which refers to
it (`{"role": "assistant", "audio": {"id": ...}}`) is understood.

Only the transcript is kept: it is all a later turn needs (the model reads text), and it keeps the store small.
The store is in the server's memory: ids are known to the replica that made them, until it restarts.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class StoredAudio:
    id: str
    transcript: str
    expires_at: int  # Unix seconds


class AudioStore:
    def __init__(self, ttl_seconds: int, max_entries: int) -> None:
        self.ttl_seconds = ttl_seconds
        self.max_entries = max_entries
        self._entries: OrderedDict[str, StoredAudio] = OrderedDict()  # oldest first: expiry order

    @staticmethod
    def new_id() -> str:
        return f"audio_{secrets.token_hex(12)}"

    def put(self, audio_id: str, transcript: str) -> StoredAudio:
        """Keep what `audio_id` said (a stream sends the id first and knows the transcript only at its end)."""
        now = time.time()
        self._expire(now)
        stored = StoredAudio(audio_id, transcript, int(now) + self.ttl_seconds)
        self._entries[audio_id] = stored
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)  # the oldest goes first, as it would expire first
        return stored

    def get(self, audio_id: str) -> StoredAudio | None:
        """The audio `audio_id` names, or None when it is unknown or has expired."""
        stored = self._entries.get(audio_id)
        if stored is None or stored.expires_at <= time.time():
            return None
        return stored

    def __len__(self) -> int:
        return len(self._entries)

    def _expire(self, now: float) -> None:
        while self._entries:
            oldest = next(iter(self._entries.values()))
            if oldest.expires_at > now:
                return
            self._entries.popitem(last=False)
