"""Audio ids: kept until they expire, the oldest forgotten first beyond the limit."""

from __future__ import annotations

import time

from pipeserve.audio import AudioStore


def test_an_id_lasts_until_it_expires() -> None:
    store = AudioStore(ttl_seconds=1, max_entries=10)
    stored = store.put(store.new_id(), "hello")
    assert stored.id.startswith("audio_")
    assert abs(stored.expires_at - (time.time() + 1)) <= 1
    assert store.get(stored.id) == stored
    time.sleep(1.1)
    assert store.get(stored.id) is None
    store.put(store.new_id(), "later")
    assert len(store) == 1  # the expired entry went when the next came


def test_the_oldest_go_first_beyond_the_limit() -> None:
    store = AudioStore(ttl_seconds=60, max_entries=2)
    ids = [store.put(store.new_id(), f"t{i}").id for i in range(3)]
    assert store.get(ids[0]) is None
    assert [store.get(i).transcript for i in ids[1:]] == ["t1", "t2"]  # type: ignore[union-attr]
    assert store.get("audio_unknown") is None
