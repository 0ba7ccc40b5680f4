"""The trained model written out: a GGUF file llama.cpp serves, and the Hugging Face weights beside it.

The GGUF keeps every metadata key of the base file (architecture, tokenizer, chat template) and changes only
the tensors training changed. Those are written as Q8_0 (or F16): measured on SmolLM2-135M, re-quantizing the
merged model to Q4_1 erased the fine-tune (0/22 answers in the trained format, against 21/22 for F16 and Q8_0),
so no lower-bit format is offered. llama.cpp stores the query and key projections of llama-family models with
the rows of each head permuted for its RoPE kernel (`convert_hf_to_gguf.py`); transformers undoes that when it
loads a GGUF, so the merged weights are permuted again here, or the model would attend wrongly.

The Hugging Face directory (safetensors, config, tokenizer with its chat template) is what vLLM and other
servers load: `vllm serve <dir>`.
"""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from pipeserve.finetune.spec import SUPPORTED_ARCHITECTURES


def architecture(gguf_path: Path) -> str:
    """`general.architecture` of a GGUF file (read once per version of the file: reading it parses the whole
    header, vocabulary included, about a second for SmolLM2)."""
    stat = gguf_path.stat()
    return _architecture(str(gguf_path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _architecture(path: str, size: int, mtime_ns: int) -> str:
    import gguf

    reader = gguf.GGUFReader(path)
    field = reader.fields.get(gguf.Keys.General.ARCHITECTURE)
    if field is None:
        raise ValueError(f"{path} has no general.architecture; is it a GGUF model?")
    return str(field.contents())


def permute(weights: np.ndarray[Any, Any], n_head: int) -> np.ndarray[Any, Any]:
    """llama.cpp's order of a query or key projection's rows (its `convert_hf_to_gguf.py` `permute`)."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _gguf_names(state: dict[str, Any], arch: str, blocks: int) -> dict[str, str]:
    """GGUF tensor name -> Hugging Face parameter name."""
    import gguf

    architecture_id = next(key for key, name in gguf.MODEL_ARCH_NAMES.items() if name == arch)
    names = gguf.get_tensor_name_map(architecture_id, blocks)
    out: dict[str, str] = {}
    for hf_name in state:
        stem, dot, suffix = hf_name.rpartition(".")
        mapped = names.get_name(stem)
        if mapped is not None and dot:
            out[f"{mapped}.{suffix}"] = hf_name
    return out


def write_gguf(
    model: Any, base_gguf: Path, target: Path, *, changed: set[str] | None, out_type: str = "Q8_0"
) -> dict[str, Any]:
    """Write `model`'s weights into a copy of `base_gguf`. `changed`: the Hugging Face names of the parameters
    training touched (None: all); the others keep the base file's bytes exactly. What was written, by type."""
    import gguf

    reader = gguf.GGUFReader(str(base_gguf))
    arch = str(reader.fields[gguf.Keys.General.ARCHITECTURE].contents())
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(f"GGUF architecture {arch!r} is not one this exporter writes ({SUPPORTED_ARCHITECTURES})")
    config = model.config
    state = {name: tensor for name, tensor in model.state_dict().items()}
    by_gguf = _gguf_names(state, arch, config.num_hidden_layers)
    quant = gguf.GGMLQuantizationType[out_type]
    file_type = gguf.LlamaFileType.MOSTLY_Q8_0 if out_type == "Q8_0" else gguf.LlamaFileType.MOSTLY_F16

    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    writer = gguf.GGUFWriter(str(partial), arch=arch, endianess=reader.endianess)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        value = int(file_type) if field.name == gguf.Keys.General.FILE_TYPE else field.contents()
        writer.add_key_value(field.name, value, value_type, sub_type=sub_type)

    written: dict[str, int] = {}
    tensors: list[tuple[str, np.ndarray[Any, Any], Any]] = []
    for tensor in reader.tensors:
        hf_name = by_gguf.get(tensor.name)
        if hf_name is None:
            raise ValueError(f"no weight of the trained model maps to the GGUF tensor {tensor.name}")
        if changed is not None and hf_name not in changed:
            tensors.append((tensor.name, tensor.data, tensor.tensor_type))
            written["unchanged"] = written.get("unchanged", 0) + 1
            continue
        data = state[hf_name].detach().float().cpu().numpy()
        if tensor.name.endswith("attn_q.weight"):
            data = permute(data, config.num_attention_heads)
        elif tensor.name.endswith("attn_k.weight"):
            data = permute(data, config.num_key_value_heads)
        kind = tensor.tensor_type
        if kind != gguf.GGMLQuantizationType.F32 and data.ndim >= 2:
            kind = quant if data.shape[-1] % gguf.GGML_QUANT_SIZES[quant][0] == 0 else gguf.GGMLQuantizationType.F16
        if kind == gguf.GGMLQuantizationType.F32:
            tensors.append((tensor.name, data.astype(np.float32), kind))
        elif kind == gguf.GGMLQuantizationType.F16:
            tensors.append((tensor.name, data.astype(np.float16), kind))
        else:
            tensors.append((tensor.name, gguf.quants.quantize(data, kind), kind))
        written[kind.name] = written.get(kind.name, 0) + 1
    for name, data, kind in tensors:
        writer.add_tensor_info(name, data.shape, data.dtype, data.nbytes, kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for _, data, _ in tensors:
        writer.write_tensor_data(data, tensor_endianess=reader.endianess)
    writer.close()
    partial.replace(target)
    return written


def write_hf(model: Any, spec_gguf: Path, base_hf_dir: Path | None, target: Path) -> None:
    """The merged weights (bfloat16 safetensors), the config and the tokenizer, as transformers saves them."""
    import torch
    from transformers import AutoTokenizer

    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.config.use_cache = True
    model.to(torch.bfloat16).save_pretrained(str(partial), safe_serialization=True)
    if base_hf_dir is not None:
        tokenizer = AutoTokenizer.from_pretrained(str(base_hf_dir))
    else:
        tokenizer = AutoTokenizer.from_pretrained(str(spec_gguf.parent), gguf_file=spec_gguf.name)
    tokenizer.save_pretrained(str(partial))
    saved = json.loads((partial / "config.json").read_text())
    saved.pop("quantization_config", None)
    (partial / "config.json").write_text(json.dumps(saved, indent=2) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    partial.replace(target)
