"""Comparing greedy completions of the embedded model across requests.

Greedy decoding is deterministic only for identical computations. Batched matrix products, a prompt prefilled
in other chunks or a prefix copied from another sequence round differently (measured here: up to ~0.12 nats on
the same token), so two greedy texts may part at a near-tie. What is guaranteed, and asserted: tokens and their
log-probabilities agree within a tolerance up to where the texts part, and they part only where the two best
tokens were within that tolerance of each other.
"""

from __future__ import annotations

from typing import Any

# Rounding moves a log-probability by ~0.12 nats at most here; reading another sequence's KV entries would
# move it by whole nats.
TOLERANCE = 0.5


def assert_same_greedy_path(mine: list[dict[str, Any]], reference: list[dict[str, Any]]) -> int:
    """`logprobs.content` of two greedy choices over the same prompt; the number of leading tokens they share."""
    for position, (a, b) in enumerate(zip(mine, reference, strict=False)):
        if a["token"] == b["token"]:
            assert abs(a["logprob"] - b["logprob"]) < TOLERANCE, (position, a, b)
            continue
        alternatives = {top["token"]: top["logprob"] for top in b["top_logprobs"]}
        assert a["token"] in alternatives, f"at token {position} the texts part at a token the reference ranked low"
        assert abs(alternatives[a["token"]] - b["logprob"]) < TOLERANCE, f"no near-tie at token {position}: {a} {b}"
        return position
    return min(len(mine), len(reference))


def path(choice: Any) -> list[dict[str, Any]]:
    """`logprobs.content` of a choice, from the openai SDK's object or from JSON."""
    logprobs = choice["logprobs"] if isinstance(choice, dict) else choice.logprobs.model_dump()
    return list(logprobs["content"])
