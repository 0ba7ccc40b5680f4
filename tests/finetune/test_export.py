"""The GGUF a trained model is served from: every metadata key of its base, the weights in llama.cpp's layout
(attention heads permuted back for its RoPE), readable by llama.cpp with the base's behaviour intact."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch", reason="exporting trained weights needs the train extra: pip install '.[train]'")

import gguf
import torch
from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

from pipeserve.engines.llamacpp.options import embedded_gguf_path
from pipeserve.finetune import export
from pipeserve.finetune.spec import TrainingSpec
from pipeserve.finetune.train import load_base


def test_the_permutation_undoes_what_transformers_does_on_load() -> None:
    processor = LlamaTensorProcessor(config={"num_attention_heads": 9, "num_key_value_heads": 3})
    rng = np.random.default_rng(0)
    for name, heads in (("blk.0.attn_q.weight", 9), ("blk.0.attn_k.weight", 3)):
        stored = rng.standard_normal((heads * 64, 576)).astype(np.float32)  # as llama.cpp stores it
        loaded = processor.process(stored, name).weights  # what transformers hands the model
        assert not np.array_equal(loaded, stored)
        assert np.array_equal(export.permute(loaded, heads), stored)


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    tmp = tmp_path_factory.mktemp("export")
    spec = TrainingSpec(job_id="t", slug="t", base_gguf=embedded_gguf_path(), train_file=tmp / "none", output_dir=tmp)
    yield load_base(spec)


@pytest.fixture(scope="module")
def rewritten(base_model: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The base model written back whole (every tensor re-encoded, as after full fine-tuning), in F16: exact for
    Q4_1's values, so it can be compared bit for bit. (The Q8_0 default rounds; the end-to-end test checks that a
    Q8_0 fine-tune keeps what it learnt.)"""
    target = tmp_path_factory.mktemp("gguf") / "model.gguf"
    written = export.write_gguf(base_model, embedded_gguf_path(), target, changed=None, out_type="F16")
    assert written == {"F16": 211, "F32": 61}
    return target


def test_every_metadata_key_is_kept(rewritten: Path) -> None:
    base = gguf.GGUFReader(str(embedded_gguf_path()))
    out = gguf.GGUFReader(str(rewritten))
    assert set(out.fields) == set(base.fields)
    for name, field in base.fields.items():
        if name.startswith("GGUF.") or name == "general.file_type":
            continue
        assert out.fields[name].contents() == field.contents(), name
    assert out.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_F16
    assert [t.name for t in out.tensors] == [t.name for t in base.tensors]


def test_the_weights_read_back_as_written(base_model: Any, rewritten: Path) -> None:
    """Dequantized by transformers (which un-permutes the heads), each tensor is the model's, to F16's precision."""
    from transformers import AutoModelForCausalLM

    again = AutoModelForCausalLM.from_pretrained(str(rewritten.parent), gguf_file=rewritten.name, dtype=torch.float32)
    before = base_model.state_dict()
    for name, tensor in again.state_dict().items():
        scale = float(before[name].abs().max())
        assert torch.allclose(tensor, before[name], atol=scale / 1000), name


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """llama.cpp's own F16 conversion of the embedded file (`llama_model_quantize`)."""
    import ctypes

    import llama_cpp

    target = tmp_path_factory.mktemp("converted") / "base-f16.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(gguf.LlamaFileType.MOSTLY_F16)
    params.allow_requantize = True
    assert (
        llama_cpp.llama_model_quantize(str(embedded_gguf_path()).encode(), str(target).encode(), ctypes.byref(params))
        == 0
    )
    return target


def test_the_rewritten_weights_are_llama_cpps_own_conversion_bit_for_bit(rewritten: Path, converted: Path) -> None:
    """Dequantized by transformers, trained-on as float32, permuted back and written by us: the same bytes as
    llama.cpp converting its own file, so nothing is lost or misplaced on the way out."""
    ours = {tensor.name: tensor for tensor in gguf.GGUFReader(str(rewritten)).tensors}
    for tensor in gguf.GGUFReader(str(converted)).tensors:
        assert ours[tensor.name].tensor_type == tensor.tensor_type, tensor.name
        assert np.array_equal(np.asarray(ours[tensor.name].data), np.asarray(tensor.data)), tensor.name


async def test_llama_cpp_serves_the_rewritten_file(rewritten: Path, converted: Path, tmp_path: Path) -> None:
    from pipeserve.engines.llamacpp.options import LlamaCppOptions
    from pipeserve.protocol.chat_completions import ChatCompletionRequest
    from pipeserve.service.chat import ChatService
    from pipeserve.service.edge import to_params
    from pipeserve.service.models import ModelRegistry
    from pipeserve.service.serving import start_engines
    from pipeserve.settings import ModelConfig, Settings
    from pipeserve.validation import validate

    options: dict[str, Any] = {"max_sequences": 2, "context_size": 1024}
    if "weights" in LlamaCppOptions.model_fields:
        options["weights"] = "original"  # each file as it is, not a conversion the engine would choose
    settings = Settings(
        data_dir=tmp_path,
        models=[
            ModelConfig(id="converted", path=str(converted), **options),
            ModelConfig(id="rewritten", path=str(rewritten), **options),
        ],
    )
    served, providers = await start_engines(settings, {})
    chat = ChatService(ModelRegistry(served, providers))
    try:
        prompts = ["Name three colours.", "What is the capital of France?", "Write one word."]
        answers: dict[str, list[str | None]] = {}
        for model in ("converted", "rewritten"):
            answers[model] = []
            for prompt in prompts:
                body = {"model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 0}
                params = to_params(validate(ChatCompletionRequest, body | {"max_tokens": 12}))
                completion = await chat.complete(params)
                answers[model].append(completion.choices[0].message.content)
        assert answers["rewritten"] == answers["converted"]
        assert all(answers["rewritten"])
    finally:
        for model in served:
            await model.engine.close()
