"""The weight format a GGUF model is served in: the fastest faithful one for this CPU, chosen once.

A shipped GGUF is often quantized for size (the embedded SmolLM2 is Q4_1), and x86 llama.cpp has no batched
matrix kernel for every format: measured on a 2-vCPU EPYC, the same weights re-quantized to Q8_0 prefilled 2x
faster and decoded 16 sequences 1.6x faster than Q4_1 (bench/NOTES.md). Q8_0 rounds each weight by at most
~1/17 of a Q4_1 step, and F16/BF16 hold Q4_1's values exactly: the behaviour is kept (bench/weights.py
measures greedy outputs, top-1 agreement and perplexity against the shipped file). Lower-bit formats (Q4_0)
lose information and are never candidates.

At the first start, each candidate (the file as shipped, and Q8_0, F16 and, where the CPU has bf16
instructions, BF16 conversions of it) is measured with llama.cpp's repacked weight buffers on and off, each
in a child process: ggml's AMX kernels crash some CPUs on their first decode, and a crash must cost only
that candidate. The fastest on a reference mix of prompt and decode tokens (prefill, and 16 sequences decoding
together) is kept in `weights_dir` (by default the user's cache directory), with the measurements beside it in
JSON, and reused while the source file and this rule are unchanged; a smaller file wins only when it is as fast
at both. The mix favours batched serving: one sequence decoding alone, also timed and recorded, is bound by
the bytes of weights read per token and favours smaller formats (on a 2-vCPU EPYC, Q8_0 decoded one sequence
~25% faster than BF16, which prefilled ~40% faster and served a shared-prefix load ~20% faster: see
docs/benchmarks.md). So the candidate fastest at that, when it is clearly faster than the chosen one
(`SOLO_GAIN`), is kept too: the engine's solo lane decodes a sequence that runs alone in it (scheduler.py).
A model opts out with `weights = "original"`, or names a format.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("pipeserve.llamacpp")

# llama.cpp's file types (llama_ftype) for the conversions we consider faithful.
CONVERSIONS = {"Q8_0": 7, "F16": 1, "BF16": 32}
PROBE_TIMEOUT = 300.0  # seconds for one candidate's measurement
TIE = 0.05  # candidates this close to the fastest at prefill and at decoding count as equally fast
# A second format for one sequence decoding alone is kept only when it decodes one sequence at least this much
# faster than the chosen one: moving a sequence between formats costs a KV copy, and the probe is noisy.
SOLO_GAIN = 0.15
RULE = 3  # how the choice is made; a record made under another rule is measured again
# The reference mix: prompt tokens prefilled (one sequence, chunks of 256) and tokens decoded by 16 sequences
# together, about W2's proportions in bench/serving.py (distinct ~450-token prompts, 128 tokens out).
MIX_PROMPT = 3.5
MIX_DECODE = 1.0
_PASSES = 2
_PROBE_SEQS = 16
_PROBE_PREFILL = 256
_PROBE_STEPS = 24
_PROBE_TEXT = (
    "The history of computing is a story of abstraction: each generation of engineers built tools that let the "
    "next one forget the details below. Vacuum tubes gave way to transistors, transistors to integrated "
    "circuits, and assembly language to compilers that could translate human intent into machine code. "
)


@dataclass(frozen=True)
class Measured:
    """One candidate's speeds, tokens/s: prefill (one sequence), decoding 16 sequences together, decoding one
    sequence alone (recorded, not in the mix); `None` fields if it failed."""

    name: str  # original | Q8_0 | F16 | BF16
    repack: bool
    prefill: float | None = None
    decode: float | None = None
    single: float | None = None
    failure: str | None = None

    @property
    def cost(self) -> float:
        """Seconds per token of the reference mix (lower is faster); infinite for a failed candidate."""
        if not self.prefill or not self.decode:
            return float("inf")
        return (MIX_PROMPT / self.prefill + MIX_DECODE / self.decode) / (MIX_PROMPT + MIX_DECODE)


@dataclass(frozen=True)
class Choice:
    path: Path
    repack: bool
    name: str
    solo: Choice | None = None  # the format a sequence decoding alone runs in, when faster for it (the solo lane)


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def source_key(source: Path) -> str:
    """What identifies a source file's contents cheaply: its name, size and modification time."""
    stat = source.stat()
    return hashlib.sha256(f"{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]


def choose(source: Path, cache_dir: Path, *, threads: int, progress: bool = True) -> Choice:
    """The file and repack setting to serve `source` with, measured once and kept under `cache_dir`."""
    key = source_key(source)
    record_path = cache_dir / f"{source.stem}.{key}.json"
    recorded = _read_record(record_path, source)
    if recorded is not None:
        return recorded
    cache_dir.mkdir(parents=True, exist_ok=True)
    names = ["Q8_0", "F16"] + (["BF16"] if cpu_has_bf16() else [])
    files: dict[str, Path] = {"original": source}
    bar = _Progress(len(names) + _PASSES * 2 * (len(names) + 1), enabled=progress)
    for name in names:
        bar.step(f"converting {source.name} to {name}")
        target = cache_dir / f"{source.stem}.{key}.{name}.gguf"
        try:
            convert(source, target, CONVERSIONS[name], threads=threads)
        except RuntimeError as exc:
            log.warning("%s: could not convert to %s: %s", source.name, name, exc)
            continue
        files[name] = target
    # Each candidate twice, the second pass in the opposite order, keeping its faster run: other work on the
    # machine then weighs on every candidate alike.
    candidates = [(name, path, repack) for name, path in files.items() for repack in (False, True)]
    runs: dict[tuple[str, bool], Measured] = {}
    for order in range(_PASSES):
        for name, path, repack in candidates if order % 2 == 0 else candidates[::-1]:
            bar.step(f"measuring {name}{' (repacked)' if repack else ''}")
            if (name, repack) in runs and runs[name, repack].failure is not None:
                continue  # a crash is no accident: no second try
            run = measure_in_child(name, path, repack=repack, threads=threads)
            if (name, repack) not in runs or run.cost < runs[name, repack].cost:
                runs[name, repack] = run
    bar.done()
    results = list(runs.values())
    best = min(results, key=lambda m: m.cost)
    # A candidate as fast as the best at prefill and at decoding, within the measurement's noise, in a smaller
    # file wins: less memory for the same speed. (Not one merely close on the mix: a format slower at prefill
    # and faster at decoding is another trade, not the same speed.)
    same = [m for m in results if _as_fast(m, best)]
    best = min(same, key=lambda m: (files[m.name].stat().st_size, m.cost), default=best)
    if best.cost == float("inf"):
        log.warning("%s: no weight format could be measured; serving it as shipped", source.name)
        best = Measured("original", False)
    solo = _solo(results, best)
    for name, path in files.items():
        if name not in ("original", best.name) and (solo is None or name != solo.name):
            path.unlink(missing_ok=True)
    solo_choice = None if solo is None else Choice(files[solo.name], solo.repack, solo.name)
    choice = Choice(files[best.name], best.repack, best.name, solo_choice)
    record = {
        "source": str(source.resolve()),
        "key": key,
        "rule": RULE,
        "chosen": _entry(choice),
        "solo": None if solo_choice is None else _entry(solo_choice),
        "measured": [asdict(m) | {"cost": None if m.cost == float("inf") else m.cost} for m in results],
    }
    record_path.write_text(json.dumps(record, indent=2))
    log.info(
        "%s: serving it as %s%s, the fastest faithful format here%s (%s)",
        source.name,
        best.name,
        " with repacked weights" if best.repack else "",
        "" if solo is None else f", and a sequence decoding alone as {solo.name}{' repacked' if solo.repack else ''}",
        ", ".join(_summary(m) for m in results),
    )
    return choice


def _solo(results: list[Measured], best: Measured) -> Measured | None:
    """The candidate that decodes one sequence alone fastest, if clearly faster at it than `best`."""
    measured = [m for m in results if m.single]
    if not measured or not best.single:
        return None
    fastest = max(measured, key=lambda m: m.single or 0.0)
    if fastest.name == best.name or (fastest.single or 0.0) < best.single * (1 + SOLO_GAIN):
        return None
    return fastest


def _entry(choice: Choice) -> dict[str, Any]:
    return {"name": choice.name, "repack": choice.repack, "path": str(choice.path)}


def _summary(m: Measured) -> str:
    label = f"{m.name}{'+repack' if m.repack else ''}"
    if m.failure is not None:
        return f"{label}: failed"
    return (
        f"{label}: prefill {m.prefill:.0f} tok/s, decode x{_PROBE_SEQS} {m.decode:.0f} tok/s, "
        f"decode x1 {m.single:.0f} tok/s"
    )


def _as_fast(m: Measured, best: Measured) -> bool:
    if not (m.prefill and m.decode and best.prefill and best.decode):
        return False
    return m.prefill >= best.prefill / (1 + TIE) and m.decode >= best.decode / (1 + TIE)


def _read_record(record_path: Path, source: Path) -> Choice | None:
    try:
        record = json.loads(record_path.read_text())
        if record.get("rule") != RULE:
            return None  # chosen by an older rule: measure again
        chosen = _recorded(record["chosen"], source)
        solo = None if record.get("solo") is None else _recorded(record["solo"], source)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if chosen is None or (record.get("solo") is not None and solo is None):
        return None  # a converted file was removed: measure again
    return Choice(chosen.path, chosen.repack, chosen.name, solo)


def _recorded(entry: dict[str, Any], source: Path) -> Choice | None:
    name = str(entry["name"])
    if name == "original":
        return Choice(source, bool(entry.get("repack")), name)
    path = Path(entry["path"])
    return Choice(path, bool(entry.get("repack")), name) if path.is_file() else None


def convert(source: Path, target: Path, ftype: int, *, threads: int) -> None:
    """Write `source`'s weights in llama.cpp file type `ftype` to `target` (atomically)."""
    import llama_cpp as llama

    from pipeserve.engines.llamacpp.model import route_logs

    route_logs()
    partial = target.with_suffix(".partial")
    params = llama.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads
    params.allow_requantize = True
    status = llama.llama_model_quantize(str(source).encode(), str(partial).encode(), ctypes.byref(params))
    if status != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"llama_model_quantize returned {status}")
    partial.replace(target)


