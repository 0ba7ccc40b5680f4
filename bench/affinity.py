"""Benchmark: prefix affinity across upstream replicas, measured as the upstreams' prefix-cache hit rate.

Two upstream replicas (pipeserve servers with the embedded model, one llama.cpp thread each, started here on
free loopback ports) serve one model behind a third pipeserve (`engine = "openai"`, `base_urls` = both). Requests
come in families that share a long system prompt (as an application's prompts do), in shuffled order, at a small
concurrency; each asks for one token, so the prompt is what counts. With affinity (`affinity_prefix_chars`, the
default) a family's requests go to the replica that served it before; without it (0), to the least busy. There
are more families than one replica keeps cached prefixes (each of its 16 sequences keeps its last prompt), so
spreading families over both replicas costs cache hits.

Prints per mode: requests, prompt tokens, cached prompt tokens (`usage.prompt_tokens_details.cached_tokens`, as
the upstreams reported them through the gateway), the hit rate, and the ratio of the two hit rates.

    python bench/affinity.py                      # 24 families x 6 requests per mode
    python bench/affinity.py --families 32 --per-family 4
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx
from request_logging import MODEL, start, stop

WORDS = [
    "river",
    "stone",
    "lantern",
    "orchard",
    "copper",
    "meadow",
    "harbor",
    "falcon",
    "ember",
    "willow",
    "quartz",
    "canyon",
]


def system_prompt(family: str) -> str:
    """About 300 tokens that differ from the first word on, as different applications' prompts do."""
    rng = random.Random(family)
    sentences = [" ".join(rng.choice(WORDS) for _ in range(12)) + "." for _ in range(20)]
    return f"You are assistant {family}. " + " ".join(sentences)


@dataclass
class Result:
    mode: str
    requests: int = 0
    prompt: int = 0
    cached: int = 0
    failed: int = 0

    @property
    def hit_rate(self) -> float:
        return self.cached / self.prompt if self.prompt else 0.0


async def run_mode(url: str, mode: str, families: int, per_family: int, concurrency: int, seed: int) -> Result:
    result = Result(mode)
    salt = f"{mode}-{seed}"  # each mode its own prompts, so the other mode's cached prefixes never help
    jobs = [(f"{salt}-{f}", i) for f in range(families) for i in range(per_family)]
    random.Random(seed).shuffle(jobs)
    queue: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            family, question = queue.get_nowait()
            body = {
                "model": "pooled",
                "messages": [
                    {"role": "system", "content": system_prompt(family)},
                    {"role": "user", "content": f"Question {question}: what is your name?"},
                ],
                "max_tokens": 1,
                "temperature": 0,
            }
            response = await client.post(f"{url}/v1/chat/completions", json=body, timeout=300)
            if response.status_code != 200:
                result.failed += 1
                continue
            usage = response.json()["usage"]
            result.requests += 1
            result.prompt += usage["prompt_tokens"]
            result.cached += usage["prompt_tokens_details"]["cached_tokens"]

    async with httpx.AsyncClient() as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", type=int, default=24)
    parser.add_argument("--per-family", type=int, default=6)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    upstream_config = f'[[models]]\nid = "{MODEL}"\nengine = "llamacpp"\nthreads = 1\n'
    processes = []
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            upstreams = []
            for name in ("a", "b"):
                process, url = start(Path(tmp) / name, None, config=upstream_config)
                processes.append(process)
                upstreams.append(f"{url}/v1")
            for mode, chars in (("affinity", 2048), ("least busy", 0)):
                config = (
                    f'log_requests = false\n[[models]]\nid = "pooled"\nengine = "openai"\nmodel = "{MODEL}"\n'
                    f"base_urls = {upstreams!r}\naffinity_prefix_chars = {chars}\n".replace("'", '"')
                )
                process, url = start(Path(tmp) / f"front-{chars}", None, config=config)
                try:
                    results.append(
                        asyncio.run(run_mode(url, mode, args.families, args.per_family, args.concurrency, args.seed))
                    )
                finally:
                    stop(process)
        finally:
            for process in processes:
                stop(process)

    print(
        f"prefix affinity over 2 upstream replicas: {args.families} families x {args.per_family} requests, "
        f"concurrency {args.concurrency}, {platform.machine()} with {os.cpu_count()} CPUs"
    )
    print(f"{'mode':<12}{'requests':>10}{'failed':>8}{'prompt tok':>12}{'cached tok':>12}{'hit rate':>10}")
    for r in results:
        print(f"{r.mode:<12}{r.requests:>10}{r.failed:>8}{r.prompt:>12}{r.cached:>12}{r.hit_rate:>10.1%}")
    if len(results) == 2 and results[1].hit_rate:
        print(f"hit rate with affinity / without: {results[0].hit_rate / results[1].hit_rate:.2f}x")


if __name__ == "__main__":
    main()
