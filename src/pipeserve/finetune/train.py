"""Training on CPU (or CUDA when torch has it): supervised fine-tuning, then preference tuning if asked.

LoRA adapters (peft) on every attention and MLP projection by default, merged into the weights at the end;
full fine-tuning as an option. Logits are computed only where the loss is taken (the assistant's tokens): the
output layer of a small model is a large share of its work, and prompts are most of each sequence.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from pipeserve.finetune.render import IGNORE, Example
from pipeserve.finetune.spec import LORA_TARGETS, Preference, Sft, TrainingSpec

Report = Callable[[dict[str, Any]], None]
_REPORT_EVERY = 2.0  # seconds between progress reports within a phase
# Padded tokens computed at once; a batch beyond it is split, its gradients accumulated. SmolLM2-135M keeps ~1.7 MB
# of float32 activations per token for the backward pass: measured on 2 cores, 512 held the peak RSS of LoRA at
# ~2.3 GB (1,024: ~3.3 GB) for 6% fewer examples per second.
MICRO_TOKENS = 512


def device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def load_base(spec: TrainingSpec) -> Any:
    """The base model in float32: a trained model's own weights, or the GGUF dequantized (transformers undoes
    llama.cpp's permutation of the attention heads on the way)."""
    from transformers import AutoModelForCausalLM

    model: Any
    if spec.base_hf_dir is not None:
        model = AutoModelForCausalLM.from_pretrained(str(spec.base_hf_dir), dtype=torch.float32)
    else:
        gguf = spec.base_gguf
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        # Dequantized on load: a plain float model from here on, which transformers then saves like any other.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    model.config.use_cache = False
    return model.to(device())


def with_adapters(model: Any, spec: TrainingSpec) -> Any:
    """The model to train: LoRA adapters over frozen weights, or every weight trainable."""
    if spec.method == "full":
        model.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=spec.lora_rank, lora_alpha=spec.lora_alpha, lora_dropout=0.0, target_modules=list(LORA_TARGETS), bias="none"
    )
    return get_peft_model(model, config)


def merged(model: Any, spec: TrainingSpec) -> Any:
    """The plain model with the adapters folded into its weights."""
    if spec.method == "full":
        return model
    return model.merge_and_unload()


def trainable(model: Any) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


# --- batches ------------------------------------------------------------------------------------------------


def batches(examples: Sequence[Example], size: int, rng: random.Random) -> Iterator[list[Example]]:
    """Shuffled batches of examples of similar lengths (less padding), in a shuffled order."""
    order = list(range(len(examples)))
    rng.shuffle(order)
    window = size * 16
    groups: list[list[Example]] = []
    for start in range(0, len(order), window):
        chunk = sorted((examples[i] for i in order[start : start + window]), key=lambda e: len(e.ids))
        groups += [chunk[i : i + size] for i in range(0, len(chunk), size)]
    rng.shuffle(groups)
    yield from groups


