"""Per-sequence sampler chains, built in llama.cpp so that sampling stays off Python's per-token path."""

from __future__ import annotations

import secrets
from typing import Any

import llama_cpp as llama

from pipeserve.params import SamplingParams

_RANDOM_SEED = llama.LLAMA_DEFAULT_SEED  # llama.cpp draws a random seed for this value


def choice_seed(seed: int | None, index: int) -> int:
    """The seed of choice `index`: distinct per choice, so n > 1 gives n real samples."""
    base = secrets.randbits(32) if seed is None else seed
    value = (base + index) & 0xFFFFFFFF
    return value - 1 if value == _RANDOM_SEED else value


def build_sampler(params: SamplingParams, *, n_vocab: int, max_tokens: int, seed: int) -> Any:
    """bias → penalties → temperature → top-p → draw, the order OpenAI and vLLM apply them in."""
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
    llama.llama_sampler_free(chain)


def sample(chain: Any, ctx: Any, row: int) -> int:
    return int(llama.llama_sampler_sample(chain, ctx, row))
