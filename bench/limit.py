"""How close pipeserve's engine runs to llama.cpp itself on bench/serving.py's batch workloads.

Three ways (four with ``--beside``) of doing a workload's token work on this machine, alternating, in one run:

* ``llama.cpp alone`` -- the least work the workload needs, done with the engine's own `LlamaModel` (same
  weights, context, threads and KV streams) and nothing else: W1's shared system prompt prefilled once and
  copied to the 16 streams, then 4 waves of 16 distinct questions prefilled in 512-token steps and 128 decode
  steps of 16 tokens (W2: each request's whole prompt prefilled). No sampling (every step feeds a fixed token),
  no scheduling, no HTTP, no client: an upper bound for any server of this model on this machine.
* ``pipeserve engine`` -- the same requests through `LlamaCppEngine.generate` (the scheduler, sampling at
  temperature 0.7 with the workload's seeds, detokenising, the hand-off to the event loop), with no HTTP and
  no client; every `llama_decode` timed, to tell the engine's own time between steps from llama.cpp's.
* ``engine's batches replayed`` -- the batches the engine just gave its batch context (and its KV cache calls
  between them), recorded and fed in the same order to a fresh bare context of the same settings. As slow as
  the engine: the cost is in the shape of its steps (sequence lengths, staggering, prefill mixed in); as fast
  as ``llama.cpp alone``: it is in what surrounds them (threads, the event loop, memory).

With ``--beside``, a fourth: the engine's way again with a second local model loaded in the process and idle
after one request, as a fine-tuned model waits beside its base (its engine thread, and that thread's OpenMP
pool, should be gone by then: engines/llamacpp/worker.py).

bench/serving.py then adds the HTTP server and the benchmark's client, which share the same two cores.

    python bench/limit.py                       # W1, two rounds of each way
    python bench/limit.py --workloads W1,W2 --rounds 3
    python bench/limit.py --beside              # does a second, idle local model slow the first?
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import functools
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp as llama

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
BESIDE = "engine, a second model beside"


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


@dataclass
class Trace:
    """The engine's calls into its batch context, in order: ("decode", entries), a KV cache method's name and
    arguments, or ("restore", (seq, state)) where a sequence came back from the solo lane. Only the batch
    context's: tokens decoded on the solo lane aren't in it, so a replay is compared on the decodes it holds
    (`engine_s`, the engine's time for them)."""

    path: Path
    repack: bool
    n_ctx: int
    n_seq_max: int
    ops: list[tuple[str, Any]]  # ("decode", list[Entry]) and the rest as said above
    engine_s: float = 0.0


Entry = tuple[int, int, int, bool]  # token, position, sequence, logits wanted


def _bare(path: Path, repack: bool, n_ctx: int, n_seq_max: int) -> LlamaModel:
    return LlamaModel(path, n_ctx=n_ctx, n_seq_max=n_seq_max, n_batch=BATCH, threads=serving.THREADS, repack=repack)


def _decode(model: LlamaModel, entries: list[Entry], steps: list[float]) -> float:
    """One batch written as the engine writes it, decoded; its time, also kept in `steps` for a 16-token step."""
    for i, entry in enumerate(entries):
        Scheduler._put(model.batch, i, *entry)
    model.batch.n_tokens = len(entries)
    began = time.perf_counter()
    if model.decode() != 0:
        raise RuntimeError("llama_decode failed")
    took = time.perf_counter() - began
    if len(entries) == STREAMS:
        steps.append(took)
    return took


def _alone(choice: Choice, workload: serving.Workload) -> Measured:
    model = _bare(choice.path, choice.repack, serving.CONTEXT, STREAMS)
    try:
        shared = workload.key == "W1"
        first = model.tokenize(workload.prompts[0][0]["content"], add_special=True) if shared else []
        prompts = [
            ([] if shared else model.tokenize(p[0]["content"], add_special=True))
            + model.tokenize(p[1]["content"], add_special=False)
            for p in workload.prompts
        ]
        steps: list[float] = []

        began = time.perf_counter()
        for start in range(0, len(first), BATCH):
            chunk = first[start : start + BATCH]
            _decode(model, [(t, start + i, 0, start + i == len(first) - 1) for i, t in enumerate(chunk)], steps)
        for seq in range(1, STREAMS):
            model.seq_copy(0, seq, len(first))
        for wave in range(0, len(prompts), STREAMS):
            entries: list[Entry] = []
            for seq, prompt in enumerate(prompts[wave : wave + STREAMS]):
                model.seq_truncate(seq, len(first))
                entries += [(t, len(first) + j, seq, j == len(prompt) - 1) for j, t in enumerate(prompt)]
            for start in range(0, len(entries), BATCH):
                _decode(model, entries[start : start + BATCH], steps)
            ends = [len(first) + len(p) for p in prompts[wave : wave + STREAMS]]
            for step in range(workload.max_tokens):
                _decode(model, [(FILLER, end + step, seq, True) for seq, end in enumerate(ends)], steps)
        seconds = time.perf_counter() - began
    finally:
        model.close()
    return Measured("llama.cpp alone", len(prompts) * workload.max_tokens, seconds, seconds, _p50_ms(steps))


def _replay(trace: Trace) -> Measured:
    model = _bare(trace.path, trace.repack, trace.n_ctx, trace.n_seq_max)
    try:
        steps: list[float] = []
        in_decode = 0.0
        began = time.perf_counter()
        for name, arguments in trace.ops:
            if name == "restore":
                seq, state = arguments
                buffer = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
                if llama.llama_state_seq_set_data(model.ctx, buffer, len(state), seq) != len(state):
                    raise RuntimeError("could not restore a sequence's KV state")
                continue
            if name == "decode":
                in_decode += _decode(model, arguments, steps)
            else:
                getattr(model, name)(*arguments)
        seconds = time.perf_counter() - began
    finally:
        model.close()
    return Measured("engine's batches replayed", 0, seconds, in_decode, _p50_ms(steps))


async def _engine(cache: Path, workload: serving.Workload, traces: list[Trace], *, beside: bool = False) -> Measured:
    config = ModelConfig(id=serving.MODEL, context_size=serving.CONTEXT, threads=serving.THREADS)
    engine = LlamaCppEngine(config, max_waiting=len(workload.prompts), cache_dir=cache)
    await engine.start()
    other: LlamaCppEngine | None = None
    try:
        if beside:  # a second local model in the process, idle after one short request, as a fine-tune waits
            other = LlamaCppEngine(
                ModelConfig(id="beside", context_size=2048, max_sequences=2, threads=serving.THREADS),
                max_waiting=4,
                cache_dir=cache,
            )
            await other.start()
            hello = ChatParams(model="beside", messages=(ChatMessage("user", "Hello"),), max_tokens=8)
            async for _ in await other.generate(hello):
                pass
        scheduler = engine._scheduler
        assert scheduler is not None
        timed: list[tuple[float, int]] = []
        weights = engine._weights
        assert weights is not None
        main = scheduler.model
        trace = Trace(weights.path, weights.repack, main.n_ctx, main.n_streams, [])
        for model in [main, scheduler.solo]:
            if model is not None:
                _time_decodes(model, timed, trace if model is main else None)
        _record_returns(scheduler, trace)
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
        if other is not None:
            await other.close()
    steps = [s for s, n in timed if n == STREAMS]
    if beside:
        return Measured(BESIDE, tokens, seconds, sum(s for s, _ in timed), _p50_ms(steps))
    traces.append(trace)
    return Measured("pipeserve engine", tokens, seconds, sum(s for s, _ in timed), _p50_ms(steps))


def _time_decodes(model: LlamaModel, into: list[tuple[float, int]], trace: Trace | None = None) -> None:
    """Time every decode of `model`; with a trace, record its batches and KV cache calls too."""
    decode = model.decode
    batch = model.batch

    def timed() -> int:
        if trace is not None:
            n = int(batch.n_tokens)
            entries = [(batch.token[i], batch.pos[i], batch.seq_id[i][0], bool(batch.logits[i])) for i in range(n)]
            trace.ops.append(("decode", entries))
        began = time.perf_counter()
        status = decode()
        took = time.perf_counter() - began
        into.append((took, int(batch.n_tokens)))
        if trace is not None:
            trace.engine_s += took
        return status

    model.decode = timed  # type: ignore[method-assign]
    if trace is None:
        return
    for name in ("seq_clear", "seq_truncate", "seq_copy"):
        method = getattr(model, name)

        def recorded(*arguments: int, name: str = name, method: Any = method) -> Any:
            trace.ops.append((name, arguments))
            return method(*arguments)

        setattr(model, name, recorded)


def _record_returns(scheduler: Scheduler, trace: Trace) -> None:
    """Record the KV state of each sequence moved into the batch context (back from the solo lane)."""
    mover = scheduler._mover
    move = mover.move

    def recorded(source: LlamaModel, seq: int, target: LlamaModel, dest: int) -> bool:
        moved = move(source, seq, target, dest)
        if moved and target is scheduler.model:
            size = llama.llama_state_seq_get_size(target.ctx, dest)
            buffer = (ctypes.c_uint8 * size)()
            written = llama.llama_state_seq_get_data(target.ctx, buffer, size, dest)
            trace.ops.append(("restore", (dest, bytes(buffer[:written]))))
        return moved

    mover.move = recorded  # type: ignore[method-assign]


def _in_own_thread(way: Callable[[], Measured]) -> Measured:
    """Run `way` on a thread that ends with it, as the engine runs on its own thread.

    Every thread that has run llama.cpp keeps an OpenMP pool while it lives. Once a process's pools hold more
    threads than there are CPUs, libgomp cuts its spinning at barriers short for all of them (throttled spin
    count): the engine's W1 ran ~13% slower (BAAB, separate processes) after a few decodes on the main thread."""
    result: list[Measured] = []
    thread = threading.Thread(target=lambda: result.append(way()), name="limit-way")
    thread.start()
    thread.join()
    if not result:
        raise RuntimeError("the measurement failed; its traceback is above")
    return result[0]


def _p50_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000 if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", default="W1", help="comma-separated: W1, W2 (default: W1)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of both ways, alternating (default: 2)")
    parser.add_argument(
        "--beside", action="store_true", help="a fourth way: the engine with a second local model loaded, idle"
    )
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
    replayed: list[tuple[str, float, float]] = []  # workload, the engine's and the replay's decode seconds
    for workload in workloads:
        traces: list[Trace] = []
        for round_ in range(args.rounds):
            ways = ["alone", "engine", "replay", "beside"][: 4 if args.beside else 3]
            for way in ways if round_ % 2 == 0 else ways[1:] + ways[:1]:
                if way == "alone":
                    measured = _in_own_thread(functools.partial(_alone, choice, workload))
                elif way in ("engine", "beside"):
                    measured = asyncio.run(_engine(cache, workload, traces, beside=way == "beside"))
                else:  # the trace of this round's engine run
                    measured = _in_own_thread(functools.partial(_replay, traces[-1]))
                    replayed.append((workload.key, traces[-1].engine_s, measured.in_decode_s))
                rows.append((workload.key, round_ + 1, measured))
                if measured.tokens:
                    said = f"{measured.tok_s:.1f} tok/s"
                else:
                    said = f"{measured.in_decode_s:.1f} s in llama_decode, the engine {traces[-1].engine_s:.1f} s"
                print(f"{workload.key} round {round_ + 1}: {measured.way}: {said}", flush=True)
    print()
    print("| workload | round | way | tok/s | wall s | inside llama_decode | decode step (16 tokens) p50 ms |")
    print("|---|---|---|---|---|---|---|")
    for key, round_, m in rows:
        share = f"{m.in_decode_s:.1f} s ({100 * m.in_decode_s / m.seconds:.0f}%)"
        rate = f"{m.tok_s:.1f}" if m.tokens else "-"
        print(f"| {key} | {round_} | {m.way} | {rate} | {m.seconds:.1f} | {share} | {m.step_p50_ms:.1f} |")
    for key in sorted({k for k, _, _ in rows}):
        alone_rates = [m.tok_s for k, _, m in rows if k == key and m.way == "llama.cpp alone"]
        engine_rates = [m.tok_s for k, _, m in rows if k == key and m.way == "pipeserve engine"]
        ratio = statistics.median(engine_rates) / statistics.median(alone_rates)
        print(f"{key}: pipeserve engine / llama.cpp alone, medians: {ratio:.2f}x")
        same = statistics.median(replay_s / engine_s for k, engine_s, replay_s in replayed if k == key)
        print(f"{key}: the engine's batches replayed / in the engine, time in llama_decode, median: {same:.2f}x")
        beside_rates = [m.tok_s for k, _, m in rows if k == key and m.way == BESIDE]
        if beside_rates:
            ratio = statistics.median(beside_rates) / statistics.median(engine_rates)
            print(f"{key}: {BESIDE} / pipeserve engine, medians: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
