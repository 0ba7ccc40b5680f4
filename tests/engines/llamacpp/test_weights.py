"""The weight format: measured once, kept, reused; a crashing candidate costs only itself; a named format is
converted without measuring; the converted weights answer as the shipped ones do."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pipeserve.engines.llamacpp import weights
from pipeserve.engines.llamacpp.engine import LlamaCppEngine
from pipeserve.engines.llamacpp.options import embedded_gguf_path
from pipeserve.params import ChatMessage, ChatParams
from pipeserve.settings import ModelConfig
from tests.conftest import WEIGHTS_DIR

MODEL = "SmolLM2-135M-Instruct"


def test_the_choice_is_made_once_and_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    # The session measured and chose (conftest); asking again measures nothing.
    def no_measuring(*_: object, **__: object) -> weights.Measured:
        raise AssertionError("measured again")

    monkeypatch.setattr(weights, "measure_in_child", no_measuring)
    source = embedded_gguf_path()
    choice = weights.choose(source, WEIGHTS_DIR, threads=os.cpu_count() or 1, progress=False)
    record = json.loads((WEIGHTS_DIR / f"{source.stem}.{weights.source_key(source)}.json").read_text())
    assert record["chosen"]["name"] == choice.name and choice.path.is_file()
    assert record["rule"] == weights.RULE
    assert all(m["single"] > 0 for m in record["measured"] if m["failure"] is None)  # recorded for the docs
    measured = {(m["name"], m["repack"]) for m in record["measured"]}
    assert {("original", False), ("Q8_0", False), ("F16", False)} <= measured
    # Every candidate is faithful: nothing below 8 bits is ever tried.
    assert {name for name, _ in measured} <= {"original", "Q8_0", "F16", "BF16"}


def test_a_candidate_that_crashes_or_fails_costs_only_itself(tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a gguf file")
    result = weights.measure_in_child("Q8_0", broken, repack=True, threads=1)
    assert result.failure is not None and result.cost == float("inf")


def test_a_smaller_file_wins_only_when_as_fast_at_prefill_and_at_decoding() -> None:
    bf16 = weights.Measured("BF16", False, prefill=1020, decode=350, single=91)
    q8_same = weights.Measured("Q8_0", True, prefill=1000, decode=345, single=120)
    q8_other_trade = weights.Measured("Q8_0", True, prefill=760, decode=365, single=121)
    assert weights._as_fast(q8_same, bf16)
    assert not weights._as_fast(q8_other_trade, bf16)  # another trade, not the same speed


async def test_a_named_format_is_converted_without_measuring(tmp_path: Path) -> None:
    config = ModelConfig(id=MODEL, max_sequences=2, context_size=1024, weights="Q8_0", long_context=0)
    engine = LlamaCppEngine(config, max_waiting=8, cache_dir=tmp_path)
    await engine.start()
    try:
        params = ChatParams(model=MODEL, messages=(ChatMessage("user", "Name a colour."),), max_tokens=8, logprobs=True)
        generation = await engine.generate(params)
        text = "".join([delta.content async for step in generation for delta in step])
        assert text
    finally:
        await engine.close()
    converted = list(tmp_path.glob("*.Q8_0.gguf"))
    assert len(converted) == 1 and converted[0].stat().st_size > embedded_gguf_path().stat().st_size
    assert not list(tmp_path.glob("*.json"))  # nothing measured