def measure_in_child(name: str, path: Path, *, repack: bool, threads: int) -> Measured:
    """`probe` in a child process, so that a crashing kernel costs only this candidate."""
    command = [sys.executable, "-m", "pipeserve.engines.llamacpp.weights", str(path), "--threads", str(threads)]
    command += ["--repack"] if repack else []
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PROBE_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        return Measured(name, repack, failure=f"no result in {PROBE_TIMEOUT:.0f} s")
    if done.returncode != 0:
        why = f"exit status {done.returncode}" + (f": {done.stderr.strip()[-300:]}" if done.stderr.strip() else "")
        return Measured(name, repack, failure=why)
    try:
        result = json.loads(done.stdout.strip().splitlines()[-1])
        return Measured(
            name,
            repack,
            prefill=float(result["prefill"]),
            decode=float(result["decode"]),
            single=float(result["single"]),
        )
    except (ValueError, KeyError, IndexError) as exc:
        return Measured(name, repack, failure=f"unreadable result: {exc}")


def probe(path: Path, *, repack: bool, threads: int) -> dict[str, float]:
    """Tokens/s of prefill (one sequence), of decoding `_PROBE_SEQS` sequences together, and of decoding one
    sequence alone."""
    import llama_cpp as llama

    from pipeserve.engines.llamacpp.model import LlamaModel

    model = LlamaModel(
        path, n_ctx=_PROBE_SEQS * 512, n_seq_max=_PROBE_SEQS, n_batch=512, threads=threads, repack=repack
    )
    try:
        tokens = model.tokenize(_PROBE_TEXT * 8, add_special=True)[:_PROBE_PREFILL]
        batch = model.batch

        def fill(entries: list[tuple[int, int, int]]) -> None:
            batch.n_tokens = len(entries)
            for i, (token, pos, seq) in enumerate(entries):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
                batch.seq_id[i][0] = seq
                batch.logits[i] = False
            batch.logits[len(entries) - 1] = True

        def decode() -> None:
            if model.decode() != 0:
                raise RuntimeError("llama_decode failed")

        fill([(t, i, 0) for i, t in enumerate(tokens)])  # warm-up, and a prompt for every sequence
        decode()
        for seq in range(1, _PROBE_SEQS):
            llama.llama_memory_seq_cp(model.memory, 0, seq, -1, -1)
        started = time.perf_counter()
        rounds = 3
        for _ in range(rounds):
            model.seq_clear(0)
            fill([(t, i, 0) for i, t in enumerate(tokens)])
            decode()
        prefill = rounds * len(tokens) / (time.perf_counter() - started)
        position = len(tokens)
        token = tokens[-1]
        decode_once = [(token, position, seq) for seq in range(_PROBE_SEQS)]
        fill(decode_once)
        decode()  # warm-up of the batched decode
        started = time.perf_counter()
        for step in range(1, _PROBE_STEPS + 1):
            fill([(token, position + step, seq) for seq in range(_PROBE_SEQS)])
            for i in range(_PROBE_SEQS):
                batch.logits[i] = True
            decode()
        decoded = _PROBE_STEPS * _PROBE_SEQS / (time.perf_counter() - started)
        position += _PROBE_STEPS
        started = time.perf_counter()
        for step in range(1, _PROBE_STEPS + 1):
            fill([(token, position + step, 0)])
            decode()
        single = _PROBE_STEPS / (time.perf_counter() - started)
        return {"prefill": prefill, "decode": decoded, "single": single}
    finally:
        model.close()


class _Progress:
    """A one-line progress bar on stderr (only on a terminal, else log lines)."""

    def __init__(self, total: int, *, enabled: bool) -> None:
        self.total = total
        self.done_steps = 0
        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty()
        self.started = time.monotonic()

    def step(self, what: str) -> None:
        self.done_steps += 1
        if not self.enabled:
            return
        if not self.tty:
            log.info("choosing a weight format (%d/%d): %s", self.done_steps, self.total, what)
            return
        width = 30
        filled = width * (self.done_steps - 1) // max(self.total, 1)
        elapsed = time.monotonic() - self.started
        line = f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done_steps}/{self.total} {what} ({elapsed:.0f}s)"
        sys.stderr.write(line.ljust(100))
        sys.stderr.flush()

    def done(self) -> None:
        if self.tty:
            sys.stderr.write("\r" + " " * 100 + "\r")
            sys.stderr.flush()


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Measure one GGUF file's speed (a child process of `choose`).")
    parser.add_argument("path", type=Path)
    parser.add_argument("--repack", action="store_true")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    result: dict[str, Any] = probe(args.path, repack=args.repack, threads=args.threads)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
