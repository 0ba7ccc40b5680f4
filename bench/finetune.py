"""Benchmark: fine-tuning the embedded model on CPU, and what training costs the server meanwhile.

1. Training throughput. For each method (LoRA r=16 on every attention and MLP projection; full fine-tuning) and
   dataset size (100 and 1,000 examples of ~100 tokens of the generated task in tests/finetune/task.py: a
   sentence about a person, answered with a fixed JSON object the prompt never asks for), the training worker
   (`python -m pipeserve.finetune.worker`, as a server runs it) trains one epoch and writes the GGUF and the
   Hugging Face weights. Reported: examples/s of the training loop, the whole job's time (load, render, train,
   export), the worker's peak RSS, and the exact match of greedy answers on 50 held-out examples, base model
   against each fine-tune, served by llama.cpp from the written GGUF.
2. Serving while training. A pipeserve server answers a fixed load (concurrent chat completions of 64 tokens)
   for `--window` seconds idle, then again while it trains a model itself (`POST /models`, 100 examples, 3
   epochs, the training process at its default niceness); reported: completion tokens/s both times, their
   ratio, and the trained model's evaluation on its TEST entries (exact match, base against fine-tune).

Goal (issue 13): 1,000 examples of ~100 tokens in at most 10 minutes on 2 cores for LoRA.

    python bench/finetune.py                                   # everything (~40 minutes on 2 cores)
    python bench/finetune.py --sizes 100 --methods lora        # quicker
    python bench/finetune.py --no-serving
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeserve.engines.llamacpp.options import LlamaCppOptions, embedded_gguf_path
from pipeserve.finetune.spec import BASE_LEARNING_RATE, Sft, TrainingSpec
from tests.conftest import MODEL, start_server, stop_server
from tests.finetune.task import entries, is_answer

PADDING = 20  # filler words per sentence: ~100 tokens per example with the template's system message
HELD_OUT_SEED = 99


def train(method: str, size: int, epochs: float, out: Path, threads: int) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    rows = entries(size, seed=1, padding=PADDING)
    (out / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    spec = TrainingSpec(
        job_id=f"bench-{method}-{size}",
        slug=f"bench-{method}-{size}",
        base_gguf=embedded_gguf_path(),
        method=method,  # type: ignore[arg-type]
        sft=Sft(epochs=epochs, batch_size=8, learning_rate=BASE_LEARNING_RATE[method]),
        threads=threads,
        train_file=out / "train.jsonl",
        output_dir=out,
    )
    (out / "job.json").write_text(spec.model_dump_json())
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "TOKENIZERS_PARALLELISM": "false"}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pipeserve.finetune.worker", str(out)], capture_output=True, text=True, env=env
    )
    wall = time.monotonic() - started
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    result = next((line["result"] for line in lines if "result" in line), None)
    if result is None:
        raise RuntimeError(f"training {method} x {size} failed: {lines[-1:]} {done.stderr[-2000:]}")
    return result | {"wall": wall}


async def exact_match(paths: dict[str, Path | None], held_out: list[dict[str, Any]], tmp: Path) -> dict[str, int]:
    """Greedy answers of each model (None: the embedded base) on the held-out examples, served by llama.cpp."""
    from pipeserve.protocol.chat_completions import ChatCompletionRequest
    from pipeserve.service.chat import ChatService
    from pipeserve.service.edge import to_params
    from pipeserve.service.models import ModelRegistry
    from pipeserve.service.serving import start_engines
    from pipeserve.settings import ModelConfig, Settings
    from pipeserve.validation import validate

    options: dict[str, Any] = {"max_sequences": 8, "context_size": 8 * 512}
    if "weights" in LlamaCppOptions.model_fields:
        options["weights"] = "original"
    scores = {}
    for name, path in paths.items():
        config = ModelConfig(id=name, **options, **({"path": str(path)} if path else {}))
        served, providers = await start_engines(Settings(data_dir=tmp, models=[config]), {})
        chat = ChatService(ModelRegistry(served, providers))

        async def one(row: dict[str, Any], chat: ChatService = chat, name: str = name) -> bool:
            body = {"model": name, "messages": row["messages"][:1], "temperature": 0, "max_tokens": 40}
            completion = await chat.complete(to_params(validate(ChatCompletionRequest, body)))
            return is_answer(completion.choices[0].message.content, row)

        scores[name] = sum(await asyncio.gather(*(one(row) for row in held_out)))
        for model in served:
            await model.engine.close()
    return scores


def mean_tokens(size: int) -> float:
    from pipeserve.finetune.render import Renderer, Vocabulary

    vocabulary = Vocabulary(embedded_gguf_path())
    renderer = Renderer(vocabulary)
    rows = entries(min(size, 200), seed=1, padding=PADDING)
    total = sum(len(renderer.example(row).ids) for row in rows)
    vocabulary.close()
    return total / len(rows)


async def load(url: str, seconds: float, concurrency: int) -> float:
    """Completion tokens/s of `concurrency` clients asking for 64 tokens each, back to back."""
    deadline = time.monotonic() + seconds
    tokens = 0

    async def client(index: int) -> None:
        nonlocal tokens
        async with httpx.AsyncClient(timeout=120) as http:
            turn = 0
            while time.monotonic() < deadline:
                body = {
                    "model": MODEL,
                    "messages": [
                        {"role": "user", "content": f"Tell me a story about the number {index * 100 + turn}."}
                    ],
                    "max_tokens": 64,
                    "temperature": 0.7,
                    "store": False,
                }
                response = await http.post(f"{url}/v1/chat/completions", json=body)
                response.raise_for_status()
                tokens += response.json()["usage"]["completion_tokens"]
                turn += 1

    started = time.monotonic()
    await asyncio.gather(*(client(i) for i in range(concurrency)))
    return tokens / (time.monotonic() - started)


def serving(tmp: Path, window: float, concurrency: int) -> dict[str, Any]:
    tmp.mkdir(parents=True, exist_ok=True)
    server = start_server(tmp)
    try:
        http = httpx.Client(base_url=server.v1, timeout=60)
        asyncio.run(load(server.url, 5, concurrency))  # warm up
        idle = asyncio.run(load(server.url, window, concurrency))
        dataset = http.post("/datasets", json={"name": "bench"}).json()["id"]
        rows = [dict(row, split="TRAIN") for row in entries(100, seed=1, padding=PADDING)]
        rows += [dict(row, split="TEST") for row in entries(20, seed=HELD_OUT_SEED, padding=PADDING)]
        http.post(f"/datasets/{dataset}/entries", json={"entries": rows}).raise_for_status()
        body = {
            "datasetId": dataset,
            "slug": "bench",
            "trainingConfig": {"provider": "openpipe", "sft_hyperparameters": {"num_epochs": 3}},
        }
        http.post("/models", json=body).raise_for_status()
        started = time.monotonic()
        while (http.get("/models/bench").json()["openpipe"]["progress"] or {}).get("phase") != "training":
            time.sleep(1)
        during = asyncio.run(load(server.url, window, concurrency))
        while True:
            model = http.get("/models/bench").json()["openpipe"]
            evaluation = model["evaluation"] or {}
            if model["status"] == "ERROR":
                raise RuntimeError(model["errorMessage"])
            if model["status"] == "DEPLOYED" and evaluation.get("status") not in ("pending", "running"):
                break
            time.sleep(2)
        return {"idle": idle, "during": during, "job": time.monotonic() - started, "evaluation": evaluation}
    finally:
        stop_server(server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--methods", nargs="+", choices=("lora", "full"), default=["lora", "full"])
    parser.add_argument("--epochs", type=float, default=1.0, help="Epochs of each throughput run (default 1).")
    parser.add_argument("--threads", type=int, default=0, help="Training threads (default: all cores).")
    parser.add_argument("--held-out", type=int, default=50, help="Held-out examples for the exact match.")
    parser.add_argument("--no-serving", action="store_true", help="Skip the serving-while-training part.")
    parser.add_argument("--window", type=float, default=30.0, help="Seconds of each serving measurement.")
    parser.add_argument("--concurrency", type=int, default=4, help="Clients of the serving load.")
    args = parser.parse_args()

    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}")
    print(f"# examples of ~{mean_tokens(max(args.sizes)):.0f} tokens (template's system message included)")
    held_out = entries(args.held_out, seed=HELD_OUT_SEED, padding=PADDING)
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as tmp:
        root = Path(tmp)
        rows = []
        for method in args.methods:
            for size in args.sizes:
                out = root / f"{method}-{size}"
                result = train(method, size, args.epochs, out, args.threads)
                sft = result["sft"]
                rows.append((method, size, result, sft))
                print(
                    f"# {method} x {size}: {sft['examples_per_second']} ex/s, job {result['wall']:.0f} s, "
                    f"peak RSS {result['peak_rss_mb']:.0f} MB",
                    flush=True,
                )
        paths: dict[str, Path | None] = {"base": None}
        paths |= {f"{method}-{size}": root / f"{method}-{size}" / "model.gguf" for method, size, _, _ in rows}
        scores = asyncio.run(exact_match(paths, held_out, root))
        print()
        print("| method | examples | epochs | train loop s | examples/s | whole job s | peak RSS MB | exact match |")
        print("|---|---|---|---|---|---|---|---|")
        print(f"| base model | | | | | | | {scores['base']}/{len(held_out)} |")
        for method, size, result, sft in rows:
            print(
                f"| {'LoRA r=16' if method == 'lora' else 'full'} | {size} | {args.epochs:g} | {sft['seconds']:.0f} | "
                f"{sft['examples_per_second']:.2f} | {result['wall']:.0f} | {result['peak_rss_mb']:.0f} | "
                f"{scores[f'{method}-{size}']}/{len(held_out)} |"
            )
        if not args.no_serving:
            measured = serving(root / "serving", args.window, args.concurrency)
            models = measured["evaluation"].get("models", {})
            print()
            print(f"| serving ({args.concurrency} clients, 64 tokens) | completion tokens/s |")
            print("|---|---|")
            print(f"| idle | {measured['idle']:.1f} |")
            print(f"| while training (LoRA, 100 examples x 3 epochs) | {measured['during']:.1f} |")
            print(f"| ratio | {measured['during'] / measured['idle']:.2f} |")
            print(
                f"# job {measured['job']:.0f} s from the start of training to evaluated; exact match on 20 TEST "
                f"entries: base {models.get('base', {}).get('matches')}, "
                f"fine-tuned {models.get('fine_tuned', {}).get('matches')}"
            )


if __name__ == "__main__":
    main()