def _pad(rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    width = max(len(row) for row in rows)
    return torch.tensor([[*row, *([value] * (width - len(row)))] for row in rows], dtype=torch.long)


def _hidden(model: Any, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    backbone = model.get_base_model().model if hasattr(model, "get_base_model") else model.model
    output = backbone(input_ids=ids, attention_mask=mask)
    return output.last_hidden_state  # type: ignore[no-any-return]


def token_logprobs(model: Any, rows: Sequence[Sequence[int]], labels: Sequence[Sequence[int]]) -> torch.Tensor:
    """Per row: the summed log-probability of its labelled tokens."""
    ids = _pad(rows, 0).to(device())
    mask = _pad([[1] * len(row) for row in rows], 0).to(device())
    targets = _pad(labels, IGNORE).to(device())[:, 1:]
    hidden = _hidden(model, ids, mask)[:, :-1]
    where = targets != IGNORE
    logits = model.get_output_embeddings()(hidden[where]).float()
    picked = torch.gather(F.log_softmax(logits, dim=-1), 1, targets[where].unsqueeze(1)).squeeze(1)
    row_of = where.nonzero()[:, 0]
    return torch.zeros(len(rows), device=picked.device).index_add(0, row_of, picked)


def sft_loss(model: Any, batch: Sequence[Example]) -> torch.Tensor:
    """Summed cross-entropy over the batch's assistant tokens."""
    ids = _pad([e.ids for e in batch], 0).to(device())
    mask = _pad([[1] * len(e.ids) for e in batch], 0).to(device())
    targets = _pad([e.labels for e in batch], IGNORE).to(device())[:, 1:]
    hidden = _hidden(model, ids, mask)[:, :-1]
    where = targets != IGNORE
    logits = model.get_output_embeddings()(hidden[where]).float()
    return F.cross_entropy(logits, targets[where], reduction="sum")


def micro_batches(batch: Sequence[Example], length: Any = lambda e: len(e.ids)) -> list[list[Example]]:
    """A batch cut into groups whose padded size stays within MICRO_TOKENS (one example at least), computed one
    after the other with their gradients summed: the same step, with the activations of one group at a time."""
    groups: list[list[Example]] = []
    for example in sorted(batch, key=length, reverse=True):
        if groups and (len(groups[-1]) + 1) * length(groups[-1][0]) <= MICRO_TOKENS:
            groups[-1].append(example)
        else:
            groups.append([example])
    return groups


def _checkpointing(model: Any, on: bool) -> None:
    """Recompute activations in the backward pass (for a sequence longer than MICRO_TOKENS): slower, but its
    memory no longer grows with every layer."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if on != inner.is_gradient_checkpointing:
        if on:  # non-reentrant: gradients reach the adapters without the inputs requiring them
            inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            inner.gradient_checkpointing_disable()


# --- the loops -----------------------------------------------------------------------------------------------


@dataclass
class Schedule:
    """Linear warm-up over the first 10% of steps (at least one), then linear decay to zero."""

    steps: int

    def factor(self, step: int) -> float:
        warmup = max(1, self.steps // 10)
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (self.steps - step) / max(1, self.steps - warmup))


class Progress:
    """Progress reports of one phase: steps, loss, examples per second, time left."""

    def __init__(self, report: Report, phase: str, steps: int) -> None:
        self.report = report
        self.phase = phase
        self.steps = steps
        self.started = time.monotonic()
        self.last = 0.0
        self.seen = 0
        self.losses: list[float] = []

    def step(self, step: int, epoch: int, loss: float, size: int) -> None:
        self.seen += size
        self.losses.append(loss)
        now = time.monotonic()
        if now - self.last < _REPORT_EVERY and step + 1 < self.steps:
            return
        self.last = now
        elapsed = now - self.started
        rate = self.seen / elapsed if elapsed > 0 else 0.0
        recent = self.losses[-10:]
        self.report(
            {
                "phase": self.phase,
                "step": step + 1,
                "steps": self.steps,
                "epoch": epoch + 1,
                "loss": round(sum(recent) / len(recent), 4),
                "examples_per_second": round(rate, 3),
                "eta_seconds": round((self.steps - step - 1) * elapsed / (step + 1), 1),
            }
        )

    def summary(self) -> dict[str, Any]:
        elapsed = time.monotonic() - self.started
        return {
            "seconds": round(elapsed, 2),
            "examples": self.seen,
            "examples_per_second": round(self.seen / elapsed, 3) if elapsed > 0 else None,
            "first_loss": round(self.losses[0], 4) if self.losses else None,
            "final_loss": round(sum(self.losses[-10:]) / len(self.losses[-10:]), 4) if self.losses else None,
        }


def _steps(examples: int, batch_size: int, epochs: float) -> int:
    """Optimizer steps for `epochs` passes (a fraction of a pass counts its share of the batches)."""
    return max(1, math.ceil(math.ceil(examples / batch_size) * epochs))


def _optimizer(model: Any, learning_rate: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(trainable(model), lr=learning_rate, weight_decay=0.0)


def _optimize(
    model: Any,
    examples: Sequence[Example],
    *,
    batch_size: int,
    epochs: float,
    learning_rate: float,
    rng: random.Random,
    phase: str,
    report: Report,
    backward: Callable[[list[Example]], float],
) -> dict[str, Any]:
    """The optimisation loop both phases share: batches over `epochs`, the learning-rate schedule, clipping and
    progress. `backward(batch)` runs the batch's backward passes (in micro-batches) and returns its loss."""
    schedule = Schedule(_steps(len(examples), batch_size, epochs))
    optimizer = _optimizer(model, learning_rate)
    progress = Progress(report, phase, schedule.steps)
    model.train()
    step = 0
    for epoch in range(math.ceil(epochs)):
        for batch in batches(examples, batch_size, rng):
            if step == schedule.steps:
                break
            for group in optimizer.param_groups:
                group["lr"] = learning_rate * schedule.factor(step)
            loss = backward(batch)
            torch.nn.utils.clip_grad_norm_(trainable(model), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            progress.step(step, epoch, loss, len(batch))
            step += 1
    _checkpointing(model, False)
    model.eval()
    return progress.summary()


def run_sft(model: Any, examples: Sequence[Example], sft: Sft, seed: int, report: Report) -> dict[str, Any]:
    def backward(batch: list[Example]) -> float:
        total = max(1, sum(e.trained_tokens for e in batch))
        summed = 0.0
        for micro in micro_batches(batch):
            _checkpointing(model, len(micro[0].ids) > MICRO_TOKENS)
            loss = sft_loss(model, micro) / total
            loss.backward()  # type: ignore[no-untyped-call]
            summed += float(loss.detach())
        return summed

    return _optimize(
        model,
        examples,
        batch_size=sft.batch_size,
        epochs=sft.epochs,
        learning_rate=sft.learning_rate,
        rng=random.Random(seed),
        phase="training",
        report=report,
        backward=backward,
    )


def _pair_rows(batch: Sequence[Example]) -> tuple[list[list[int]], list[list[int]]]:
    """Chosen then rejected sequences of a batch of pairs, labelled on their answers only."""
    rows: list[list[int]] = []
    labels: list[list[int]] = []
    for rejected in (False, True):
        for example in batch:
            prompt = example.ids[: example.prompt_length]
            answer = (example.rejected or []) if rejected else example.answer
            rows.append(prompt + answer)
            labels.append([IGNORE] * len(prompt) + answer)
    return rows, labels


def run_preference(
    model: Any, pairs: Sequence[Example], preference: Preference, seed: int, report: Report
) -> dict[str, Any]:
    """DPO (sigmoid loss) or APO-zero against the model as it was when this phase began."""
    model.eval()
    reference: dict[int, tuple[float, float]] = {}
    with torch.no_grad():
        for start in range(0, len(pairs), 4):
            chunk = pairs[start : start + 4]
            rows, labels = _pair_rows(chunk)
            known = token_logprobs(model, rows, labels).tolist()
            for offset, example in enumerate(chunk):
                reference[id(example)] = (known[offset], known[len(chunk) + offset])

    def backward(batch: list[Example]) -> float:
        summed = 0.0
        for micro in micro_batches(batch, lambda e: e.prompt_length + max(len(e.answer), len(e.rejected or []))):
            _checkpointing(model, len(micro[0].ids) > MICRO_TOKENS // 2)
            rows, labels = _pair_rows(micro)
            logps = token_logprobs(model, rows, labels)
            ref = torch.tensor([reference[id(e)] for e in micro], device=logps.device)
            chosen = logps[: len(micro)] - ref[:, 0]
            rejected = logps[len(micro) :] - ref[:, 1]
            beta = preference.beta
            if preference.variant == "DPO":
                losses = -F.logsigmoid(beta * (chosen - rejected))
            else:  # APO-zero: raise the chosen answer's likelihood, lower the rejected one's
                losses = (1 - torch.sigmoid(beta * chosen)) + torch.sigmoid(beta * rejected)
            loss = losses.sum() / len(batch)
            loss.backward()  # type: ignore[no-untyped-call]
            summed += float(loss.detach())
        return summed

    return _optimize(
        model,
        pairs,
        batch_size=preference.batch_size,
        epochs=preference.epochs,
        learning_rate=preference.learning_rate,
        rng=random.Random(seed + 1),
        phase="preference",
        report=report,
        backward=backward,
    )


def snapshot(model: Any) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def blend(model: Any, before: dict[str, torch.Tensor], weight: float) -> None:
    """Keep `weight` of the change made since `before` (1: all of it, 0: none)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in before:
                p.copy_(before[name] + weight * (p - before[name]))
