"""The score of a verdict: the judge's probability of PASS, read from the log-probabilities of the token where
the verdict's value starts in the judge's JSON answer (`{"verdict": "PASS"|"FAIL", "explanation": "..."}`).

Our engines report logprobs of the distribution after the grammar mask (llama.cpp: the
masked logits' log-softmax, before temperature), so at the verdict's first token only tokens that begin
`PASS` or `FAIL` (possibly with the opening quote, possibly partial: `P`, `PA`, `"F`, ...) have mass.
P(PASS) = ΣP(tokens starting PASS) / (ΣP(PASS tokens) + ΣP(FAIL tokens)) over the top alternatives and
the sampled token. When one side is absent from the alternatives, it gets the mass the alternatives leave
(1 - their sum): under the mask that is the other verdict's tokens (and, for an engine reporting unmasked
logprobs, an upper bound). The score is independent of the sampling temperature; at a near-tie the sampled
verdict (which the explanation follows) can disagree with the score — the score is authoritative.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pipeserve.protocol import chat_completions as chat_wire


def _string_end(data: bytes, start: int) -> int:
    """The index of the quote closing the JSON string opened at `start` (or len(data) if it isn't closed)."""
    i = start + 1
    while i < len(data):
        if data[i] == 0x5C:  # backslash: skip the escaped byte
            i += 2
            continue
        if data[i] == 0x22:
            return i
        i += 1
    return len(data)


def value_offset(data: bytes, key: bytes) -> int | None:
    """The byte offset of the first character of the string value of `key` in a top-level JSON object."""
    depth = 0
    expect_key = False
    current: bytes | None = None
    i = 0
    while i < len(data):
        c = data[i]
        if c == 0x22:
            end = _string_end(data, i)
            if depth == 1:
                if expect_key:
                    current, expect_key = data[i + 1 : end], False
                elif current == key:
                    return i + 1
            i = end + 1
            continue
        if c in b"{[":
            depth += 1
            expect_key = c == 0x7B and depth == 1
        elif c in b"}]":
            depth -= 1
        elif c == 0x2C and depth == 1:
            expect_key, current = True, None
        i += 1
    return None


def _raw(token: chat_wire.TokenLogprob | chat_wire.TopLogprob) -> bytes:
    return bytes(token.bytes) if token.bytes is not None else token.token.encode()


def verdict_score(tokens: Sequence[chat_wire.TokenLogprob]) -> float | None:
    """P(PASS) at the token where the verdict's value starts (see the module's docstring); None when the
    logprobs don't show that token or none of its alternatives begins either verdict."""
    spans = [_raw(token) for token in tokens]
    data = b"".join(spans)
    offset = value_offset(data, b"verdict")
    if offset is None:
        return None
    starts = [0]
    for raw in spans:
        starts.append(starts[-1] + len(raw))
    index = next((i for i in range(len(spans)) if starts[i] <= offset < starts[i + 1]), None)
    if index is None:
        return None
    token, raw, start = tokens[index], spans[index], starts[index]
    skip = offset - start
    lead = raw[:skip]  # what this token holds before the value (the opening quote, a space, ...)
    candidates = {_raw(alt): alt.logprob for alt in token.top_logprobs}
    candidates.setdefault(raw, token.logprob)
    mass = {"P": 0.0, "F": 0.0}
    for text, logprob in candidates.items():
        if len(text) > skip and text[:skip] == lead:
            first = chr(text[skip])
            if first in mass:
                mass[first] += math.exp(logprob)
    if mass["P"] == 0.0 and mass["F"] == 0.0:
        return None
    rest = max(0.0, 1.0 - sum(math.exp(logprob) for logprob in candidates.values()))
    passed = mass["P"] or rest
    failed = mass["F"] or rest
    if passed + failed <= 0.0:
        return None
    return min(1.0, max(0.0, passed / (passed + failed)))
