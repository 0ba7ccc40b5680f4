"""The vectorised draw (`sampling.Draw`) that serves plain temperature sampling: the softmax's distribution,
never a masked token, the same tokens for the same seed; and the logits rows it reads (`LlamaModel.logits`),
views into llama.cpp's output buffer."""

from __future__ import annotations

import os

import llama_cpp as llama
import numpy as np
import pytest

from pipeserve.engines.llamacpp import sampling
from pipeserve.engines.llamacpp.model import LlamaModel
from pipeserve.engines.llamacpp.options import embedded_gguf_path
from pipeserve.engines.llamacpp.sampling import Draw
from pipeserve.params import SamplingParams


def softmax(row: np.ndarray, temperature: float) -> np.ndarray:
    weights = np.exp((np.where(np.isfinite(row), row, -np.inf) - row[np.isfinite(row)].max()) / temperature)
    return weights / weights.sum()


@pytest.mark.parametrize(
    ("n_vocab", "offset", "temperature"),
    [
        (7, 0.0, 0.7),  # within one block
        (1024, 0.0, 0.7),  # exactly one
        (2500, 0.0, 0.7),  # past a block's end
        (2500, 200.0, 0.7),  # logits / temperature beyond what exp takes in float32: the peak subtracted first
        (2500, -200.0, 0.7),  # ... and below what it can tell from 0
        (2500, 3.0, 0.02),  # a low temperature, ordinary logits: the same
    ],
)
def test_draws_follow_the_softmax_and_never_a_masked_token(n_vocab: int, offset: float, temperature: float) -> None:
    rng = np.random.default_rng(n_vocab)
    row = (rng.standard_normal(n_vocab) * 2 * temperature / 0.7 + offset).astype(np.float32)
    row[[0, n_vocab // 2, n_vocab - 1]] = -np.inf  # masked by a constraint
    row[1] = offset + 6.0 * temperature / 0.7  # one likely token, so that most of the mass sits in a few bins
    draw, draws = Draw(temperature, seed=11, n_vocab=n_vocab), 60_000
    counts = np.bincount([draw(row) for _ in range(draws)], minlength=n_vocab)
    assert counts[[0, n_vocab // 2, n_vocab - 1]].sum() == 0
    expected = softmax(row, temperature) * draws
    likely = expected >= 50  # a chi-square over the bins that hold enough draws
    chi2 = float((((counts - expected) ** 2)[likely] / expected[likely]).sum())
    assert chi2 < likely.sum() + 6 * np.sqrt(2 * likely.sum()), chi2
    assert abs(counts[~likely].sum() - expected[~likely].sum()) < 6 * np.sqrt(expected[~likely].sum() + 1)


def test_the_same_seed_draws_the_same_tokens() -> None:
    row = np.linspace(-3, 3, 5000, dtype=np.float32)
    first, second, other = Draw(1.0, 5, 5000), Draw(1.0, 5, 5000), Draw(1.0, 6, 5000)
    tokens = [first(row) for _ in range(150)]  # past the first batch of uniforms
    assert tokens == [second(row) for _ in range(150)]
    assert tokens != [other(row) for _ in range(150)]


def test_plain_temperature_sampling_is_the_draw_and_the_rest_llama_chains() -> None:
    assert isinstance(sampling.build_sampler(SamplingParams(temperature=0.7), n_vocab=10, max_tokens=4, seed=1), Draw)
    for params in (
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=0.7, top_p=0.9),
        SamplingParams(temperature=0.7, presence_penalty=0.5),
        SamplingParams(temperature=0.7, logit_bias=((1, 5.0),)),
    ):
        chain = sampling.build_sampler(params, n_vocab=10, max_tokens=4, seed=1)
        assert not isinstance(chain, Draw)
        sampling.free_sampler(chain)


def test_logits_rows_are_views_of_llama_cpps_buffer() -> None:
    """`LlamaModel.logits` keeps its views by address: each is the row llama.cpp returns now (after later decodes
    too), writable (a constraint masks tokens in place), and the same object for the same row."""
    model = LlamaModel(embedded_gguf_path(), n_ctx=256, n_seq_max=1, n_batch=16, threads=os.cpu_count() or 1)
    try:
        prompt = model.tokenize("The ocean is", add_special=True)
        steps = [(prompt, 0), ([prompt[-1]], len(prompt)), ([prompt[-1]], len(prompt) + 1)]
        for tokens, start in steps:  # the prompt, then two tokens after it, each with its own logits
            batch = model.batch
            for i, token in enumerate(tokens):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, start + i, 1
                batch.seq_id[i][0], batch.logits[i] = 0, i == len(tokens) - 1
            batch.n_tokens = len(tokens)
            assert model.decode() == 0
            row = len(tokens) - 1
            expected = np.ctypeslib.as_array(llama.llama_get_logits_ith(model.ctx, row), shape=(model.n_vocab,))
            view = model.logits(row)
            assert view.shape == (model.n_vocab,) and np.array_equal(view, expected)
            assert model.logits(row) is view
            view[0] = -np.inf
            assert expected[0] == -np.inf
    finally:
        model.close()
