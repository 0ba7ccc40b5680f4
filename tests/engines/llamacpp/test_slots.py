"""The prefix match that decides which KV entries a new prompt can reuse."""

from __future__ import annotations

import random

from pipeserve.engines.llamacpp.slots import common_prefix


def test_common_prefix_matches_a_plain_scan() -> None:
    rng = random.Random(5)
    for _ in range(500):
        a = [rng.randint(0, 3) for _ in range(rng.randint(0, 40))]
        b = a[: rng.randint(0, len(a))] + [rng.randint(0, 3) for _ in range(rng.randint(0, 10))]
        expected = 0
        while expected < min(len(a), len(b)) and a[expected] == b[expected]:
            expected += 1
        assert common_prefix(a, b) == expected == common_prefix(b, a)
