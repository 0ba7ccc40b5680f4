"""What one training job does, resolved: the spec the server writes for the worker process (`job.json`).

The server turns a `POST /models` request into this before a job is queued, so that every default and every
limit is decided (and any problem is a 400) where the request is made; the worker only follows it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# The lora adapters go on every projection of attention and of the MLP.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# GGUF architectures whose tensors this exporter writes back (llama: SmolLM2, Llama, Mistral in llama.cpp's
# naming); others are refused before a job is queued.
SUPPORTED_ARCHITECTURES = ("llama",)

# Learning rates that the SDK's `learning_rate_multiplier` multiplies.
BASE_LEARNING_RATE = {"lora": 5e-4, "full": 5e-5}
BASE_PREFERENCE_LEARNING_RATE = {"lora": 5e-5, "full": 5e-6}


class Sft(BaseModel):
    model_config = ConfigDict(extra="forbid")

    epochs: float = Field(gt=0)  # a fraction trains on part of the last pass
    batch_size: int = Field(ge=1)
    learning_rate: float = Field(gt=0)


class Preference(BaseModel):
    model_config = ConfigDict(extra="forbid")

    variant: Literal["DPO", "APO Zero"] = "DPO"
    epochs: float = Field(gt=0)
    batch_size: int = Field(ge=1)
    learning_rate: float = Field(gt=0)
    beta: float = Field(gt=0)
    # How much of the preference stage's change the merged model keeps (OpenPipe's `adapter_weight`).
    adapter_weight: float = Field(ge=0)


class TrainingSpec(BaseModel):
    """Everything the worker needs; paths are absolute."""

    model_config = ConfigDict(extra="forbid")

    job_id: str
    slug: str
    # The base weights: a GGUF file (dequantized on load), or the Hugging Face directory of a model trained
    # here (its full-precision merged weights), with the GGUF whose metadata and tokenizer the output keeps.
    base_gguf: Path
    base_hf_dir: Path | None = None
    chat_template: str | None = None
    method: Literal["lora", "full"] = "lora"
    lora_rank: int = Field(default=16, ge=1, le=256)
    lora_alpha: int = Field(default=32, ge=1)
    max_length: int = Field(default=2048, ge=16)
    seed: int = 0
    sft: Sft | None = None
    preference: Preference | None = None
    gguf_type: Literal["Q8_0", "F16"] = "Q8_0"
    threads: int = Field(default=0, ge=0)  # 0: every core
    train_file: Path
    output_dir: Path

    @property
    def gguf_path(self) -> Path:
        return self.output_dir / "model.gguf"

    @property
    def hf_dir(self) -> Path:
        return self.output_dir / "hf"
