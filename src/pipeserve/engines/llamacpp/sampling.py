"""Per-sequence sampler chains, built in llama.cpp so that sampling stays off Python's per-token path."""

from __future__ import annotations

import secrets
from typing import Any

import llama_cpp as llama
import numpy as np

from pipeserve.engines.llamacpp.model import LlamaModel
from pipeserve.params import SamplingParams

_RANDOM_SEED = llama.LLAMA_DEFAULT_SEED  # llama.cpp draws a random seed for this value


def choice_seed(seed: int | None, index: int) -> int:
    """The seed of choice `index`: distinct per choice, so n > 1 gives n real samples."""
    base = secrets.randbits(32) if seed is None else seed
    value = (base + index) & 0xFFFFFFFF
    return value - 1 if value == _RANDOM_SEED else value


class Draw:
    """A draw from softmax(logits / temperature) over the whole vocabulary, vectorised: what llama.cpp's
    `temp → dist` chain computes with a scalar `expf` and a running sum per token (~350 µs a token on a 49k
    vocabulary, 14% of a 16-sequence step's engine time), in ~50 µs and without handing the GIL back and forth
    across a ctypes call. Same distribution; a seed gives the same tokens run after run, not the chain's.

    Right after a decode, whose weights have just gone through the caches, each numpy call costs several times
    what it costs in a loop (the first `max` ~60 µs, a 48-element `cumsum` ~40): so as few calls as the
    arithmetic allows, and the uniforms drawn 64 at a time."""

    _BLOCK = 1024  # a running sum over every token is slow in numpy (~150 µs): sum blocks, then run in one
    _UNIFORMS = 64
    _SAFE = 64.0  # |logit / temperature| of the likeliest token below this: exp neither overflows nor underflows

    def __init__(self, temperature: float, seed: int, n_vocab: int) -> None:
        self.scale = np.float32(1.0 / temperature)
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self.n_vocab = n_vocab
        blocks = -(-n_vocab // self._BLOCK)
        self._weights = np.zeros((blocks, self._BLOCK), dtype=np.float32)  # the padding stays 0
        self._flat = self._weights.reshape(-1)[:n_vocab]
        self._uniforms: list[float] = []  # the generator's next ones, last first (the same sequence one by one)

    def __call__(self, logits: np.ndarray[Any, np.dtype[np.float32]]) -> int:
        weights = self._flat
        peak = float(logits.max()) * float(self.scale)
        if -self._SAFE < peak < self._SAFE:
            np.multiply(logits, self.scale, out=weights)  # exp(l / t) in proportion to exp((l - max) / t)
        else:
            np.subtract(logits, logits.max(), out=weights)
            weights *= self.scale
        np.exp(weights, out=weights)  # tokens masked to -inf by a constraint weigh 0
        blocks = np.cumsum(self._weights.sum(axis=1), dtype=np.float64)
        if not self._uniforms:
            self._uniforms = self.rng.random(self._UNIFORMS).tolist()
            self._uniforms.reverse()
        target = self._uniforms.pop() * blocks[-1]
        # The first token whose running sum passes the target: never one of weight 0.
        block = min(int(blocks.searchsorted(target, side="right")), len(blocks) - 1)
        before = blocks[block - 1] if block else 0.0
        inside = np.cumsum(self._weights[block], dtype=np.float64)
        offset = min(int(inside.searchsorted(target - before, side="right")), self._BLOCK - 1)
        token = block * self._BLOCK + offset
        while token > 0 and (token >= self.n_vocab or weights[token] == 0.0):  # rounding at a block's end
            token -= 1
        return token


def build_sampler(params: SamplingParams, *, n_vocab: int, max_tokens: int, seed: int) -> Any:
    """bias → penalties → temperature → top-p → draw, the order OpenAI and vLLM apply them in. The plain case,
    temperature alone, is a vectorised `Draw`; the others are llama.cpp sampler chains."""
    penalties = params.presence_penalty or params.frequency_penalty
    if params.temperature > 0.0 and params.top_p >= 1.0 and not params.logit_bias and not penalties:
        return Draw(params.temperature, seed, n_vocab)
    chain = llama.llama_sampler_chain_init(llama.llama_sampler_chain_default_params())
    if params.logit_bias:
        biases = (llama.llama_logit_bias * len(params.logit_bias))()
        for slot, (token, bias) in zip(biases, params.logit_bias, strict=True):
            slot.token = token
            slot.bias = bias
        llama.llama_sampler_chain_add(
            chain, llama.llama_sampler_init_logit_bias(n_vocab, len(params.logit_bias), biases)
        )
    if params.presence_penalty or params.frequency_penalty:
        # OpenAI's penalties count the completion's own tokens only: the sampler sees exactly those, as
        # llama_sampler_sample accepts each sampled token and prompt tokens are never accepted.
        llama.llama_sampler_chain_add(
            chain,
            llama.llama_sampler_init_penalties(
                n_vocab, max(max_tokens, 1), 1.0, params.frequency_penalty, params.presence_penalty
            ),
        )
    if params.temperature <= 0.0:
        llama.llama_sampler_chain_add(chain, llama.llama_sampler_init_greedy())
        return chain
    llama.llama_sampler_chain_add(chain, llama.llama_sampler_init_temp(params.temperature))
    if params.top_p < 1.0:
        llama.llama_sampler_chain_add(chain, llama.llama_sampler_init_top_p(params.top_p, 1))
    llama.llama_sampler_chain_add(chain, llama.llama_sampler_init_dist(seed))
    return chain


def free_sampler(chain: Any) -> None:
    if not isinstance(chain, Draw):
        llama.llama_sampler_free(chain)


def sample(chain: Any, model: LlamaModel, row: int) -> int:
    if isinstance(chain, Draw):
        return chain(model.logits(row))
    return int(llama.llama_sampler_sample(chain, model.ctx, row))
