"""Training on the embedded model: batches split to bound memory, preference tuning that prefers the chosen
answer, and a full fine-tuning job through the worker process, as a server runs it."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch", reason="training needs the train extra: pip install '.[train]'")
pytest.importorskip("peft", reason="training needs the train extra: pip install '.[train]'")

import torch

from pipeserve.engines.llamacpp.options import embedded_gguf_path
from pipeserve.finetune import train
from pipeserve.finetune.render import Example, Renderer, Vocabulary
from pipeserve.finetune.spec import Preference, Sft, TrainingSpec
from tests.finetune.task import entries


def example(length: int) -> Example:
    return Example(ids=list(range(length)), labels=list(range(length)))


def test_a_batch_is_cut_to_the_token_budget() -> None:
    batch = [example(n) for n in (100, 300, 50, 200, 120)]
    groups = train.micro_batches(batch)
    assert sorted(len(e.ids) for group in groups for e in group) == [50, 100, 120, 200, 300]
    assert all(len(group) * len(group[0].ids) <= train.MICRO_TOKENS for group in groups)
    assert [len(e.ids) for e in train.micro_batches([example(2000)])[0]] == [2000]  # alone, however long


@pytest.fixture(scope="module")
def renderer() -> Iterator[Renderer]:
    vocabulary = Vocabulary(embedded_gguf_path())
    yield Renderer(vocabulary)
    vocabulary.close()


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("base")
    spec = TrainingSpec(job_id="b", slug="b", base_gguf=embedded_gguf_path(), train_file=tmp / "x", output_dir=tmp)
    return train.load_base(spec)


def lora(base: Any, tmp_path: Path) -> Any:
    """Fresh adapters on a copy of the shared base (peft changes the model it wraps)."""
    spec = TrainingSpec(
        job_id="l", slug="l", base_gguf=embedded_gguf_path(), train_file=tmp_path / "x", output_dir=tmp_path
    )
    return train.with_adapters(copy.deepcopy(base), spec)


def test_a_sequence_longer_than_the_budget_trains_with_checkpointing(
    base: Any, renderer: Renderer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(train, "MICRO_TOKENS", 32)  # every example of the task is longer
    model = lora(base, tmp_path)
    examples = [renderer.example(row) for row in entries(4)]
    before = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    summary = train.run_sft(model, examples, Sft(epochs=2, batch_size=4, learning_rate=1e-3), 0, lambda _: None)
    assert summary["final_loss"] < summary["first_loss"]
    changed = [name for name, p in model.named_parameters() if name in before and not torch.equal(p, before[name])]
    assert len(changed) == len(before)  # every adapter got gradients through the recomputed activations
    assert not model.get_base_model().is_gradient_checkpointing  # switched off again for export


def test_preference_tuning_prefers_the_chosen_answers(base: Any, renderer: Renderer, tmp_path: Path) -> None:
    welcome = {"role": "assistant", "content": "Welcome!"}
    rows = [
        {
            "messages": [{"role": "user", "content": f"Greet visitor {i}."}, welcome],
            "rejected_message": {"content": "Go away."},
        }
        for i in range(8)
    ]
    pairs = [renderer.example(row) for row in rows]
    model = lora(base, tmp_path)

    def margin() -> float:
        rows_, labels = train._pair_rows(pairs)
        logps = train.token_logprobs(model, rows_, labels).detach()
        return float((logps[: len(pairs)] - logps[len(pairs) :]).mean())

    before = margin()
    preference = Preference(epochs=3, batch_size=4, learning_rate=5e-4, beta=0.1, adapter_weight=1.0)
    summary = train.run_preference(model, pairs, preference, 0, lambda _: None)
    assert summary["final_loss"] < summary["first_loss"]
    assert margin() > before + 1.0


def test_a_full_fine_tuning_job_runs_in_the_worker(tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in entries(8)))
    spec = TrainingSpec(
        job_id="f",
        slug="f",
        base_gguf=embedded_gguf_path(),
        method="full",
        sft=Sft(epochs=0.5, batch_size=4, learning_rate=5e-5),
        train_file=tmp_path / "train.jsonl",
        output_dir=tmp_path,
    )
    (tmp_path / "job.json").write_text(spec.model_dump_json())
    done = subprocess.run(
        [sys.executable, "-m", "pipeserve.finetune.worker", str(tmp_path)],
        capture_output=True,
        text=True,
        env={"OMP_WAIT_POLICY": "PASSIVE", "PATH": "/usr/bin:/bin"},
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines: list[dict[str, Any]] = [json.loads(line) for line in done.stdout.splitlines()]
    phases = [line["progress"].get("phase") for line in lines if "progress" in line]
    assert phases[0] == "loading" and "training" in phases and phases[-1] == "exporting"
    result = lines[-1]["result"]
    assert result["train_examples"] == 8 and result["sft"]["examples"] == 4  # half an epoch
    assert result["trainable_parameters"] > 100_000_000  # every weight
    assert result["gguf_tensors"] == {"Q8_0": 211, "F32": 61}  # norms stay F32, nothing keeps the base's bytes
    assert (tmp_path / "model.gguf").stat().st_size > 100_000_000
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
