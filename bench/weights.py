"""Benchmark: does a converted weight format keep the shipped model's behaviour, and how fast is each?

For the embedded SmolLM2-135M-Instruct (Q4_1 as shipped) and its Q8_0, F16 and BF16 conversions (made with
llama.cpp's quantizer, as `pipeserve.engines.llamacpp.weights` makes them):

- greedy outputs: 24 fixed chat prompts, 48 tokens each, compared with the shipped file's;
- top-1 agreement: along the shipped file's greedy paths (teacher-forced), how often each format's most likely
  next token is the shipped file's;
- perplexity on a fixed text (this file's TEXT, ~900 tokens);
- speed: the child-process probe `choose` uses (prefill tok/s; 16 sequences decoding and one sequence
  decoding alone, tok/s), repacking off.

    python bench/weights.py
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from pipeserve.engines.llamacpp.model import LlamaModel
from pipeserve.engines.llamacpp.options import embedded_gguf_path
from pipeserve.engines.llamacpp.templating import ChatTemplate
from pipeserve.engines.llamacpp.weights import CONVERSIONS, convert, cpu_has_bf16, measure_in_child
from pipeserve.params import ChatMessage

PROMPTS = [
    "Write a haiku about the sea.",
    "What is the capital of France?",
    "Explain photosynthesis in one sentence.",
    "Give me three tips for better sleep.",
    "Translate 'good morning' into Spanish.",
    "What is 12 times 7?",
    "Name a famous painting by Leonardo da Vinci.",
    "Describe a cat to someone who has never seen one.",
    "Why is the sky blue?",
    "Write a short apology for being late to a meeting.",
    "List the planets of the solar system.",
    "What does a compiler do?",
    "Suggest a name for a coffee shop.",
    "How do I boil an egg?",
    "What is the difference between weather and climate?",
    "Write a limerick about a programmer.",
    "Summarize the story of Cinderella in two sentences.",
    "What are the primary colors?",
    "Give an example of a renewable energy source.",
    "What is the boiling point of water in Fahrenheit?",
    "Write a tweet announcing a new bakery.",
    "Explain what a database index is.",
    "Who wrote Romeo and Juliet?",
    "What should I pack for a weekend hiking trip?",
]
TEXT = (
    "The river rose slowly through the night, and by morning the lower fields were under water. Farmers who "
    "had lived along its banks for generations knew the signs: the color of the sky at dusk, the way the "
    "birds fell silent, the smell of wet earth carried on the wind from the hills. They moved their animals "
    "to higher ground and carried sacks of grain up into the lofts of their barns. Children watched from the "
    "windows as the water crept across the road, carrying branches and leaves and, once, a small wooden boat "
    "that someone upstream had failed to tie down. By noon the rain had stopped, but the river kept rising, "
    "fed by the streams that ran down from the mountains. The old bridge at the edge of the village, built of "
    "stone more than two hundred years before, stood firm as it always had. People gathered on it to look at "
    "the flood, talking in low voices about other years and other floods, comparing this one to the great "
    "flood their grandparents had spoken of. In the evening the water began to fall. It left behind a layer "
    "of mud over everything it had touched, and the work of cleaning would take weeks. But the soil, they "
    "said, would be rich next spring, and the harvest would be good. That was the bargain the river offered, "
    "and they had always accepted it. Science describes such floods in terms of rainfall, catchment areas and "
    "the capacity of channels, but the people of the valley described them in terms of memory and patience. "
    "Both descriptions are true, and each explains something the other leaves out. A hydrologist can predict "
    "how high the water will rise; only a farmer can tell you what it means to watch it come. "
) * 2
GREEDY_TOKENS = 48


def load(path: Path) -> LlamaModel:
    return LlamaModel(path, n_ctx=4096, n_seq_max=1, n_batch=2048, threads=os.cpu_count() or 1)


def logits_for(model: LlamaModel, tokens: list[int]) -> np.ndarray[Any, Any]:
    """Logits after each token of `tokens` (one row per token), in one sequence from position 0."""
    model.seq_clear(0)
    rows = []
    for start in range(0, len(tokens), 512):
        chunk = tokens[start : start + 512]
        batch = model.batch
        batch.n_tokens = len(chunk)
        for i, token in enumerate(chunk):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, start + i, 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = True
        if model.decode() != 0:
            raise RuntimeError("llama_decode failed")
        rows += [model.logits(i).copy() for i in range(len(chunk))]
    return np.stack(rows)


def greedy(model: LlamaModel, prompt: list[int]) -> list[int]:
    tokens = list(prompt)
    out: list[int] = []
    for _ in range(GREEDY_TOKENS):
        token = int(np.argmax(logits_for(model, tokens)[-1])) if not out else int(np.argmax(step(model, tokens)))
        if model.is_eog(token):
            break
        out.append(token)
        tokens.append(token)
    return out


def step(model: LlamaModel, tokens: list[int]) -> np.ndarray[Any, Any]:
    """The logits after the last token, its predecessors being in the cache already."""
    batch = model.batch
    batch.n_tokens = 1
    batch.token[0], batch.pos[0], batch.n_seq_id[0] = tokens[-1], len(tokens) - 1, 1
    batch.seq_id[0][0] = 0
    batch.logits[0] = True
    if model.decode() != 0:
        raise RuntimeError("llama_decode failed")
    return model.logits(0).copy()


def log_softmax(logits: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    peak = logits.max(axis=-1, keepdims=True)
    return logits - peak - np.log(np.exp(logits - peak).sum(axis=-1, keepdims=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-speed", action="store_true", help="skip the speed probes")
    args = parser.parse_args(argv)
    source = embedded_gguf_path()
    threads = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        files = {"Q4_1 (shipped)": source}
        for name in ["Q8_0", "F16"] + (["BF16"] if cpu_has_bf16() else []):
            files[name] = Path(tmp) / f"{name}.gguf"
            convert(source, files[name], CONVERSIONS[name], threads=threads)

        reference = load(source)
        template = ChatTemplate(
            reference.meta("tokenizer.chat_template") or "",
            bos_token=reference.token_text(reference.bos),
            eos_token=reference.token_text(reference.eos),
        )
        prompts = [
            reference.tokenize(template.render((ChatMessage("user", p),), ()), add_special=False) for p in PROMPTS
        ]
        text_tokens = reference.tokenize(TEXT, add_special=True)
        reference_paths = [greedy(reference, p) for p in prompts]
        reference.close()

        rows = []
        for name, path in files.items():
            model = load(path)
            paths = [greedy(model, p) for p in prompts]
            same = sum(a == b for a, b in zip(paths, reference_paths, strict=True))
            agree = total = 0
            for prompt, ref in zip(prompts, reference_paths, strict=True):
                full = prompt + ref
                predicted = np.argmax(logits_for(model, full)[len(prompt) - 1 : len(full) - 1], axis=-1)
                agree += int((predicted == np.array(ref)).sum())
                total += len(ref)
            scores = log_softmax(logits_for(model, text_tokens)[:-1])
            nll = -scores[np.arange(len(text_tokens) - 1), text_tokens[1:]].mean()
            model.close()
            speed = None if args.no_speed else measure_in_child(name, path, repack=False, threads=threads)
            rows.append((name, path.stat().st_size / 2**20, same, agree / total, math.exp(nll), speed))

    print(
        f"\nSmolLM2-135M-Instruct; {len(PROMPTS)} prompts x {GREEDY_TOKENS} greedy tokens; perplexity over "
        f"{len(text_tokens)} tokens; {threads} threads\n"
    )
    print(
        "| weights | size MiB | greedy outputs identical | top-1 agreement | perplexity | prefill tok/s | "
        "decode x16 tok/s | decode x1 tok/s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, size, same, agreement, ppl, speed in rows:
        prefill = f"{speed.prefill:.0f}" if speed and speed.prefill else "-"
        decode = f"{speed.decode:.0f}" if speed and speed.decode else "-"
        single = f"{speed.single:.0f}" if speed and speed.single else "-"
        print(
            f"| {name} | {size:.0f} | {same}/{len(PROMPTS)} | {agreement:.1%} | {ppl:.3f} | {prefill} | {decode} "
            f"| {single} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
