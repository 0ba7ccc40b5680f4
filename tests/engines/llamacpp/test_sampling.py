"""The vectorised draw (`sampling.Draw`) that serves plain temperature sampling: the softmax's distribution,
never a masked token, the same tokens for the same seed. Logits come from a numpy row standing in for
llama.cpp's output buffer."""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np
import pytest

from pipeserve.engines.llamacpp import sampling
from pipeserve.engines.llamacpp.sampling import Draw
from pipeserve.params import SamplingParams


@pytest.fixture
def logits(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Set `logits["row"]` to the row llama.cpp would return."""
    held: dict[str, Any] = {}

    def row_of(ctx: Any, index: int) -> Any:
        return held["row"].ctypes.data_as(ctypes.POINTER(ctypes.c_float))

    monkeypatch.setattr(sampling.llama, "llama_get_logits_ith", row_of)
    return held


def softmax(row: np.ndarray, temperature: float) -> np.ndarray:
    weights = np.exp((np.where(np.isfinite(row), row, -np.inf) - row[np.isfinite(row)].max()) / temperature)
    return weights / weights.sum()


@pytest.mark.parametrize("n_vocab", [7, 1024, 2500])  # within one block, exactly one, past a block's end
def test_draws_follow_the_softmax_and_never_a_masked_token(logits: dict[str, Any], n_vocab: int) -> None:
    rng = np.random.default_rng(n_vocab)
    row = (rng.standard_normal(n_vocab) * 2).astype(np.float32)
    row[[0, n_vocab // 2, n_vocab - 1]] = -np.inf  # masked by a constraint
    row[1] = 6.0  # one likely token, so that most of the mass sits in a few bins
    logits["row"] = row
    draw, draws = Draw(0.7, seed=11, n_vocab=n_vocab), 60_000
    counts = np.bincount([draw(None, 0) for _ in range(draws)], minlength=n_vocab)
    assert counts[[0, n_vocab // 2, n_vocab - 1]].sum() == 0
    expected = softmax(row, 0.7) * draws
    likely = expected >= 50  # a chi-square over the bins that hold enough draws
    chi2 = float((((counts - expected) ** 2)[likely] / expected[likely]).sum())
    assert chi2 < likely.sum() + 6 * np.sqrt(2 * likely.sum()), chi2
    assert abs(counts[~likely].sum() - expected[~likely].sum()) < 6 * np.sqrt(expected[~likely].sum() + 1)


def test_the_same_seed_draws_the_same_tokens(logits: dict[str, Any]) -> None:
    logits["row"] = np.linspace(-3, 3, 5000, dtype=np.float32)
    first, second, other = Draw(1.0, 5, 5000), Draw(1.0, 5, 5000), Draw(1.0, 6, 5000)
    tokens = [first(None, 0) for _ in range(50)]
    assert tokens == [second(None, 0) for _ in range(50)]
    assert tokens != [other(None, 0) for _ in range(50)]


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
