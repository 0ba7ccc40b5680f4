"""How close pipeserve's engine runs to llama.cpp itself on bench/serving.py's batch workloads.

Two ways of doing a workload's token work on this machine, alternating, in one run:

* ``llama.cpp alone`` -- the least work the workload needs, done with the engine's own `LlamaModel` (same
  weights, context, threads and KV streams) and nothing else: W1's shared system prompt prefilled once and
  copied to the 16 streams, then 4 waves of 16 distinct questions prefilled in 512-token steps and 128 decode
  steps of 16 tokens (W2: each request's whole prompt prefilled). No sampling (every step feeds a fixed token),
  no scheduling, no HTTP, no client: an upper bound for any server of this model on this machine.
* ``pipeserve engine`` -- the same requests through `LlamaCppEngine.generate` (the scheduler, sampling at
  temperature 0.7 with the workload's seeds, detokenising, the hand-off to the event loop), with no HTTP and
  no client; every `llama_decode` timed, to tell the engine's own time between steps from llama.cpp's.

bench/serving.py then adds the HTTP server and the benchmark's client, which share the same two cores.

    python bench/limit.py                       # W1, two rounds of each
    python bench/limit.py --workloads W1,W2 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import serving  # bench/serving.py: the workloads, the weight choice

from pipeserve.engines.llamacpp.engine import LlamaCppEngine
from pipeserve.engines.llamacpp.model import LlamaModel
from pipeserve.engines.llamacpp.options import embedded_gguf_path
from pipeserve.engines.llamacpp.scheduler import Scheduler
from pipeserve.engines.llamacpp.weights import Choice, choose
from pipeserve.params import ChatMessage, ChatParams, SamplingParams
from pipeserve.settings import ModelConfig

STREAMS = 16
BATCH = 512
FILLER = 100  # the token every decode step feeds: llama.cpp's cost doesn't depend on which


@dataclass
class Measured:
    way: str
    tokens: int
    seconds: float
    in_decode_s: float
    step_p50_ms: float  # decode steps of 16 tokens

    @property
    def tok_s(self) -> float:
        return self.tokens / self.seconds


def _alone(choice: Choice, workload: serving.Workload) -> Measured:
    model = LlamaModel(
        choice.path,
        n_ctx=serving.CONTEXT,
        n_seq_max=STREAMS,
        n_batch=BATCH,
        threads=serving.THREADS,
        repack=choice.repack,
    )
    try:
        shared = workload.key == "W1"
        first = model.tokenize(workload.prompts[0][0]["content"], add_special=True) if shared else []
        prompts = [
            ([] if shared else model.tokenize(p[0]["content"], add_special=True))
            + model.tokenize(p[1]["content"], add_special=False)
            for p in workload.prompts
        ]
        batch = model.batch
        steps: list[float] = []

        def decode(entries: list[tuple[int, int, int, bool]]) -> None:
            for i, (token, pos, seq, logits) in enumerate(entries):
                Scheduler._put(batch, i, token, pos, seq, logits)  # the batch written as the engine writes it
            batch.n_tokens = len(entries)
            began = time.perf_counter()
            if model.decode() != 0:
                raise RuntimeError("llama_decode failed")
            if len(entries) == STREAMS:
                steps.append(time.perf_counter() - began)

        began = time.perf_counter()
        for start in range(0, len(first), BATCH):
            chunk = first[start : start + BATCH]
            decode([(t, start + i, 0, start + i == len(first) - 1) for i, t in enumerate(chunk)])
        for seq in range(1, STREAMS):
            model.seq_copy(0, seq, len(first))
        for wave in range(0, len(prompts), STREAMS):
            entries: list[tuple[int, int, int, bool]] = []
            for seq, prompt in enumerate(prompts[wave : wave + STREAMS]):
                model.seq_truncate(seq, len(first))
                entries += [(t, len(first) + j, seq, j == len(prompt) - 1) for j, t in enumerate(prompt)]
            for start in range(0, len(entries), BATCH):
                decode(entries[start : start + BATCH])
            ends = [len(first) + len(p) for p in prompts[wave : wave + STREAMS]]
            for step in range(workload.max_tokens):
                decode([(FILLER, end + step, seq, True) for seq, end in enumerate(ends)])
        seconds = time.perf_counter() - began
    finally:
        model.close()
    return Measured("llama.cpp alone", len(prompts) * workload.max_tokens, seconds, seconds, _p50_ms(steps))


async def _engine(cache: Path, workload: serving.Workload) -> Measured:
    config = ModelConfig(id=serving.MODEL, context_size=serving.CONTEXT, threads=serving.THREADS)
    engine = LlamaCppEngine(config, max_waiting=len(workload.prompts), cache_dir=cache)
    await engine.start()
    try:
        scheduler = engine._scheduler
        assert scheduler is not None
        timed: list[tuple[float, int]] = []
        for model in [scheduler.model, scheduler.solo]:
            if model is not None:
                _time_decodes(model, timed)
        todo = list(range(len(workload.prompts)))
        tokens = 0

        async def one(index: int) -> int:
            messages = tuple(ChatMessage(m["role"], m["content"]) for m in workload.prompts[index])
            sampling = SamplingParams(temperature=serving.TEMPERATURE, seed=serving.BASE_SEED + index)
            params = ChatParams(
                model=serving.MODEL, messages=messages, max_tokens=workload.max_tokens, sampling=sampling
            )
            generation = await engine.generate(params)
            async for _ in generation:
                pass
            return generation.usage.completion_tokens

        async def client() -> None:
            nonlocal tokens
            while todo:
                got = await one(todo.pop(0))  # not `tokens += await ...`: that reads `tokens` before awaiting
                tokens += got

        began = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(workload.concurrency)))
        seconds = time.perf_counter() - began
    finally:
        await engine.close()
    steps = [s for s, n in timed if n == STREAMS]
    return Measured("pipeserve engine", tokens, seconds, sum(s for s, _ in timed), _p50_ms(steps))


def _time_decodes(model: LlamaModel, into: list[tuple[float, int]]) -> None:
    decode = model.decode

    def timed() -> int:
        began = time.perf_counter()
        status = decode()
        into.append((time.perf_counter() - began, int(model.batch.n_tokens)))
        return status

    model.decode = timed  # type: ignore[method-assign]


def _p50_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000 if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", default="W1", help="comma-separated: W1, W2 (default: W1)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of both ways, alternating (default: 2)")
    parser.add_argument("--cache-dir", type=Path, default=Path(__file__).resolve().parent / ".cache")
    args = parser.parse_args(argv)
    gguf = embedded_gguf_path()
    keys = {k.strip().upper() for k in args.workloads.split(",")} & {"W1", "W2"}
    workloads = [w for w in serving.build_workloads(serving.Tokenizer(gguf), quick=False) if w.key in keys]
    if not workloads:
        parser.error("--workloads: choose W1 and/or W2")
    cache = args.cache_dir.resolve() / "weights"
    choice = choose(gguf, cache, threads=serving.THREADS)
    print(f"weights: {choice.name}{' (repacked)' if choice.repack else ''}; threads {serving.THREADS}", flush=True)
    rows: list[tuple[str, int, Measured]] = []
    for workload in workloads:
        for round_ in range(args.rounds):
            ways: list[Any] = [lambda w=workload: _alone(choice, w), lambda w=workload: asyncio.run(_engine(cache, w))]
            for way in ways if round_ % 2 == 0 else ways[::-1]:
                measured = way()
                rows.append((workload.key, round_ + 1, measured))
                print(f"{workload.key} round {round_ + 1}: {measured.way}: {measured.tok_s:.1f} tok/s", flush=True)
    print()
    print("| workload | round | way | tok/s | wall s | inside llama_decode | decode step (16 tokens) p50 ms |")
    print("|---|---|---|---|---|---|---|")
    for key, round_, m in rows:
        share = f"{m.in_decode_s:.1f} s ({100 * m.in_decode_s / m.seconds:.0f}%)"
        print(f"| {key} | {round_} | {m.way} | {m.tok_s:.1f} | {m.seconds:.1f} | {share} | {m.step_p50_ms:.1f} |")
    for key in sorted({k for k, _, _ in rows}):
        alone = [m.tok_s for k, _, m in rows if k == key and m.way == "llama.cpp alone"]
        engine = [m.tok_s for k, _, m in rows if k == key and m.way == "pipeserve engine"]
        ratio = statistics.median(engine) / statistics.median(alone)
        print(f"{key}: pipeserve engine / llama.cpp alone, medians: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
