"""Fine-tuning: from a dataset to a served `openpipe:<slug>` model, on this machine.

`POST /models` (or `pipeserve models train`) checks the request and queues a job (`service.py`); a runner
(`runner.py`, in the server or in the terminal) hands it to a worker process (`worker.py`) that renders the
dataset's TRAIN entries as the served model sees them (`render.py`), trains (`train.py`) and writes a GGUF file
and Hugging Face weights (`export.py`); the model is then served beside the configured ones (`serving.py`) and
compared with its base on the TEST entries (`evaluate.py`).

The training stack (torch, transformers, peft, gguf) is the optional `train` extra; only the worker imports it.
"""

from __future__ import annotations

import importlib.util

TRAIN_PACKAGES = ("torch", "transformers", "peft", "gguf", "safetensors")
INSTALL_HINT = (
    "pip install 'pipeserve[train]' (from a checkout: pip install '.[train]'), which brings a CPU build of torch; "
    "on a GPU machine install torch for its CUDA first (see docs/finetuning.md)"
)


def missing_train_packages() -> list[str]:
    """The packages of the `train` extra that are not installed (without importing them)."""
    return [name for name in TRAIN_PACKAGES if importlib.util.find_spec(name) is None]
