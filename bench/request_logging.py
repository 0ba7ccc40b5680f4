"""Benchmark: what request logging costs, and proof that every answered request is logged.

One pipeserve server (started here on a free loopback port, temporary data directory, the embedded model)
gets the same load twice over: chat completions with logging on (`op-log-request: true`) and off
(`op-log-request: false`), in alternating blocks (on, off, off, on, ...) so that drift of the machine
weighs on both alike. Every request carries a metadata tag naming its block; after the run the logged rows
of each block are counted in the database and must equal the block's 2xx answers (and be 0 when off).

Requests are short (a few prompt tokens, `--max-tokens` output tokens, half of them streamed), which makes
the logging share of each request as large as it gets: the ratio is a lower bound for real traffic.

Prints one table: per mode, requests, 2xx, rows logged, requests/s, latency p50/p95, and the ratio of
throughput with logging on to off (goal ≥ 0.97), plus how many rows each group commit carried.

    python bench/request_logging.py                       # 2,000 logged requests at concurrency 32, SQLite
    python bench/request_logging.py --requests 400        # quicker
    python bench/request_logging.py --database-url postgresql://postgres@127.0.0.1:5432/bench   # an empty database
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

MODEL = "SmolLM2-135M-Instruct"
QUESTIONS = ["What is 2+2?", "Name a colour.", "Say hi.", "Pick a number.", "Name a fruit.", "Say yes."]


@dataclass
class Block:
    logging: bool
    requests: int
    run: str = field(default_factory=lambda: uuid.uuid4().hex)
    ok: int = 0
    failed: int = 0
    wall: float = 0.0
    latencies: list[float] = field(default_factory=list)
    logged: int = 0


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


def start(
    data_dir: Path, database_url: str | None, *, config: str | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """`python -m pipeserve serve` on a free port (with `config` as its TOML config, if given), once healthy."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    args = [sys.executable, "-m", "pipeserve", "serve", "--port", str(port), "--data-dir", str(data_dir)]
    if database_url:
        args += ["--database-url", database_url]
    if config is not None:
        (data_dir / "pipeserve.toml").write_text(config)
        args += ["--config", str(data_dir / "pipeserve.toml")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPESERVE_")}
    log = (data_dir / "server.log").open("wb")
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {(data_dir / 'server.log').read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    process.kill()
    raise RuntimeError("server did not start in 180 s")


async def one(client: httpx.AsyncClient, url: str, block: Block, index: int, max_tokens: int) -> None:
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": QUESTIONS[index % len(QUESTIONS)]}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "metadata": {"bench_run": block.run},
        "stream": index % 2 == 1,
    }
    headers = {"op-log-request": "true" if block.logging else "false"}
    started = time.perf_counter()
    try:
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers) as response:
            async for _ in response.aiter_bytes():
                pass
    except httpx.HTTPError:
        block.failed += 1
        return
    if 200 <= response.status_code < 300:
        block.ok += 1
        block.latencies.append(time.perf_counter() - started)
    else:
        block.failed += 1


async def run_block(url: str, block: Block, concurrency: int, max_tokens: int) -> None:
    indexes = iter(range(block.requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:

        async def worker() -> None:
            for index in indexes:
                await one(client, url, block, index, max_tokens)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        block.wall = time.perf_counter() - started


async def count_logged(store_url: str, blocks: list[Block]) -> None:
    from sqlalchemy import func, select

    from pipeserve.store.db import Database
    from pipeserve.store.tables import logs

    db = Database(store_url)
    try:
        async with db.connect() as conn:
            for block in blocks:
                query = select(func.count()).where(logs.c.meta["bench_run"].as_string() == block.run)
                block.logged = int((await conn.execute(query)).scalar_one())
    finally:
        await db.close()


def scrape(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "_total "):
            return float(line.split()[-1])
    return 0.0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(blocks: list[Block], commits: float, rows: float, args: argparse.Namespace, store: str) -> str:
    lines = [
        f"model: {MODEL}   cpus: {os.cpu_count()}   python: {platform.python_version()}   store: {store}   "
        f"concurrency: {args.concurrency}   max_tokens: {args.max_tokens}   half streamed",
        "",
        "| logging | requests | 2xx | rows logged | req/s | latency p50 ms | latency p95 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    throughput: dict[bool, float] = {}
    for mode in (True, False):
        mine = [b for b in blocks if b.logging == mode]
        ok = sum(b.ok for b in mine)
        latencies = [x for b in mine for x in b.latencies]
        throughput[mode] = ok / sum(b.wall for b in mine)
        lines.append(
            f"| {'on' if mode else 'off'} | {sum(b.requests for b in mine)} | {ok} | {sum(b.logged for b in mine)} | "
            f"{throughput[mode]:.1f} | {percentile(latencies, 0.5) * 1000:.0f} | "
            f"{percentile(latencies, 0.95) * 1000:.0f} |"
        )
    ratio = throughput[True] / throughput[False]
    exact = all(b.logged == (b.ok if b.logging else 0) for b in blocks)
    lines += [
        "",
        f"throughput with logging on / off: {ratio:.3f}   (goal ≥ 0.97: {'met' if ratio >= 0.97 else 'NOT met'})",
        f"rows logged == 2xx answers in every block: {'yes' if exact else 'NO'}",
        f"group commit: {rows:.0f} rows in {commits:.0f} transactions = {rows / commits if commits else 0:.1f} "
        "rows per commit",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="logged requests (as many unlogged) (2000)")
    parser.add_argument("--concurrency", type=int, default=32, help="clients sending at once (32)")
    parser.add_argument("--max-tokens", type=int, default=4, help="output tokens per request (4)")
    parser.add_argument("--blocks", type=int, default=4, help="blocks per mode, alternating (4)")
    parser.add_argument("--database-url", default=None, help="an empty database (default: SQLite in a temp dir)")
    args = parser.parse_args(argv)

    per_block = max(1, args.requests // args.blocks)
    order: list[bool] = []
    for i in range(args.blocks):  # on, off, off, on, on, off, ...: each mode sees early and late alike
        order += [True, False] if i % 2 == 0 else [False, True]
    blocks = [Block(logging=mode, requests=per_block) for mode in order]

    with tempfile.TemporaryDirectory(prefix="pipeserve-bench-") as tmp:
        data_dir = Path(tmp)
        process, url = start(data_dir, args.database_url)
        try:
            warm = Block(logging=False, requests=2 * args.concurrency)
            asyncio.run(run_block(url, warm, args.concurrency, args.max_tokens))
            for number, block in enumerate(blocks, 1):
                asyncio.run(run_block(url, block, args.concurrency, args.max_tokens))
                print(
                    f"block {number}/{len(blocks)} logging {'on ' if block.logging else 'off'}: "
                    f"{block.ok} ok, {block.failed} failed, {block.ok / block.wall:.1f} req/s",
                    flush=True,
                )
            commits, rows = scrape(url, "pipeserve_log_commits"), scrape(url, "pipeserve_log_rows")
        finally:
            stop(process)
        from pipeserve.settings import Settings

        settings = Settings(data_dir=data_dir, database_url=args.database_url)
        asyncio.run(count_logged(settings.store_url, blocks))
        store = "PostgreSQL" if args.database_url else "SQLite (WAL)"
        print()
        print(report(blocks, commits, rows, args, store))
    return 0


if __name__ == "__main__":
    sys.exit(main())
