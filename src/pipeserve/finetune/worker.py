"""The training process: `python -m pipeserve.finetune.worker JOB_DIR`.

Reads `JOB_DIR/job.json` (a `TrainingSpec`) and the entries it names, trains, writes the GGUF and the Hugging
Face weights, and reports on stdout, one JSON object a line: `{"progress": {...}}` while it works, then
`{"result": {...}}` or `{"error": "..."}`. It runs in a process of its own so that training never shares the
serving engines' threads or the server's event loop, and a crash or a cancellation costs only the job.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from pipeserve.finetune.spec import TrainingSpec


def emit(kind: str, value: Any) -> None:
    sys.stdout.write(json.dumps({kind: value}) + "\n")
    sys.stdout.flush()


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _quiet_llama() -> None:
    """llama.cpp logs every vocabulary load to stderr; the job's log keeps only what matters."""
    import ctypes

    import llama_cpp as llama

    global _SILENCE  # llama.cpp keeps calling it for as long as the process lives
    _SILENCE = llama.llama_log_callback(lambda level, text, user: None)
    llama.llama_log_set(_SILENCE, ctypes.c_void_p(0))


_SILENCE: Any = None


def run(spec: TrainingSpec) -> dict[str, Any]:
    from pipeserve.finetune.render import Renderer, Vocabulary, render_all

    started = time.monotonic()
    emit("progress", {"phase": "loading"})
    _quiet_llama()
    vocabulary = Vocabulary(spec.base_gguf)
    renderer = Renderer(vocabulary, spec.chat_template)
    entries = [json.loads(line) for line in spec.train_file.read_text().splitlines() if line.strip()]
    examples, too_long = render_all(renderer, entries, spec.max_length)
    vocabulary.close()
    if not examples:
        raise ValueError(
            f"all {len(entries)} TRAIN entries are longer than max_length ({spec.max_length} tokens); "
            "raise max_length or shorten the entries"
        )
    pairs = [e for e in examples if e.rejected is not None]

    import torch

    from pipeserve.finetune import export, train

    if spec.threads:
        torch.set_num_threads(spec.threads)
    torch.manual_seed(spec.seed)
    model = train.load_base(spec)
    model = train.with_adapters(model, spec)
    changed = {name.replace("base_model.model.", "").replace(".base_layer", "") for name, _ in _lora_targets(model)}
    result: dict[str, Any] = {
        "train_examples": len(examples),
        "skipped_too_long": too_long,
        "trained_tokens": sum(e.trained_tokens for e in examples),
        "trainable_parameters": sum(p.numel() for p in train.trainable(model)),
        "device": str(train.device()),
        "threads": torch.get_num_threads(),
    }
    if spec.sft is not None:
        result["sft"] = train.run_sft(model, examples, spec.sft, spec.seed, lambda p: emit("progress", p))
    if spec.preference is not None:
        before = train.snapshot(model)
        result["preference"] = train.run_preference(
            model, pairs, spec.preference, spec.seed, lambda p: emit("progress", p)
        )
        if spec.preference.adapter_weight != 1.0:
            train.blend(model, before, spec.preference.adapter_weight)
    emit("progress", {"phase": "exporting"})
    exported = time.monotonic()
    plain = train.merged(model, spec)
    written = export.write_gguf(
        plain,
        spec.base_gguf,
        spec.gguf_path,
        changed=None if spec.method == "full" else changed,
        out_type=spec.gguf_type,
    )
    export.write_hf(plain, spec.base_gguf, spec.base_hf_dir, spec.hf_dir)
    result |= {
        "gguf_tensors": written,
        "export_seconds": round(time.monotonic() - exported, 2),
        "seconds": round(time.monotonic() - started, 2),
        "peak_rss_mb": peak_rss_mb(),
    }
    return result


def _lora_targets(model: Any) -> list[tuple[str, Any]]:
    """The weights LoRA adapts (their merged values change); empty for full fine-tuning."""
    return [
        (f"{name}.weight", module)
        for name, module in model.named_modules()
        if hasattr(module, "lora_A") and hasattr(module, "base_layer")
    ]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m pipeserve.finetune.worker JOB_DIR", file=sys.stderr)
        return 2
    job_dir = Path(args[0])
    try:
        spec = TrainingSpec.model_validate_json((job_dir / "job.json").read_text())
        nice = int(os.environ.get("PIPESERVE_TRAIN_NICE", "0"))
        if nice:
            os.nice(nice)
        emit("result", run(spec))
    except Exception as exc:
        traceback.print_exc()
        emit("error", f"{type(exc).__name__}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
