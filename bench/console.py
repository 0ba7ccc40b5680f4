"""Benchmark: how long the web console takes to build its pages over a large request log.

The issue's goal: every page renders in under 200 ms of server time with 100,000 logged requests, on SQLite
and on PostgreSQL. For each store this script
1. makes a fresh store (a SQLite file in a temporary directory; a throwaway database on the PostgreSQL server
   given by `--pg`, dropped afterwards), migrated by pipeserve itself;
2. writes `--rows` logs into it directly (chat completions of three models over 30 days, 1% of them 500s,
   metadata `team` (5 values) and `prompt` (1,000 values), a `relevance` judgement on a fifth of them), one
   dataset of 500 entries and a criterion with two versions;
3. starts `pipeserve serve` on that store and asks each page `--repeat` times, one request at a time,
   reading the server's own time from the `Server-Timing` header every console page carries (the time
   from the route's start to its answer, which excludes the network and the browser).

Pages measured: the log's first page (50 and 200 rows), the log filtered by model, by a common and by a rare
metadata value, by status 500, by a criteria score, a page halfway down the log (keyset cursor), one request,
the datasets, a dataset's entries, the criteria, a criterion with its diff, the models and the playground.

    python bench/console.py                       # 100,000 rows, SQLite then PostgreSQL
    python bench/console.py --rows 20000 --stores sqlite
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

MODEL = "SmolLM2-135M-Instruct"
MODELS = [MODEL, "gpt-4o-mini", "claude-3-5-haiku"]
GOAL_MS = 200.0
BATCH = 2000
DAY_MS = 86_400_000


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- the store -----------------------------------------------------------------------------------------------


def _log_row(number: int, now: int, rng: random.Random) -> dict[str, Any]:
    from pipeserve.store.db import new_id

    model = MODELS[number % 3]
    question = f"Question {number}: what is {rng.randint(1, 999)} times {rng.randint(1, 99)}? Answer briefly."
    answer = f"The answer is {rng.randint(1, 99999)}. " + "It follows from multiplying the two numbers. " * 3
    failed = number % 100 == 7
    prompt, completion = rng.randint(30, 400), rng.randint(5, 300)
    meta = {"team": f"team-{number % 5}", "prompt": f"p-{number % 1000}"}
    return {
        "id": new_id("log"),
        "project": "default",
        "source": "chat",
        "completion_id": f"chatcmpl-{uuid.uuid4().hex}",
        "model": model,
        "requested_at": now - (number * 30 * DAY_MS) // 100_000 - rng.randint(0, 999),
        "received_at": None,
        "ttft_ms": rng.uniform(20, 400),
        "duration_ms": rng.uniform(100, 4000),
        "status_code": 500 if failed else 200,
        "error_message": "The engine failed." if failed else None,
        "req_payload": {
            "model": model,
            "messages": [
                {"role": "system", "content": "You are a helpful calculator. Answer with the number first."},
                {"role": "user", "content": question},
            ],
            "max_completion_tokens": 256,
            "metadata": meta,
        },
        "resp_payload": None
        if failed
        else {
            "id": f"chatcmpl-{number}",
            "object": "chat.completion",
            "model": model,
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": answer}}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
        },
        "prompt_tokens": None if failed else prompt,
        "completion_tokens": None if failed else completion,
        "cost": None if failed else (prompt * 0.15 + completion * 0.6) / 1e6,
        "cache_hit": False,
        "key_id": None,
        "meta": meta,
        "tags": {},
    }


@dataclass
class Seeded:
    log_id: str
    deep_cursor: str
    dataset_id: str
    criterion: str


async def seed(url: str, rows: int) -> Seeded:
    """`rows` logs, a dataset and a criterion in a fresh store at `url` (a plain SQLAlchemy URL)."""
    from sqlalchemy import insert, select

    from pipeserve.protocol.criteria import CreateCriterionRequest, NewCriterionVersionRequest
    from pipeserve.protocol.datasets import CreateDatasetEntriesRequest, CreateDatasetRequest
    from pipeserve.service.criteria import CriteriaService
    from pipeserve.service.datasets import DatasetService
    from pipeserve.service.values import encode_cursor
    from pipeserve.settings import Settings
    from pipeserve.store.db import now_ms, open_database
    from pipeserve.store.tables import log_criteria, logs

    db = await open_database(Settings(database_url=url).store_url)
    rng = random.Random(7)
    now = now_ms()
    try:
        for start in range(0, rows, BATCH):
            batch = [_log_row(n, now, rng) for n in range(start, min(rows, start + BATCH))]
            judged = [
                {
                    "log_id": row["id"],
                    "choice_index": 0,
                    "name": "relevance",
                    "version": 1,
                    "status": "success",
                    "score": rng.random(),
                    "explanation": "The answer addresses the question.",
                    "error_code": None,
                    "error_message": None,
                }
                for row in batch[::5]
                if row["status_code"] == 200
            ]
            async with db.begin() as conn:
                await conn.execute(insert(logs), batch)
                await conn.execute(insert(log_criteria), judged)
        async with db.connect() as conn:
            newest = (await conn.execute(select(logs.c.id).order_by(logs.c.requested_at.desc()).limit(1))).scalar_one()
            deep = (
                await conn.execute(
                    select(logs.c.requested_at, logs.c.id)
                    .order_by(logs.c.requested_at.desc(), logs.c.id.desc())
                    .offset(rows // 2)
                    .limit(1)
                )
            ).one()
        datasets = DatasetService(db)
        dataset = await datasets.create_dataset("default", CreateDatasetRequest(name="bench"))
        entries = [
            {"messages": [{"role": "user", "content": f"q{n}"}, {"role": "assistant", "content": f"a{n}"}]}
            for n in range(500)
        ]
        await datasets.add_entries("default", dataset.id, CreateDatasetEntriesRequest(entries=entries))
        criteria = CriteriaService(db, MODEL)
        text = "PASS if the answer gives the number first.\nFAIL otherwise.\n" + "Be strict about formatting.\n" * 20
        await criteria.create("default", CreateCriterionRequest(name="number-first", instructions=text))
        await criteria.new_version(
            "default", "number-first", NewCriterionVersionRequest(instructions=text.replace("strict", "lenient"))
        )
        return Seeded(newest, encode_cursor(deep.requested_at, deep.id), dataset.id, "number-first")
    finally:
        await db.close()


async def create_pg_database(server: str) -> str:
    import asyncpg

    name = f"pipeserve_bench_console_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(f"{server}/postgres")
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return f"{server}/{name}"


async def drop_pg_database(url: str) -> None:
    import asyncpg

    server, name = url.rsplit("/", 1)
    conn = await asyncpg.connect(f"{server}/postgres")
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


# --- the server ----------------------------------------------------------------------------------------------


def start(data_dir: Path, database_url: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    args = [sys.executable, "-m", "pipeserve", "serve", "--port", str(port), "--data-dir", str(data_dir)]
    args += ["--database-url", database_url, "--log-level", "warning"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPESERVE_")}
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=(data_dir / "server.log").open("wb"), env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited: {(data_dir / 'server.log').read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    process.kill()
    raise RuntimeError("the server did not start")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


def pages(seeded: Seeded) -> dict[str, str]:
    return {
        "log, newest 50": "/",
        "log, newest 200": "/?limit=200",
        "log, model filter": "/?model=gpt-4o-mini",
        "log, metadata (1 in 5)": "/?meta=team%3Dteam-3",
        "log, metadata (1 in 1000)": "/?meta=prompt%3Dp-123",
        "log, status 500 (1%)": "/?status=500",
        "log, criteria score": "/?score=relevance.score%3C0.2",
        "log, halfway down (cursor)": f"/?cursor={seeded.deep_cursor}",
        "one request": f"/requests/{seeded.log_id}",
        "datasets": "/datasets",
        "dataset entries": f"/datasets/{seeded.dataset_id}",
        "criteria": "/criteria",
        "criterion + diff": f"/criteria/{seeded.criterion}",
        "models": "/models",
        "playground": "/playground",
    }


def measure(url: str, paths: dict[str, str], repeat: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in paths}
    with httpx.Client(base_url=url, timeout=60) as client:
        for name, path in paths.items():
            client.get(path)  # warm: the first read of a page also reads its template and the store's pages
            for _ in range(repeat):
                answer = client.get(path)
                if answer.status_code != 200:
                    raise RuntimeError(f"{path} answered {answer.status_code}: {answer.text[:300]}")
                times[name].append(float(answer.headers["server-timing"].split("dur=")[1]))
    return times


def run_store(store: str, args: argparse.Namespace) -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory(prefix="pipeserve-bench-console-") as tmp:
        data_dir = Path(tmp)
        url = (
            f"sqlite:///{data_dir / 'pipeserve.db'}" if store == "sqlite" else asyncio.run(create_pg_database(args.pg))
        )
        try:
            began = time.monotonic()
            seeded = asyncio.run(seed(url, args.rows))
            print(f"{store}: {args.rows:,} logs written in {time.monotonic() - began:.0f} s", file=sys.stderr)
            process, base = start(data_dir, url)
            try:
                return measure(base, pages(seeded), args.repeat)
            finally:
                stop(process)
        finally:
            if store == "postgresql":
                asyncio.run(drop_pg_database(url))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000, help="logged requests in the store")
    parser.add_argument("--repeat", type=int, default=20, help="requests per page, after one to warm up")
    parser.add_argument("--stores", default="sqlite,postgresql", help="which stores, comma-separated")
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432", help="PostgreSQL server (trust auth)")
    args = parser.parse_args()
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    results = {store: run_store(store, args) for store in stores}

    print(
        f"\nConsole pages, server time (Server-Timing) over {args.rows:,} logged requests, {args.repeat} requests each"
    )
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}\n")
    header = f"{'page':<28}" + "".join(f"{store + ' p50':>16}{'p95':>9}{'max':>9}" for store in stores)
    print(header)
    print("-" * len(header))
    worst = 0.0
    for name in next(iter(results.values())):
        line = f"{name:<28}"
        for store in stores:
            times = sorted(results[store][name])
            p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
            worst = max(worst, p95)
            line += f"{statistics.median(times):>13.1f} ms{p95:>6.1f} ms{times[-1]:>6.1f} ms"
        print(line)
    verdict = "met" if worst < GOAL_MS else "NOT met"
    print(f"\nGoal: every page under {GOAL_MS:.0f} ms (p95): {verdict} (worst p95 {worst:.1f} ms)")


if __name__ == "__main__":
    main()
