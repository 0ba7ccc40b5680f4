"""Comparing greedy completions of the embedded model across requests.

Greedy decoding is deterministic only for identical computations. Batched matrix products, a prompt prefilled
in other chunks or a prefix copied from another sequence round differently (measured here: up to ~0.12 nats on
the same token), so two greedy texts may part at a near-tie. What is guaranteed, and asserted: tokens and their
log-probabilities agree within a tolerance up to where the texts part, and they part only where the two best
tokens were within that tolerance of each other.
"""

from __future__ import annotations

import asyncio
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


async def generate_greedy(engine: Any, params: Any, *, steps: asyncio.Event | None = None) -> Any:
    """Run `params` on an engine directly: the choice's text, its logprobs path (as `assert_same_greedy_path`
    compares them) and the generation's usage. `steps`, if given, is set once four tokens came."""
    generation = await engine.generate(params)
    text, path = "", []
    async for step in generation:
        for delta in step:
            text += delta.content
            for lp in delta.logprobs or []:
                top = [{"token": t.token, "logprob": t.logprob} for t in lp.top]
                path.append({"token": lp.token, "logprob": lp.logprob, "top_logprobs": top})
        if steps is not None and len(path) >= 4:
            steps.set()
    return text, path, generation.usage
