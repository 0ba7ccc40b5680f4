"""Jobs (requests) and slots (llama.cpp sequences) of the llama.cpp engine's scheduler."""

from __future__ import annotations

import codecs
import time
from dataclasses import dataclass, field
from typing import Any

from pipeserve.engines.base import TokenLogprob
from pipeserve.engines.llamacpp import sampling
from pipeserve.engines.llamacpp.guided import Guide
from pipeserve.engines.llamacpp.model import LlamaModel
from pipeserve.errors import PipeserveError
from pipeserve.params import SamplingParams


@dataclass(slots=True)
class TextDelta:
    """What one choice's sequence produced in one step: text as decoded, before any parsing."""

    index: int
    text: str
    tokens: int
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None  # "stop" | "length" once the sequence is finished


@dataclass(eq=False)
class Job:
    """One request: `n` choices over one prompt."""

    prompt: list[int]
    n: int
    max_tokens: int
    sampling: SamplingParams
    top_logprobs: int | None  # None: no logprobs
    dispatch_to: Any  # the Generation the deltas are for; opaque here
    schema: dict[str, Any] | None = None  # constrained output: a JSON schema and its compiled grammar
    grammar: str | None = None
    slots: list[Slot] = field(default_factory=list)
    # Waiting for another job's prompt prefill to reach this many shared tokens, to copy them.
    follow: tuple[Job, int] | None = None
    cached_tokens: int = 0
    long: bool = False  # too long for a sequence's window: runs in the long-context lane
    cancelled: bool = False
    failed: PipeserveError | None = None


@dataclass(eq=False)
class Slot:
    """One llama.cpp sequence. `tokens` are exactly the tokens whose KV entries it holds, by position."""

    seq: int
    tokens: list[int] = field(default_factory=list)
    job: Job | None = None
    choice: int = 0
    sampler: Any = None
    pending: int | None = None  # sampled, not yet decoded
    generated: int = 0
    decoder: codecs.IncrementalDecoder | None = None
    guide: Guide | None = None
    last_used: float = 0.0

    def release(self, model: LlamaModel, *, keep_cache: bool) -> None:
        if self.sampler is not None:
            sampling.free_sampler(self.sampler)
        self.sampler = None
        self.job = None
        self.pending = None
        self.decoder = None
        self.guide = None
        self.last_used = time.monotonic()
        if not keep_cache:
            self.clear(model)

    def clear(self, model: LlamaModel) -> None:
        if self.tokens:
            model.seq_clear(self.seq)
        self.tokens = []


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the common prefix, by binary search over C-speed slice comparisons."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo
