"""Soak: a long run of mixed load, watching for what grows when nothing should.

One pipeserve server (started here on a free loopback port with the embedded model, SQLite by default) gets
`--concurrency` clients for `--minutes`, each looping over a mix of requests: chat completions (plain and
streamed, logged, some with the response cache, some with a criterion judged, some abandoned by their client
midway), `/v1/report`, dataset entry writes and `GET /v1/logs` reads. Every `--every` seconds it samples the
server's resident memory and open file descriptors (from /proc), `/health` (sequences, queue, KV cells held),
and the latencies of the requests that finished in that window.

Prints one row per window and a summary: the RSS slope over the run after the first window (warm-up) by
least squares, in MiB per hour; file descriptors at the start and end; sequences and KV cells held once
the load stops (must be 0); p99 latency of the first and last windows of chat completions.

    python bench/soak.py                          # 30 minutes at concurrency 32
    python bench/soak.py --minutes 3 --every 15   # a quick look
    python bench/soak.py --database-url postgresql://postgres@127.0.0.1:5432/soak   # an empty database
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from request_logging import MODEL, start, stop

CRITERION = "concise"
QUESTIONS = ["What is 2+2?", "Name a colour.", "Say hi.", "Pick a number.", "Name a fruit.", "Tell a joke."]


@dataclass
class Window:
    started: float
    latencies: dict[str, list[float]] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)

    def note(self, kind: str, status: int, seconds: float) -> None:
        self.latencies.setdefault(kind, []).append(seconds)
        key = f"{status // 100}xx" if status else "abandoned"
        self.statuses[key] = self.statuses.get(key, 0) + 1


@dataclass
class Sample:
    at: float
    rss_mib: float
    fds: int
    running: int
    waiting: int
    kv_used: int
    requests: int
    chat_p50: float
    chat_p99: float
    statuses: dict[str, int]


def proc_stats(pid: int) -> tuple[float, int]:
    rss_kib = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kib = int(line.split()[1])
    return rss_kib / 1024, len(os.listdir(f"/proc/{pid}/fd"))


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Load:
    def __init__(self, url: str, dataset: str) -> None:
        self.url = url
        self.dataset = dataset
        self.window = Window(time.monotonic())
        self.stopping = False

    async def chat(self, client: httpx.AsyncClient, rng: random.Random) -> str:
        body: dict[str, Any] = {
            "model": MODEL,
            "messages": [{"role": "user", "content": rng.choice(QUESTIONS)}],
            "max_tokens": rng.choice([8, 16, 32]),
            "metadata": {"soak": "yes"},
        }
        headers: dict[str, str] = {}
        roll = rng.random()
        if roll < 0.15:
            headers["op-cache"] = "readWrite"
            body["temperature"] = 0
        elif roll < 0.22:
            headers["op-criteria"] = json.dumps([CRITERION])
        if rng.random() < 0.5:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        if rng.random() < 0.05:  # a client that gives up midway
            with contextlib.suppress(httpx.HTTPError):
                await client.post(f"{self.url}/v1/chat/completions", json=body, headers=headers, timeout=0.2)
            return "abandon"
        if body.get("stream"):
            async with client.stream("POST", f"{self.url}/v1/chat/completions", json=body, headers=headers) as r:
                async for _ in r.aiter_bytes():
                    pass
                r.raise_for_status()
        else:
            (await client.post(f"{self.url}/v1/chat/completions", json=body, headers=headers)).raise_for_status()
        return "chat"

    async def other(self, client: httpx.AsyncClient, rng: random.Random) -> str:
        roll = rng.random()
        if roll < 0.4:
            now = int(time.time() * 1000)
            report = {
                "requestedAt": now - 100,
                "receivedAt": now,
                "reqPayload": {"model": "gpt-4o", "messages": [{"role": "user", "content": rng.choice(QUESTIONS)}]},
                "respPayload": {"choices": [{"message": {"role": "assistant", "content": "ok"}}]},
                "statusCode": 200,
                "tags": {"soak": "report"},
            }
            (await client.post(f"{self.url}/v1/report", json=report)).raise_for_status()
            return "report"
        if roll < 0.7:
            entry = {
                "messages": [
                    {"role": "user", "content": rng.choice(QUESTIONS)},
                    {"role": "assistant", "content": "An answer."},
                ]
            }
            url = f"{self.url}/v1/datasets/{self.dataset}/entries"
            (await client.post(url, json={"entries": [entry]})).raise_for_status()
            return "dataset"
        (await client.get(f"{self.url}/v1/logs", params={"limit": 20, "metadata.soak": "yes"})).raise_for_status()
        return "logs"

    async def worker(self, seed: int) -> None:
        rng = random.Random(seed)
        async with httpx.AsyncClient(timeout=120) as client:
            while not self.stopping:
                started = time.monotonic()
                status = 200
                try:
                    kind = await (self.chat(client, rng) if rng.random() < 0.7 else self.other(client, rng))
                except httpx.HTTPStatusError as error:
                    kind, status = "error", error.response.status_code
                except httpx.HTTPError:
                    kind, status = "error", 599
                if kind == "abandon":
                    status = 0
                self.window.note(kind, status, time.monotonic() - started)


async def sample(url: str, pid: int, load: Load, began: float) -> Sample:
    window, load.window = load.window, Window(time.monotonic())
    rss, fds = proc_stats(pid)
    async with httpx.AsyncClient(timeout=30) as client:
        model = (await client.get(f"{url}/health")).json()["models"][0]
    chat = window.latencies.get("chat", [])
    return Sample(
        at=time.monotonic() - began,
        rss_mib=rss,
        fds=fds,
        running=model["running_sequences"],
        waiting=model["waiting_requests"],
        kv_used=model["kv_cells_used"],
        requests=sum(len(v) for v in window.latencies.values()),
        chat_p50=quantile(chat, 0.5),
        chat_p99=quantile(chat, 0.99),
        statuses=window.statuses,
    )


def slope_per_hour(samples: list[Sample]) -> float:
    xs = [s.at / 3600 for s in samples]
    ys = [s.rss_mib for s in samples]
    if len(xs) < 2:
        return float("nan")
    return statistics.linear_regression(xs, ys).slope


async def run(args: argparse.Namespace, url: str, pid: int) -> list[Sample]:
    async with httpx.AsyncClient(timeout=30) as client:
        criterion = {"name": CRITERION, "instructions": "PASS if the answer is short, else FAIL."}
        created = await client.post(f"{url}/v1/criteria", json=criterion | {"judge_settings": {"max_tokens": 16}})
        created.raise_for_status()
        dataset = (await client.post(f"{url}/v1/datasets", json={"name": "soak"})).json()["id"]
    load = Load(url, dataset)
    began = time.monotonic()
    workers = [asyncio.create_task(load.worker(args.seed + i)) for i in range(args.concurrency)]
    samples: list[Sample] = []
    print(f"{'minute':>7} {'RSS MiB':>8} {'fds':>5} {'seqs':>5} {'queue':>5} {'KV used':>8} {'requests':>9} "
          f"{'chat p50 s':>10} {'chat p99 s':>10}  statuses")  # fmt: skip
    deadline = began + args.minutes * 60
    while time.monotonic() < deadline:
        await asyncio.sleep(min(args.every, max(0.0, deadline - time.monotonic())))
        s = await sample(url, pid, load, began)
        samples.append(s)
        print(f"{s.at / 60:7.1f} {s.rss_mib:8.1f} {s.fds:5d} {s.running:5d} {s.waiting:5d} {s.kv_used:8d} "
              f"{s.requests:9d} {s.chat_p50:10.3f} {s.chat_p99:10.3f}  {s.statuses}", flush=True)  # fmt: skip
    load.stopping = True
    await asyncio.gather(*workers)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--every", type=float, default=60.0, help="seconds between samples")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--database-url", default=None, help="an empty database (default: SQLite in a temp dir)")
    args = parser.parse_args()
    print(f"pipeserve soak: {args.minutes:g} min at concurrency {args.concurrency}, {platform.processor() or ''} "
          f"{os.cpu_count()} CPUs, store {'PostgreSQL' if args.database_url else 'SQLite'}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        process, url = start(Path(tmp), args.database_url)
        try:
            fds_before = proc_stats(process.pid)[1]
            samples = asyncio.run(run(args, url, process.pid))
            time.sleep(2)  # abandoned requests free their sequences within a step
            rss, fds = proc_stats(process.pid)
            idle = httpx.get(f"{url}/health", timeout=30).json()["models"][0]
        finally:
            stop(process)
    steady = samples[1:] or samples
    first, last = steady[0], steady[-1]
    print()
    print(f"requests: {sum(s.requests for s in samples)}; RSS {first.rss_mib:.1f} -> {rss:.1f} MiB, "
          f"slope after the first window {slope_per_hour(steady):+.1f} MiB/hour")  # fmt: skip
    print(f"file descriptors: {fds_before} before the load, {first.fds} after its first window, {fds} after it")
    print(f"held once idle: {idle['running_sequences']} sequences, {idle['waiting_requests']} queued, "
          f"{idle['kv_cells_used']} KV cells")  # fmt: skip
    print(f"chat p99: {first.chat_p99:.3f} s in the first window, {last.chat_p99:.3f} s in the last "
          f"(ratio {last.chat_p99 / first.chat_p99:.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
