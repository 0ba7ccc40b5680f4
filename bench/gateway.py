"""Benchmark: what a gateway adds in front of an upstream, pipeserve against LiteLLM's proxy.

A fast fake OpenAI-compatible upstream (`bench/gateway_load.py upstream`, its own process) answers a fixed
completion on loopback. The same load client (`bench/gateway_load.py client`, a new process per block) sends
the same chat completion to three targets in turn: the upstream directly (the baseline), pipeserve in front of
it, and LiteLLM's proxy in front of it. Four scenarios: non-streamed and streamed, 1 and 64 concurrent
connections. Each block runs `--warm` seconds unmeasured then `--seconds` measured; within a round the targets
go direct, pipeserve, LiteLLM, and the next round in the opposite order, so drift of the machine weighs on both
gateways alike. Added latency = a gateway's percentile - the direct percentile of the same scenario.

Both gateways log every request: pipeserve its default (`log_requests = true`: one row per request in SQLite,
or PostgreSQL with `--postgres`); LiteLLM a `CustomLogger` callback that appends its `standard_logging_object`
to a JSON-lines file (its spend logs need PostgreSQL through Prisma, whose engines cannot be installed from
PyPI alone). Both run one worker process: pipeserve is one process, LiteLLM gets `--num_workers 1`.

LiteLLM lives in its own virtualenv so its pins leave ours alone:

    python3 -m venv /work/litellm-venv && /work/litellm-venv/bin/pip install 'litellm[proxy]'
    python bench/gateway.py                          # 4 scenarios x 3 rounds x 3 targets x (0.5 + 3 s)
    python bench/gateway.py --seconds 1 --rounds 1   # a quick look
    python bench/gateway.py --postgres               # pipeserve logs to a throwaway PostgreSQL database
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
LOAD = HERE / "gateway_load.py"
DEFAULT_LITELLM = "/work/litellm-venv/bin/python"
MODEL = "fake"
TARGETS = ("direct", "pipeserve", "litellm")
NAMES = {"direct": "direct", "pipeserve": "pipeserve", "litellm": "LiteLLM"}
SCENARIOS = [(False, 1), (False, 64), (True, 1), (True, 64)]  # (stream, concurrency)
PG_HOST = "postgresql://postgres@127.0.0.1:5432"

LITELLM_CALLBACK = '''
"""Log every request, as a gateway's request log would: LiteLLM's standard logging payload, one JSON line each."""
import json
import os

from litellm.integrations.custom_logger import CustomLogger


class JsonLinesLogger(CustomLogger):
    def __init__(self, path):
        super().__init__()
        self.file = open(path, "a", buffering=1)

    async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):
        self.file.write(json.dumps(kwargs.get("standard_logging_object"), default=str) + "\\n")

    async def async_log_failure_event(self, kwargs, response_obj, start_time, end_time):
        self.file.write(json.dumps(kwargs.get("standard_logging_object"), default=str) + "\\n")


proxy_handler_instance = JsonLinesLogger(os.environ["BENCH_LITELLM_LOG"])
'''


@dataclass
class Stats:
    seconds: float = 0.0
    measured: int = 0  # requests completed inside the measured windows
    ok: int = 0  # every 200 answer, warm-ups included (what the logs must hold)
    errors: int = 0
    cpu: float = 0.0  # CPU seconds of the gateway's processes over its blocks (warm parts included)
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return self.measured / self.seconds if self.seconds else float("nan")


@dataclass
class Server:
    name: str
    port: int
    process: subprocess.Popen[bytes] | None = None
    key: str = ""  # sent as `Authorization: Bearer`
    ok: int = 0  # 200 answers it gave, warm-ups included


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def body(stream: bool) -> str:
    request: dict[str, Any] = {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant. Answer in one short sentence."},
            {"role": "user", "content": "Say hello to the benchmark."},
        ],
        "max_tokens": 16,
        "temperature": 0.7,
        "stream": stream,
    }
    if stream:
        request["stream_options"] = {"include_usage": True}
    return json.dumps(request)


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and its descendants (a proxy's workers), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    tree, total = {pid}, 0.0
    for candidate in sorted(parents):  # children have higher pids than their parents, nearly always
        if parents[candidate] in tree:
            tree.add(candidate)
    for member in tree:
        total += times.get(member, 0.0)
    return total


def wait_ready(server: Server, log: Path, timeout: float = 240) -> None:
    url = f"http://127.0.0.1:{server.port}/v1/chat/completions"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process is not None and server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited:\n{log.read_text()[-3000:]}")
        try:
            headers = {"content-type": "application/json"}
            headers |= {"authorization": f"Bearer {server.key}"} if server.key else {}
            if httpx.post(url, content=body(False), headers=headers, timeout=10).status_code == 200:
                server.ok += 1
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop(server)
    raise RuntimeError(f"{server.name} did not answer in {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def start_upstream(tmp: Path, servers: dict[str, Server]) -> Server:
    server = servers["direct"] = Server("upstream", free_port())
    log = tmp / "upstream.log"
    server.process = subprocess.Popen(
        [sys.executable, str(LOAD), "upstream", "--port", str(server.port)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    wait_ready(server, log, 30)
    return server


def start_pipeserve(tmp: Path, servers: dict[str, Server], database_url: str | None) -> Server:
    upstream = servers["direct"]
    server = servers["pipeserve"] = Server("pipeserve", free_port())
    config = tmp / "pipeserve.toml"
    config.write_text(
        textwrap.dedent(f"""\
            # Only the upstream model: without [[models]] the embedded llama.cpp model would load too.
            [[models]]
            id = "{MODEL}"
            engine = "openai"
            base_url = "http://127.0.0.1:{upstream.port}/v1"
            """)
    )
    data_dir = tmp / "pipeserve-data"
    data_dir.mkdir()
    keys = ("PIPESERVE_", "OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY")
    env = {k: v for k, v in os.environ.items() if not k.startswith(keys)}
    create = [sys.executable, "-m", "pipeserve", "keys", "create", "--name", "bench", "--data-dir", str(data_dir)]
    server.key = subprocess.run(create, capture_output=True, text=True, check=True, env=env).stdout.strip()
    args = [sys.executable, "-m", "pipeserve", "serve", "--config", str(config), "--port", str(server.port)]
    args += ["--data-dir", str(data_dir)] + (["--database-url", database_url] if database_url else [])
    log = tmp / "pipeserve.log"
    server.process = subprocess.Popen(args, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
    wait_ready(server, log)
    return server


def start_litellm(tmp: Path, servers: dict[str, Server], python: str) -> Server:
    upstream = servers["direct"]
    server = servers["litellm"] = Server("litellm", free_port(), key=f"sk-{uuid.uuid4().hex}")
    (tmp / "bench_callbacks.py").write_text(LITELLM_CALLBACK)
    config = tmp / "litellm.yaml"
    config.write_text(
        textwrap.dedent(f"""\
            model_list:
              - model_name: {MODEL}
                litellm_params:
                  model: openai/{MODEL}
                  api_base: http://127.0.0.1:{upstream.port}/v1
                  api_key: sk-fake
            litellm_settings:
              callbacks: bench_callbacks.proxy_handler_instance
            """)
    )
    args = [python, "-m", "litellm.proxy.proxy_cli", "--config", str(config), "--host", "127.0.0.1"]
    args += ["--port", str(server.port), "--num_workers", "1"]
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "VIRTUAL_ENV", "PYTHONPATH")}
    env |= {
        "LITELLM_MASTER_KEY": server.key,  # it refuses to start without one
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no network: the cost map bundled with the package
        "BENCH_LITELLM_LOG": str(tmp / "litellm-requests.jsonl"),
    }
    log = tmp / "litellm.log"
    server.process = subprocess.Popen(args, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, cwd=tmp)
    wait_ready(server, log)
    return server


def stop(server: Server) -> None:
    if server.process is None or server.process.poll() is not None:
        return
    server.process.send_signal(signal.SIGTERM)  # graceful: pipeserve flushes its log writer
    try:
        server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


def run_block(server: Server, stream: bool, concurrency: int, warm: float, seconds: float) -> dict[str, Any]:
    args = [sys.executable, str(LOAD), "client", "--port", str(server.port), "--body", body(stream)]
    args += ["--key", server.key] if server.key else []
    args += ["--concurrency", str(concurrency), "--warm", str(warm), "--seconds", str(seconds)]
    before = cpu_seconds(server.process.pid) if server.process else 0.0
    done = subprocess.run(args, capture_output=True, check=True, timeout=warm + seconds + 120)
    result: dict[str, Any] = json.loads(done.stdout)
    result["cpu"] = (cpu_seconds(server.process.pid) if server.process else 0.0) - before
    server.ok += result["ok"]
    if result["errors"]:
        print(f"  {server.name}: {result['errors']} errors, e.g. {result['first_errors']}", flush=True)
    return result


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def make_pg_database() -> str:
    import asyncpg

    name = f"gateway_bench_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(f"{PG_HOST}/postgres")
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return f"{PG_HOST}/{name}"


async def drop_pg_database(url: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(f"{PG_HOST}/postgres")
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
    finally:
        await conn.close()


async def count_pipeserve_rows(store_url: str) -> int:
    from sqlalchemy import func, select

    from pipeserve.store.db import Database
    from pipeserve.store.tables import logs

    db = Database(store_url)
    try:
        async with db.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(logs))).scalar_one())
    finally:
        await db.close()


def machine(litellm_python: str) -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    version = subprocess.run(
        [litellm_python, "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    from importlib.metadata import version as installed

    return (
        f"machine: {os.cpu_count()} CPUs ({cpu}), load average {os.getloadavg()[0]:.2f}; "
        f"Python {platform.python_version()}; pipeserve {installed('pipeserve')}; LiteLLM {version}"
    )


def ms(value: float) -> str:
    return f"{value * 1000:.2f}"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "-"


def per_request(s: Stats) -> str:
    return f"{s.cpu / s.ok * 1000:.2f}" if s.ok else "-"


def report(stats: dict[tuple[str, bool, int], Stats]) -> str:
    lines = [
        "| scenario | req/s direct | req/s pipeserve | req/s LiteLLM | req/s ratio | direct p50 / p99 ms "
        "| added p50 ms ps / LiteLLM (ratio) | added p99 ms ps / LiteLLM (ratio) | added TTFT p50 ms ps / LiteLLM "
        "| CPU ms/req ps / LiteLLM | goals |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for stream, concurrency in SCENARIOS:
        d, p, m = (stats[(t, stream, concurrency)] for t in TARGETS)
        added = {
            (name, q): percentile(s.latencies, q) - percentile(d.latencies, q)
            for name, s in (("p", p), ("m", m))
            for q in (0.5, 0.99)
        }
        ttft = "-"
        if stream:
            base = percentile(d.ttfts, 0.5)
            ttft = f"{ms(percentile(p.ttfts, 0.5) - base)} / {ms(percentile(m.ttfts, 0.5) - base)}"
        goals = [f"req/s ≥ 3x: {'met' if p.rps >= 3 * m.rps else 'NOT met'}"]
        if concurrency == 1:
            goals.append(f"added p50 ≤ 1 ms: {'met' if added[('p', 0.5)] <= 0.001 else 'NOT met'}")
        lines.append(
            f"| {'stream' if stream else 'non-stream'}, c{concurrency} | {d.rps:.0f} | {p.rps:.0f} | {m.rps:.0f} "
            f"| **{ratio(p.rps, m.rps)}** | {ms(percentile(d.latencies, 0.5))} / {ms(percentile(d.latencies, 0.99))} "
            f"| {ms(added[('p', 0.5)])} / {ms(added[('m', 0.5)])} ({ratio(added[('p', 0.5)], added[('m', 0.5)])}) "
            f"| {ms(added[('p', 0.99)])} / {ms(added[('m', 0.99)])} "
            f"({ratio(added[('p', 0.99)], added[('m', 0.99)])}) | {ttft} "
            f"| {per_request(p)} / {per_request(m)} "
            f"| {'; '.join(goals)} |"
        )
    return "\n".join(lines)


def measure(servers: dict[str, Server], stats: dict[tuple[str, bool, int], Stats], args: argparse.Namespace) -> None:
    print("warming up every target on every scenario", flush=True)
    for stream, concurrency in SCENARIOS:
        for target in TARGETS:
            run_block(servers[target], stream, concurrency, 0.0, 1.0)
    for number in range(args.rounds):
        order = TARGETS if number % 2 == 0 else TARGETS[::-1]
        for stream, concurrency in SCENARIOS:
            rates = []
            for target in order:
                result = run_block(servers[target], stream, concurrency, args.warm, args.seconds)
                s = stats[(target, stream, concurrency)]
                s.seconds += result["seconds"]
                s.measured += len(result["latencies"])
                s.ok += result["ok"]
                s.errors += result["errors"]
                s.cpu += result["cpu"]
                s.latencies += result["latencies"]
                s.ttfts += result["ttfts"]
                rates.append(f"{NAMES[target]} {len(result['latencies']) / result['seconds']:.0f}")
            scenario = f"{'stream' if stream else 'non-stream'} c{concurrency}"
            print(f"round {number + 1}/{args.rounds} {scenario}: req/s {', '.join(rates)}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per block (3)")
    parser.add_argument("--warm", type=float, default=0.5, help="unmeasured seconds at the start of a block (0.5)")
    parser.add_argument("--rounds", type=int, default=3, help="blocks per target and scenario (3)")
    parser.add_argument("--litellm-python", default=DEFAULT_LITELLM, help=f"LiteLLM's python ({DEFAULT_LITELLM})")
    parser.add_argument("--postgres", action="store_true", help=f"pipeserve logs to a new database on {PG_HOST}")
    args = parser.parse_args(argv)
    probe = subprocess.run([args.litellm_python, "-c", "import litellm.proxy.proxy_cli"], capture_output=True)
    if not shutil.which(args.litellm_python) or probe.returncode != 0:
        venv = Path(args.litellm_python).parent.parent
        print(
            f"LiteLLM's proxy is not importable with {args.litellm_python}. Create its own virtualenv:\n"
            f"  python3 -m venv {venv} && {venv}/bin/pip install 'litellm[proxy]'\n"
            "or pass --litellm-python PATH.",
            file=sys.stderr,
        )
        return 2
    print(machine(args.litellm_python), flush=True)

    database_url = asyncio.run(make_pg_database()) if args.postgres else None
    stats = {(t, s, c): Stats() for t in TARGETS for s, c in SCENARIOS}
    try:
        with tempfile.TemporaryDirectory(prefix="pipeserve-gateway-") as tmp_name:
            tmp = Path(tmp_name)
            servers: dict[str, Server] = {}
            try:
                start_upstream(tmp, servers)
                start_pipeserve(tmp, servers, database_url)
                start_litellm(tmp, servers, args.litellm_python)
                measure(servers, stats, args)
                time.sleep(2)  # both loggers write after the answer: let them finish
            finally:
                for name in ("litellm", "pipeserve", "direct"):
                    if name in servers:
                        stop(servers[name])
            from pipeserve.settings import Settings

            store = Settings(data_dir=tmp / "pipeserve-data", database_url=database_url).store_url
            ps_rows = asyncio.run(count_pipeserve_rows(store))
            lines = (tmp / "litellm-requests.jsonl").read_text().count("\n")
    finally:
        if database_url:
            asyncio.run(drop_pg_database(database_url))
    logged = (
        f"logged: pipeserve {ps_rows} rows for {servers['pipeserve'].ok} answers, "
        f"LiteLLM {lines} lines for {servers['litellm'].ok} answers"
    )
    errors = sum(s.errors for s in stats.values())
    print()
    print(report(stats))
    print()
    print(f"errors: {errors}; {logged}; pipeserve's store: {'PostgreSQL' if database_url else 'SQLite (WAL)'}")
    print(machine(args.litellm_python))
    return 0


if __name__ == "__main__":
    sys.exit(main())
