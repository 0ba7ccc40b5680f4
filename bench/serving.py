"""Benchmark: pipeserve against llama.cpp's `llama-server` and llama-cpp-python's server, side by side.

What it measures
----------------
The same client load is sent, through the OpenAI-compatible ``/v1/chat/completions`` with the official
``openai.AsyncOpenAI`` client and ``stream=True``, to three servers of the same model (the embedded
SmolLM2-135M-Instruct Q4_1 GGUF), each started alone on a free loopback port with the same KV budget
(16384 cells) and the same thread count (2):

* ``pipeserve``        -- ``python -m pipeserve serve`` with a config of ``context_size = 16384``,
  ``threads = 2`` (``max_sequences`` 16, so 16 KV streams of 1024 cells, ``batch_size`` 512 by default);
* ``llama-server``     -- llama.cpp's C++ server, built once (see below) from the llama.cpp sources vendored in
  the llama-cpp-python sdist of the installed version, so the ggml kernels are the same as pipeserve's; run with
  ``-c 16384 -np 16 -t 2 -tb 2 --no-repack`` (continuous batching is on by default);
* ``llama-cpp-python`` -- ``python -m llama_cpp.server`` from the same install (one request at a time), with
  ``--n_ctx 16384 --n_threads 2 --n_threads_batch 2 --interrupt_requests False`` (by default a new request
  *interrupts* the one streaming), started through a launcher that loads the model with
  ``use_extra_bufts = False``: ggml's AMX weight repacking crashes on the first decode on these CPUs, which is
  also why pipeserve loads that way and llama-server gets ``--no-repack``.

Workloads (temperature 0.7, per-request seeds, answers asked to be long so most requests use ``max_tokens``):

* ``W1 shared``   -- 64 requests, 16 concurrent: the same ~400-token system prompt + a distinct question,
  max_tokens 128. All 16 first requests arrive together.
* ``W2 distinct`` -- the same, but every request has its own system prompt of the same length.
* ``W3 latency``  -- one client, 20 sequential requests of a distinct ~100-token prompt, max_tokens 64.

Per server and workload: aggregate output tok/s (sum of ``usage.completion_tokens``, or content chunks where a
server sends no usage, over the workload's wall time), requests/s, time to the first content chunk (TTFT)
p50/p95, inter-token latency (ITL: gaps between consecutive content chunks, pooled over all requests) p50/p95,
and the peak RSS of the server process and its children (``/proc/<pid>/status`` VmRSS sampled every 0.1 s).
Then pipeserve's ratios to each peer, next to the goals.

All the servers of a run are started together, fresh, and each workload runs on every server back to back
before the next workload starts (the servers' order alternating from one workload to the next), so that the two
sides of a ratio are measured minutes apart: this machine's speed drifts by 10-15% within an hour, which one
whole pass per server (about 20 minutes) put straight into the ratios. ``--rounds N`` repeats all of it N times,
servers restarted, the order of the first workload alternating between rounds, and judges the goals on each
ratio's median over the rounds (each round's value printed beside it). Idle servers take no CPU (the ``other``
column shows it if one did).

Each server gets a warm-up that is not measured (2 short requests and ``concurrency`` connections opened),
with prompts unrelated to the workloads, so that W1's shared prompt is not in any prefix cache before W1.
Every request has a timeout (``--request-timeout``, 600 s) and the whole run a time cap (``--time-cap``);
servers are always stopped, also on errors and Ctrl-C.

Building llama-server
---------------------
Once, into ``--cache-dir`` (default ``bench/.cache/``, git-ignored): the sdist of the installed
llama-cpp-python version (copied from ``/tmp/pkgs`` if there, else ``pip download --no-binary :all:``) is
extracted and ``vendor/llama.cpp`` is configured with CMake (Release, native CPU, static, no UI download, no
OpenSSL) and only the ``llama-server`` target is built (several minutes on 2 cores). Skipped when
``<cache>/build-<version>/bin/llama-server`` exists.

Run it from the repository root with the project's virtualenv active, installed with the ``bench`` extra
(``pip install -e '.[test,bench]'``: llama-cpp-python's server needs sse-starlette and starlette-context)::

    python bench/serving.py                      # all four servers, full counts (about 22 minutes)
    python bench/serving.py --quick --servers pipeserve,llama-server
    python bench/serving.py --build-only         # just build llama-server into the cache
    python bench/serving.py --json-out /tmp/serving.json
    python bench/serving.py --rounds 3 --only llama-cpp-python=W1   # medians of 3 rounds (77 min on a slow CPU)
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import itertools
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import openai

from pipeserve.engines.llamacpp.options import embedded_gguf_path
from pipeserve.engines.llamacpp.weights import choose

MODEL = "SmolLM2-135M-Instruct"
CONTEXT = 16384
THREADS = 2
LLAMA_SERVER_SLOTS = 16
TEMPERATURE = 0.7
BASE_SEED = 4321
STARTUP_TIMEOUT_S = 180.0
MAX_CONNECTION_RETRIES = 2
REPO = Path(__file__).resolve().parent.parent
SERVERS = ("pipeserve", "llama-server", "llama-server-converted", "llama-cpp-python")
PEERS = ("llama-server", "llama-server-converted", "llama-cpp-python")
# pipeserve serves the shipped Q4_1 file in the format it measures fastest here (weights.py); llama-server runs
# on both the shipped file and that converted one, so that each ratio compares like with like.
WEIGHTS_ENV = "PIPESERVE_WEIGHTS_DIR"

# Runs llama-cpp-python's server with the model loaded without ggml's extra (AMX repacking) buffer types. Both
# llama_cpp.llama and llama_cpp._internals call `llama_cpp.llama_cpp.llama_model_default_params()` through the
# module, so patching the module attribute (and the package's re-export) covers every load.
LLAMA_CPP_PYTHON_LAUNCHER = """
import llama_cpp
import llama_cpp.llama_cpp as lib

_default_params = lib.llama_model_default_params


def _params_without_extra_bufts():
    params = _default_params()
    params.use_extra_bufts = False
    return params


lib.llama_model_default_params = _params_without_extra_bufts
llama_cpp.llama_model_default_params = _params_without_extra_bufts

from llama_cpp.server.__main__ import main

main()
"""


# --- prompts ---------------------------------------------------------------------------------------------
class Tokenizer:
    """The model's own tokenizer (vocabulary only), to size the prompts."""

    def __init__(self, gguf: Path) -> None:
        import llama_cpp

        self._llama = llama_cpp.Llama(str(gguf), vocab_only=True, verbose=False)

    def count(self, text: str) -> int:
        return len(self._llama.tokenize(text.encode(), add_bos=False, special=False))


COMPANIES = ["Northwind", "Bluefield", "Copperleaf", "Harborline", "Silverpine", "Redwater", "Oakridge", "Lumen"]
PRODUCTS = ["espresso machine", "robot vacuum", "e-bike", "smart thermostat", "air purifier", "dishwasher"]
MODELS = ["X2", "Pro 7", "S40", "Nova", "Mini 3", "Max", "Zephyr", "Q9"]
PARTS = [
    "the water tank",
    "the main filter",
    "the battery pack",
    "the control panel",
    "the drip tray",
    "the side brush",
    "the motor housing",
    "the power adapter",
    "the display",
    "the sensor array",
]
ACTIONS = ["clean", "inspect", "replace", "recalibrate", "descale", "tighten", "dry", "reset"]
PERIODS = ["every week", "every month", "every 90 days", "after 200 hours of use", "twice a year", "daily"]
CONDITIONS = [
    "if a warning light blinks",
    "when the unit is cold",
    "before long storage",
    "after a power cut",
    "if the noise level rises",
    "when moving the unit",
    "before the first use",
]
POLICIES = [
    "Customers may return an unused unit within {n} days for a full refund.",
    "The warranty covers manufacturing defects for {n} months from the date of purchase.",
    "Repairs under warranty are free; outside the warranty, labour costs {n} dollars per hour.",
    "Replacement parts ship within {n} business days to any address in the country.",
    "Support agents answer the phone from 8 am to {n} pm, Monday to Saturday.",
    "Damage caused by dropping the unit or by liquids is not covered by the warranty.",
    "Every registered customer gets a {n} percent discount on filters and cleaning kits.",
    "Units bought from unauthorised resellers are supported only after a paid inspection of {n} dollars.",
]
TASKS = [
    "set up the product for the first time",
    "clean every part of the product thoroughly",
    "replace the main filter",
    "troubleshoot a unit that will not turn on",
    "prepare the product for long storage",
    "reduce the noise the product makes",
    "save energy while using the product",
    "ask for a repair under warranty",
    "return the product for a refund",
    "move the product safely to another home",
    "update the product's firmware",
    "keep the product working well for ten years",
    "teach a new user to operate the product",
    "check whether a part needs to be replaced",
    "fix a leak or a spill inside the product",
    "get the best results from the product every day",
]
STYLES = [
    "Give a long, detailed, step-by-step answer.",
    "Explain every step at length, with tips and warnings.",
    "Write a thorough guide with many numbered steps.",
    "Answer in depth, covering each step and the reasons behind it.",
]


def system_prompt(seed: int, target_tokens: int, tokenizer: Tokenizer) -> str:
    """A deterministic support-assistant prompt of about `target_tokens` tokens, distinct from its first words
    for distinct seeds (so that two of them share no prefix beyond the chat template's header)."""
    rng = random.Random(seed)
    company, product, model = rng.choice(COMPANIES), rng.choice(PRODUCTS), rng.choice(MODELS)
    sentences = [
        f"Reference {seed:05d}. You are the support assistant of {company}, maker of the {model} {product}.",
        "Answer customers politely and precisely, using only the manual and the policies below.",
    ]
    text = " ".join(sentences)
    rule = 0
    while tokenizer.count(text) < target_tokens:
        if rng.random() < 0.3:
            sentence = rng.choice(POLICIES).format(n=rng.randint(2, 60))
        else:
            rule += 1
            sentence = (
                f"Rule {rule}: {rng.choice(ACTIONS)} {rng.choice(PARTS)} of the {model} "
                f"{rng.choice(PERIODS)}, and also {rng.choice(CONDITIONS)}."
            )
        candidate = f"{text} {sentence}"
        if tokenizer.count(candidate) > target_tokens + 12:
            break
        text = candidate
    return text


def question(index: int) -> str:
    task = TASKS[index % len(TASKS)]
    style = STYLES[(index // len(TASKS)) % len(STYLES)]
    return f"Question {index + 1}: explain how to {task}. {style}"


@dataclass
class Workload:
    key: str
    name: str
    concurrency: int
    max_tokens: int
    prompts: list[list[dict[str, str]]]  # one message list per request
    prompt_tokens: list[int]  # tokens of system + user text per request (the chat template adds ~10)


def build_workloads(tokenizer: Tokenizer, *, quick: bool) -> list[Workload]:
    n_batch = 16 if quick else 64
    n_latency = 5 if quick else 20
    shared = system_prompt(0, 400, tokenizer)
    w1 = [[{"role": "system", "content": shared}, {"role": "user", "content": question(i)}] for i in range(n_batch)]
    w2 = [
        [
            {"role": "system", "content": system_prompt(1000 + i, 400, tokenizer)},
            {"role": "user", "content": question(i)},
        ]
        for i in range(n_batch)
    ]
    w3 = [
        [
            {"role": "system", "content": system_prompt(5000 + i, 75, tokenizer)},
            {"role": "user", "content": question(i)},
        ]
        for i in range(n_latency)
    ]

    def sizes(prompts: list[list[dict[str, str]]]) -> list[int]:
        return [sum(tokenizer.count(m["content"]) for m in messages) for messages in prompts]

    return [
        Workload("W1", "shared prefix", 16, 128, w1, sizes(w1)),
        # W1 again on the same, now warm, server: llama-server's slots then hold the system prompt too.
        Workload("W1w", "shared, warm", 16, 128, w1, sizes(w1)),
        Workload("W2", "distinct", 16, 128, w2, sizes(w2)),
        Workload("W3", "latency", 1, 64, w3, sizes(w3)),
    ]


WARMUP_MESSAGES = [{"role": "user", "content": "Say hello in one short sentence."}]


# --- building llama-server --------------------------------------------------------------------------------
def run_step(args: list[str], *, log: Path) -> None:
    print(f"  $ {' '.join(args)}", flush=True)
    with log.open("ab") as out:
        done = subprocess.run(args, stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        raise RuntimeError(f"{args[0]} failed with {done.returncode} (log {log}):\n{tail}")


def ensure_llama_server(cache: Path) -> Path:
    """Build llama.cpp's `llama-server` from the sdist of the installed llama-cpp-python, once."""
    version = importlib.metadata.version("llama-cpp-python")
    build = cache / f"build-{version}"
    binary = build / "bin" / "llama-server"
    if binary.is_file():
        return binary
    cache.mkdir(parents=True, exist_ok=True)
    log = cache / f"build-{version}.log"
    print(f"building llama-server {version} into {build} (several minutes; log {log}) ...", flush=True)
    started = time.monotonic()
    names = [f"llama_cpp_python-{version}.tar.gz", f"llama-cpp-python-{version}.tar.gz"]
    sdist = next((cache / name for name in names if (cache / name).is_file()), None)
    if sdist is None:
        local = Path("/tmp/pkgs") / names[0]
        if local.is_file():
            sdist = cache / local.name
            shutil.copy2(local, sdist)
        else:
            pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
            run_step([*pip, f"llama-cpp-python=={version}", "-d", str(cache)], log=log)
            sdist = next((cache / name for name in names if (cache / name).is_file()), None)
            if sdist is None:
                raise RuntimeError(f"pip download did not leave {names[0]} in {cache}")
    source = cache / f"llama_cpp_python-{version}"
    llama_cpp_dir = source / "vendor" / "llama.cpp"
    if not (llama_cpp_dir / "CMakeLists.txt").is_file():
        with tarfile.open(sdist) as archive:
            top = {Path(name).parts[0] for name in archive.getnames()}
            if len(top) != 1:
                raise RuntimeError(f"unexpected layout of {sdist}: {sorted(top)[:5]}")
            archive.extractall(cache, filter="data")
        extracted = cache / top.pop()
        if extracted != source:
            extracted.rename(source)
    if not (llama_cpp_dir / "tools" / "server").is_dir():
        raise RuntimeError(f"{llama_cpp_dir} has no tools/server: is this llama.cpp layout supported?")
    configure = [
        "cmake",
        "-S",
        str(llama_cpp_dir),
        "-B",
        str(build),
        "-DCMAKE_BUILD_TYPE=Release",
        "-DLLAMA_BUILD_SERVER=ON",
        "-DLLAMA_BUILD_TOOLS=ON",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DLLAMA_BUILD_APP=OFF",
        "-DBUILD_SHARED_LIBS=OFF",
        # No network: no prebuilt web UI download from Hugging Face, no npm build, no HTTPS.
        "-DLLAMA_BUILD_UI=OFF",
        "-DLLAMA_USE_PREBUILT_UI=OFF",
        "-DLLAMA_OPENSSL=OFF",
    ]
    run_step(configure, log=log)
    run_step(["cmake", "--build", str(build), "--target", "llama-server", "-j", str(os.cpu_count() or 2)], log=log)
    if not binary.is_file():
        raise RuntimeError(f"the build finished but {binary} does not exist (log {log})")
    print(f"built {binary} in {time.monotonic() - started:.0f} s", flush=True)
    return binary


# --- the servers ------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIPESERVE_", "OPENAI_"))}
    if WEIGHTS_ENV in os.environ:  # the weights chosen before the run (not at pipeserve's timed start)
        env[WEIGHTS_ENV] = os.environ[WEIGHTS_ENV]
    return env


@dataclass
class ServerSpec:
    name: str
    args: Callable[[int, Path], list[str]]  # (port, scratch dir) -> command line
    health_path: str


def server_specs(
    gguf: Path,
    llama_server: Path | None,
    pipeserve_options: list[str] | None = None,
    converted: Path | None = None,
    converted_repack: bool = False,
) -> dict[str, ServerSpec]:
    def pipeserve_args(port: int, tmp: Path) -> list[str]:
        config = tmp / "pipeserve.toml"
        extra = "".join(f"{option}\n" for option in pipeserve_options or [])
        config.write_text(
            f'[[models]]\nid = "{MODEL}"\nengine = "llamacpp"\ncontext_size = {CONTEXT}\nthreads = {THREADS}\n{extra}'
        )
        return [
            sys.executable,
            "-m",
            "pipeserve",
            "serve",
            "--port",
            str(port),
            "--data-dir",
            str(tmp / "data"),
            "--config",
            str(config),
        ]

    def llama_server_args(port: int, tmp: Path, *, model: Path = gguf, repack: bool = False) -> list[str]:
        assert llama_server is not None
        return [
            str(llama_server),
            "-m",
            str(model),
            "--alias",
            MODEL,
            "-c",
            str(CONTEXT),
            "-np",
            str(LLAMA_SERVER_SLOTS),
            "-t",
            str(THREADS),
            "-tb",
            str(THREADS),
            *([] if repack else ["--no-repack"]),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]

    def llama_cpp_python_args(port: int, tmp: Path) -> list[str]:
        return [
            sys.executable,
            "-c",
            LLAMA_CPP_PYTHON_LAUNCHER,
            "--model",
            str(gguf),
            "--model_alias",
            MODEL,
            "--n_ctx",
            str(CONTEXT),
            "--n_threads",
            str(THREADS),
            "--n_threads_batch",
            str(THREADS),
            "--interrupt_requests",
            "False",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]

    return {
        "pipeserve": ServerSpec("pipeserve", pipeserve_args, "/health"),
        "llama-server": ServerSpec("llama-server", llama_server_args, "/health"),
        "llama-server-converted": ServerSpec(
            "llama-server-converted",
            lambda port, tmp: llama_server_args(port, tmp, model=converted or gguf, repack=converted_repack),
            "/health",
        ),
        "llama-cpp-python": ServerSpec("llama-cpp-python", llama_cpp_python_args, "/v1/models"),
    }


@dataclass
class Running:
    url: str
    pid: int
    startup_s: float
    log: Path


@contextmanager
def running_server(spec: ServerSpec, log_dir: Path, *, round_: int = 0) -> Iterator[Running]:
    """Start one server on a free loopback port, wait until it answers, yield it, always stop it."""
    port = free_port()
    scratch = Path(tempfile.mkdtemp(prefix=f"serving-{spec.name}-"))
    log_path = log_dir / f"{spec.name}{f'-r{round_ + 1}' if round_ else ''}.log"
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            spec.args(port, scratch), stdout=log, stderr=subprocess.STDOUT, env=clean_env(), cwd=scratch
        )
    try:
        deadline = started + STARTUP_TIMEOUT_S
        while True:
            if process.poll() is not None:
                lines = log_path.read_text(errors="replace").splitlines()
                last = lines[-1] if lines else ""
                hint = " (install the bench extra: pip install -e '.[test,bench]')" if "ModuleNotFound" in last else ""
                tail = "\n".join(lines[-30:])
                raise RuntimeError(f"{spec.name} exited with {process.returncode}: {last}{hint}\n{tail}")
            try:
                if httpx.get(f"{url}{spec.health_path}", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{spec.name} did not start in {STARTUP_TIMEOUT_S:.0f} s (log {log_path})")
            time.sleep(0.2)
        startup = time.monotonic() - started
        print(f"{spec.name}: pid {process.pid} on {url}, ready in {startup:.1f} s", flush=True)
        yield Running(url, process.pid, startup, log_path)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(scratch, ignore_errors=True)


# --- memory -----------------------------------------------------------------------------------------------
def process_tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as children:
                    todo.extend(int(child) for child in children.read().split())
        except OSError:
            pass
    return pids


def rss_bytes(pid: int) -> int:
    total = 0
    for member in process_tree(pid):
        try:
            with open(f"/proc/{member}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            pass
    return total


CLOCK_TICK = os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float:
    """CPU seconds all CPUs spent busy since boot (user, nice, system, irq, softirq, steal)."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICK


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) of a process and its living descendants."""
    total = 0
    for member in process_tree(pid):
        try:
            with open(f"/proc/{member}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total / CLOCK_TICK


class CpuMeter:
    """CPU time used during a block by the server, by this benchmark process, and by everything else on the
    machine (another test run, a build): the last one says how trustworthy the numbers are."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.server_s = self.client_s = self.other_s = self.wall_s = 0.0

    def _read(self) -> tuple[float, float, float, float]:
        times = os.times()
        return time.monotonic(), machine_busy_s(), process_cpu_s(self.pid), times.user + times.system

    def __enter__(self) -> CpuMeter:
        self._start = self._read()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._read()
        wall, busy, server, client = (b - a for a, b in zip(self._start, end, strict=True))
        self.wall_s, self.server_s, self.client_s = wall, server, client
        self.other_s = max(0.0, busy - server - client)


def wait_for_quiet(pid: int, max_wait_s: float, *, quiet_s: float = 3.0, threshold: float = 0.10) -> float:
    """Wait until every process but the server `pid` and this one has used less than `threshold` of the CPUs for
    `quiet_s` seconds in a row (or `max_wait_s` passed); returns the seconds waited. On a shared machine a test
    run beside the benchmark can halve what a server gets (two OpenMP thread pools on 2 CPUs)."""
    started = time.monotonic()
    calm = 0.0
    cpus = os.cpu_count() or 1
    while calm < quiet_s and time.monotonic() - started < max_wait_s:
        with CpuMeter(pid) as meter:
            time.sleep(0.5)
        if meter.wall_s > 0 and meter.other_s / (meter.wall_s * cpus) < threshold:
            calm += meter.wall_s
        else:
            calm = 0.0
    return time.monotonic() - started


class RssSampler:
    """Samples the RSS of a process and its descendants every `interval` seconds on a thread; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = rss_bytes(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_bytes(self.pid))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes(self.pid))


# --- requests ---------------------------------------------------------------------------------------------
@dataclass
class RequestResult:
    index: int
    completion_tokens: int
    usage_reported: bool
    finish_reason: str | None
    seconds: float
    ttft_s: float | None
    content_chunks: int
    gaps_s: list[float] = field(default_factory=list)  # between consecutive content chunks
    error: str | None = None
    retries: int = 0  # connection errors before any response, retried


async def one_request(
    client: openai.AsyncOpenAI, messages: list[dict[str, str]], *, index: int, max_tokens: int, timeout: float
) -> RequestResult:
    """One streamed request. A connection that the server closed while idle (llama-server closes kept-alive
    connections now and then: "Server disconnected without sending a response") is retried, at most twice and
    only before any response; the time lost counts in the request's TTFT and in the workload's wall time."""
    start = time.perf_counter()
    stamps: list[float] = []
    usage: int | None = None
    finish: str | None = None
    retries = 0
    while True:
        try:
            stream = await client.chat.completions.create(
                model=MODEL,
                messages=messages,  # type: ignore[arg-type]
                max_tokens=max_tokens,
                temperature=TEMPERATURE,
                seed=BASE_SEED + index,
                stream=True,
                stream_options={"include_usage": True},
                timeout=timeout,
            )
        except openai.APIConnectionError as exc:
            if retries < MAX_CONNECTION_RETRIES and not isinstance(exc, openai.APITimeoutError):
                retries += 1
                continue
            return RequestResult(index, 0, False, None, time.perf_counter() - start, None, 0, [], repr(exc), retries)
        except (openai.OpenAIError, httpx.HTTPError, TimeoutError) as exc:
            return RequestResult(index, 0, False, None, time.perf_counter() - start, None, 0, [], repr(exc), retries)
        break
    try:
        async for chunk in stream:
            now = time.perf_counter()
            if chunk.usage is not None:
                usage = chunk.usage.completion_tokens
            for choice in chunk.choices:
                if choice.delta is not None and choice.delta.content:
                    stamps.append(now)
                if choice.finish_reason is not None:
                    finish = choice.finish_reason
    except (openai.OpenAIError, httpx.HTTPError, TimeoutError) as exc:
        seconds = time.perf_counter() - start
        return RequestResult(index, 0, False, None, seconds, None, len(stamps), [], repr(exc), retries)
    seconds = time.perf_counter() - start
    tokens = usage if usage is not None else len(stamps)
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    ttft = stamps[0] - start if stamps else None
    error = None if stamps else "no content"
    return RequestResult(index, tokens, usage is not None, finish, seconds, ttft, len(stamps), gaps, error, retries)


async def run_workload(
    client: openai.AsyncOpenAI, workload: Workload, *, timeout: float
) -> tuple[list[RequestResult], float]:
    """`workload.concurrency` workers pull requests from one queue; returns the results and the wall time."""
    todo: asyncio.Queue[int] = asyncio.Queue()
    for index in range(len(workload.prompts)):
        todo.put_nowait(index)
    results: list[RequestResult] = []

    async def worker() -> None:
        while True:
            try:
                index = todo.get_nowait()
            except asyncio.QueueEmpty:
                return
            messages = workload.prompts[index]
            results.append(
                await one_request(client, messages, index=index, max_tokens=workload.max_tokens, timeout=timeout)
            )

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workload.concurrency)))
    return sorted(results, key=lambda r: r.index), time.perf_counter() - start


# --- results ----------------------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass
class RunResult:
    workload: str
    server: str
    round: int  # --rounds: which round (0, 1, ...) measured it
    requests: int
    errors: int
    tokens: int
    usage_reported: bool  # False: tokens are content chunks
    finish_length: int
    seconds: float
    tok_s: float
    req_s: float
    ttft_p50_s: float | None
    ttft_p95_s: float | None
    itl_p50_s: float | None
    itl_p95_s: float | None
    peak_rss_bytes: int
    loaded_rss_bytes: int  # before the workload started
    server_cpu_s: float
    client_cpu_s: float  # this benchmark process (the openai client, the RSS sampler)
    other_cpu_s: float  # every other process on the machine: should be ~0 for trustworthy numbers
    server_cpu_pct: float  # of all CPUs over the workload's wall time
    other_cpu_pct: float
    retries: int  # connection errors before any response, retried (see one_request)
    results: list[RequestResult] = field(default_factory=list, repr=False)


def summarize(
    workload: Workload,
    server: str,
    results: list[RequestResult],
    seconds: float,
    peak: int,
    loaded: int,
    cpu: CpuMeter,
    *,
    round_: int = 0,
) -> RunResult:
    capacity = cpu.wall_s * (os.cpu_count() or 1)
    ok = [r for r in results if r.error is None]
    tokens = sum(r.completion_tokens for r in ok)
    ttfts = [r.ttft_s for r in ok if r.ttft_s is not None]
    gaps = [gap for r in ok for gap in r.gaps_s]
    return RunResult(
        workload=workload.key,
        server=server,
        round=round_,
        requests=len(results),
        errors=len(results) - len(ok),
        tokens=tokens,
        usage_reported=all(r.usage_reported for r in ok) if ok else False,
        finish_length=sum(1 for r in ok if r.finish_reason == "length"),
        seconds=seconds,
        tok_s=tokens / seconds if seconds > 0 else 0.0,
        req_s=len(ok) / seconds if seconds > 0 else 0.0,
        ttft_p50_s=percentile(ttfts, 0.50),
        ttft_p95_s=percentile(ttfts, 0.95),
        itl_p50_s=percentile(gaps, 0.50),
        itl_p95_s=percentile(gaps, 0.95),
        peak_rss_bytes=peak,
        loaded_rss_bytes=loaded,
        server_cpu_s=cpu.server_s,
        client_cpu_s=cpu.client_s,
        other_cpu_s=cpu.other_s,
        server_cpu_pct=100 * cpu.server_s / capacity if capacity > 0 else 0.0,
        other_cpu_pct=100 * cpu.other_s / capacity if capacity > 0 else 0.0,
        retries=sum(r.retries for r in results),
        results=results,
    )


@dataclass
class Contender:
    """One running server with its client and the workloads it is to run."""

    name: str
    running: Running
    client: openai.AsyncOpenAI
    workloads: set[str]


def make_client(url: str, timeout: float) -> openai.AsyncOpenAI:
    # Idle connections are dropped after 2 s, before the servers' own keep-alive timeouts (llama-server: 5 s)
    # could close one just as a request is sent on it (a spurious "Connection error").
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100, keepalive_expiry=2.0)
    return openai.AsyncOpenAI(
        base_url=f"{url}/v1",
        api_key="bench",
        max_retries=0,
        timeout=timeout,
        http_client=openai.DefaultAsyncHttpxClient(limits=limits, timeout=timeout),
    )


async def warm_up(contender: Contender, width: int, *, timeout: float) -> None:
    started = time.monotonic()
    for i in range(2):
        warm = await one_request(contender.client, WARMUP_MESSAGES, index=-1 - i, max_tokens=16, timeout=timeout)
        if warm.error is not None:
            raise RuntimeError(f"{contender.name}: warm-up request failed: {warm.error}")
    await asyncio.gather(*(contender.client.models.list() for _ in range(width)))
    print(f"{contender.name}: warm-up {time.monotonic() - started:.1f} s", flush=True)


async def run_one(
    contender: Contender, workload: Workload, *, round_: int, timeout: float, deadline: float, quiet_wait: float
) -> RunResult | None:
    """One workload on one server; None when the time cap ran out."""
    name, pid = contender.name, contender.running.pid
    waited = wait_for_quiet(pid, min(quiet_wait, max(0.0, deadline - time.monotonic())))
    if waited > 5:  # the 3 quiet seconds themselves are not worth a line
        print(f"{name}: waited {waited:.0f} s for other processes to leave the CPUs alone", flush=True)
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        print(f"{name}: time cap reached, {workload.key} skipped", flush=True)
        return None
    print(
        f"{name}: {workload.key} {workload.name}: {len(workload.prompts)} requests x{workload.concurrency}, "
        f"max_tokens {workload.max_tokens} ...",
        flush=True,
    )
    loaded = rss_bytes(pid)
    with RssSampler(pid) as sampler, CpuMeter(pid) as cpu:
        try:
            results, seconds = await asyncio.wait_for(
                run_workload(contender.client, workload, timeout=timeout), timeout=remaining
            )
        except TimeoutError:
            print(f"{name}: time cap reached during {workload.key}; stopping", flush=True)
            return None
    run = summarize(workload, name, results, seconds, sampler.peak, loaded, cpu, round_=round_)
    for r in results:
        if r.error is not None:
            print(f"  request {r.index} failed: {r.error}", flush=True)
    print(f"{name}: {workload.key} done in {seconds:.1f} s: {run.tokens} tokens, {run.tok_s:.1f} tok/s", flush=True)
    return run


async def benchmark_round(
    started: list[tuple[str, Running, set[str]]],
    workloads: list[Workload],
    failures: dict[str, str],
    *,
    round_: int,
    timeout: float,
    deadline: float,
    quiet_wait: float,
) -> list[RunResult]:
    """Every workload on every running server, back to back, so that the two sides of each ratio are measured
    minutes apart rather than a whole server's pass apart (this machine's speed drifts 10-15% within an hour).
    The servers' order alternates from one workload to the next and between rounds: none always goes first."""
    contenders = [Contender(name, running, make_client(running.url, timeout), keys) for name, running, keys in started]
    runs: list[RunResult] = []
    try:
        width = max(w.concurrency for w in workloads)
        ready: list[Contender] = []
        for contender in contenders:
            try:
                await warm_up(contender, width, timeout=timeout)
                ready.append(contender)
            except RuntimeError as exc:
                print(str(exc), flush=True)
                failures[contender.name] = str(exc)
        for step, workload in enumerate(workloads):
            order = ready if (round_ + step) % 2 == 0 else ready[::-1]
            for contender in order:
                if workload.key not in contender.workloads:
                    continue
                run = await run_one(
                    contender, workload, round_=round_, timeout=timeout, deadline=deadline, quiet_wait=quiet_wait
                )
                if run is None:
                    return runs
                runs.append(run)
        return runs
    finally:
        for contender in contenders:
            await contender.client.close()


# --- the report -------------------------------------------------------------------------------------------
Ratios = dict[str, dict[str, dict[str, float | None]]]  # {peer: {workload: {metric: pipeserve / peer}}}
PEAK = "peak"  # the pseudo-workload under which the ratio of peak RSS (over all workloads) is kept


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}"


def mib(value: int) -> str:
    return f"{value / 2**20:.0f}"


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def fx(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def peer_ratios(runs: list[RunResult]) -> Ratios:
    """pipeserve's value divided by each peer's, per workload, from runs of one round."""
    index = {(r.workload, r.server): r for r in runs}
    out: Ratios = {}

    def peak(server: str) -> int | None:
        values = [r.peak_rss_bytes for r in runs if r.server == server]
        return max(values) if values else None

    for peer in PEERS:
        for key in dict.fromkeys(r.workload for r in runs):
            ours, theirs = index.get((key, "pipeserve")), index.get((key, peer))
            if ours is None or theirs is None:
                continue
            out.setdefault(peer, {})[key] = {
                "tok_s": ratio(ours.tok_s, theirs.tok_s),
                "ttft_p50": ratio(ours.ttft_p50_s, theirs.ttft_p50_s),
                "itl_p50": ratio(ours.itl_p50_s, theirs.itl_p50_s),
                "rss": ratio(ours.peak_rss_bytes, theirs.peak_rss_bytes),
            }
        if peer in out:
            out[peer][PEAK] = {"rss": ratio(peak("pipeserve"), peak(peer))}
    return out


def round_ratios(runs: list[RunResult]) -> list[Ratios]:
    """`peer_ratios` of each round, in round order."""
    return [peer_ratios([r for r in runs if r.round == n]) for n in sorted({r.round for r in runs})]


def median_ratios(rounds: list[Ratios]) -> Ratios:
    """Each ratio's median over the rounds that measured it."""
    values: dict[tuple[str, str, str], list[float]] = {}
    for table in rounds:
        for peer, keys in table.items():
            for key, metrics in keys.items():
                for metric, value in metrics.items():
                    measured = values.setdefault((peer, key, metric), [])
                    if value is not None:
                        measured.append(value)
    out: Ratios = {}
    for (peer, key, metric), measured in values.items():
        out.setdefault(peer, {}).setdefault(key, {})[metric] = statistics.median(measured) if measured else None
    return out


GOALS: list[tuple[str, str, str, str, float, bool]] = [  # (label, peer, workload, metric, bound, at least)
    ("W1 cold tok/s >= 2.0x llama-server (shipped file)", "llama-server", "W1", "tok_s", 2.0, True),
    ("W1 cold tok/s >= 1.3x llama-server (converted file)", "llama-server-converted", "W1", "tok_s", 1.3, True),
    ("W1 warm tok/s >= 1.5x llama-server (shipped file)", "llama-server", "W1w", "tok_s", 1.5, True),
    ("W1 warm tok/s >= 1.0x llama-server (converted file)", "llama-server-converted", "W1w", "tok_s", 1.0, True),
    ("W2 tok/s >= 1.5x llama-server (shipped file)", "llama-server", "W2", "tok_s", 1.5, True),
    ("W2 tok/s >= 1.0x llama-server (converted file)", "llama-server-converted", "W2", "tok_s", 1.0, True),
    ("W3 TTFT p50 <= 0.7x llama-server (shipped file)", "llama-server", "W3", "ttft_p50", 0.7, False),
    ("W3 TTFT p50 <= 1.0x llama-server (converted file)", "llama-server-converted", "W3", "ttft_p50", 1.0, False),
    ("W3 ITL p50 <= 1.0x llama-server (shipped file)", "llama-server", "W3", "itl_p50", 1.0, False),
    ("W3 ITL p50 <= 1.05x llama-server (converted file)", "llama-server-converted", "W3", "itl_p50", 1.05, False),
    ("peak RSS <= 1.5x llama-server (shipped file)", "llama-server", PEAK, "rss", 1.5, False),
    ("peak RSS <= 1.5x llama-server (converted file)", "llama-server-converted", PEAK, "rss", 1.5, False),
    ("W1 cold tok/s >= 5x llama-cpp-python", "llama-cpp-python", "W1", "tok_s", 5.0, True),
]


def goals(ratios: Ratios) -> list[tuple[str, float | None, bool | None]]:
    out: list[tuple[str, float | None, bool | None]] = []
    for label, peer, key, metric, bound, at_least in GOALS:
        value = ratios.get(peer, {}).get(key, {}).get(metric)
        out.append((label, value, None if value is None else (value >= bound if at_least else value <= bound)))
    return out


def header_lines(workloads: list[Workload], pipeserve_options: list[str]) -> list[str]:
    lines = [
        f"model: {MODEL} Q4_1   cpus: {os.cpu_count()}   python: {platform.python_version()}   "
        f"llama-cpp-python: {importlib.metadata.version('llama-cpp-python')}   context: {CONTEXT}   "
        f"threads: {THREADS}   temperature: {TEMPERATURE}",
    ]
    if pipeserve_options:
        lines.append(f"pipeserve options: {', '.join(pipeserve_options)}")
    for w in workloads:
        sizes = w.prompt_tokens
        lines.append(
            f"{w.key} {w.name}: {len(w.prompts)} requests, {w.concurrency} concurrent, max_tokens {w.max_tokens}, "
            f"prompt text {min(sizes)}-{max(sizes)} tokens (+ chat template)"
        )
    return lines


def round_table(runs: list[RunResult], workloads: list[Workload]) -> list[str]:
    header = (
        f"{'workload':<16} {'server':<22} {'reqs':>5} {'tokens':>6} {'length':>6} {'wall s':>7} {'tok/s':>7}"
        f" {'req/s':>6} {'TTFT p50':>8} {'TTFT p95':>8} {'ITL p50':>7} {'ITL p95':>7} {'RSS MiB':>7}"
        f" {'srv CPU':>7} {'other':>5}"
    )
    lines = [header, "-" * len(header)]
    names = {w.key: f"{w.key} {w.name}" for w in workloads}
    for w in workloads:
        for r in (r for r in runs if r.workload == w.key):
            reqs = str(r.requests) if not r.errors else f"{r.requests}({r.errors}!)"
            tokens = str(r.tokens) if r.usage_reported else f"{r.tokens}*"
            lines.append(
                f"{names[r.workload]:<16} {r.server:<22} {reqs:>5} {tokens:>6} {r.finish_length:>6}"
                f" {r.seconds:>7.1f} {r.tok_s:>7.1f} {r.req_s:>6.2f} {ms(r.ttft_p50_s):>8} {ms(r.ttft_p95_s):>8}"
                f" {ms(r.itl_p50_s):>7} {ms(r.itl_p95_s):>7} {mib(r.peak_rss_bytes):>7}"
                f" {r.server_cpu_pct:>6.0f}% {r.other_cpu_pct:>4.0f}%"
            )
    return lines


def ratio_lines(ratios: Ratios, workloads: list[Workload], rounds: list[Ratios]) -> list[str]:
    """The ratio tables; with several rounds each cell is the median and each round's value follows it."""
    names = {w.key: f"{w.key} {w.name}" for w in workloads} | {PEAK: "peak (all)"}
    several = len(rounds) > 1
    lines: list[str] = []
    for peer in PEERS:
        if peer not in ratios:
            continue
        lines += ["", f"pipeserve / {peer}{' (median of the rounds)' if several else ''}:"]
        lines.append(f"  {'workload':<16} {'tok/s':>7} {'TTFT p50':>9} {'ITL p50':>8} {'RSS':>6}")
        for key, values in ratios[peer].items():
            cells = [fx(values.get(m)) for m in ("tok_s", "ttft_p50", "itl_p50", "rss")]
            line = f"  {names.get(key, key):<16} {cells[0]:>7} {cells[1]:>9} {cells[2]:>8} {cells[3]:>6}"
            metrics = [metric for _, p, k, metric, _, _ in GOALS if (p, k) == (peer, key)]
            if several and metrics:  # each round's values of the metrics that goals are set on
                each = [f"{m} " + " ".join(fx(t.get(peer, {}).get(key, {}).get(m)) for t in rounds) for m in metrics]
                line += f"   rounds: {'; '.join(each)}"
            lines.append(line)
    return lines


def report(
    runs: list[RunResult], workloads: list[Workload], failures: dict[str, str], pipeserve_options: list[str]
) -> str:
    rounds = sorted({r.round for r in runs}) or [0]
    per_round = round_ratios(runs) or [{}]
    lines = header_lines(workloads, pipeserve_options)
    for n in rounds:
        lines += ["", f"round {n + 1} of {len(rounds)}:"] if len(rounds) > 1 else [""]
        lines += round_table([r for r in runs if r.round == n], workloads)
    lines += [
        "",
        "tokens: sum of usage.completion_tokens (* = content chunks, the server sent no usage); length: requests",
        "that ended at max_tokens; TTFT, ITL in ms (ITL: gaps between consecutive content chunks, all requests);",
        "RSS: peak VmRSS of the server process and its children during the workload.  srv CPU, other: CPU time of",
        "the server, and of every process but the server and this client, in % of all CPUs over the wall time",
        "(other > a few % means something else ran beside the benchmark: its numbers are not trustworthy).",
    ]
    retried = [f"{r.workload} {r.server} {r.retries}" for r in runs if r.retries]
    if retried:
        lines.append(f"requests retried after a dropped idle connection: {', '.join(retried)}")
    noisy = [f"{r.workload} {r.server}" for r in runs if r.other_cpu_pct > 10]
    if noisy:
        lines.append(f"WARNING: other processes used > 10% of the CPUs during: {', '.join(noisy)}; rerun those.")
    for name, error in failures.items():
        lines.append(f"{name}: FAILED: {error.splitlines()[0] if error else ''}")
    ratios = median_ratios(per_round)
    lines += ratio_lines(ratios, workloads, per_round)
    several = len(per_round) > 1
    lines += ["", f"goals (pipeserve vs peer{', medians of the rounds' if several else ''}):"]
    verdicts = [goals(t) for t in per_round]
    judged = goals(ratios)
    for i, (label, value, passed) in enumerate(judged):
        verdict = "-" if passed is None else ("PASS" if passed else "MISS")
        line = f"  {label:<52} {fx(value):>7}  {verdict}"
        if several:
            line += "   rounds: " + " ".join("-" if v[i][2] is None else "+" if v[i][2] else "x" for v in verdicts)
        lines.append(line)
    met = sum(1 for _, _, passed in judged if passed)
    lines.append(f"  {met} of {len(GOALS)} goals met")
    return "\n".join(lines)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--servers",
        default=",".join(SERVERS),
        help=f"comma-separated servers to run, in this order (default: {','.join(SERVERS)})",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: W1/W2 16 requests each, W3 5 requests")
    parser.add_argument(
        "--workloads", default="W1,W1w,W2,W3", help="comma-separated workloads to run (default: W1,W1w,W2,W3)"
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=REPO / "bench" / ".cache",
        help="where llama-server is built (default bench/.cache)",
    )
    parser.add_argument("--llama-server", type=Path, default=None, help="use this llama-server binary, no build")
    parser.add_argument("--build-only", action="store_true", help="build llama-server into the cache and exit")
    parser.add_argument("--request-timeout", type=float, default=600.0, help="per-request timeout, s (default 600)")
    parser.add_argument("--time-cap", type=float, default=3600.0, help="cap on the whole run, s (default 3600)")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=600.0,
        help="before each workload, wait up to this many seconds until other processes use < 10%% of the CPUs "
        "(default 600; 0: don't wait)",
    )
    parser.add_argument(
        "--pipeserve-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an extra line for pipeserve's [[models]] table, in TOML (e.g. prefill_chunk=512); repeatable",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat the whole comparison this many times, servers restarted each round; ratios and goals are "
        "then the medians of the rounds' ratios (default 1)",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="SERVER=W1,...",
        help="run just these workloads on SERVER (e.g. llama-cpp-python=W1: its one goal is on W1); repeatable",
    )
    parser.add_argument("--log-dir", type=Path, default=None, help="keep the servers' logs here (default: temporary)")
    parser.add_argument("--json-out", type=Path, default=None, help="also write the results as JSON to this path")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # `timeout`/`kill`: unwind, so that the servers are stopped
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = [s for s in servers if s not in SERVERS]
    if unknown or not servers:
        parser.error(f"--servers: unknown {unknown}; choose from {', '.join(SERVERS)}")

    only: dict[str, set[str]] = {}
    for item in args.only:
        server, _, keys = item.partition("=")
        if server.strip() not in SERVERS or not keys.strip():
            parser.error(f"--only {item!r}: expected SERVER=W1[,W2...] with SERVER one of {', '.join(SERVERS)}")
        only[server.strip()] = {k.strip() for k in keys.split(",") if k.strip()}
    if args.rounds < 1:
        parser.error("--rounds: at least 1")

    began = time.monotonic()
    deadline = began + args.time_cap
    llama_server: Path | None = args.llama_server.resolve() if args.llama_server else None
    if llama_server is None and ({"llama-server", "llama-server-converted"} & set(servers) or args.build_only):
        llama_server = ensure_llama_server(args.cache_dir.resolve())
        print(f"llama-server: {llama_server}", flush=True)
    if args.build_only:
        return 0

    gguf = embedded_gguf_path()
    keys = {k.strip().upper() for k in args.workloads.split(",") if k.strip()}
    workloads = [w for w in build_workloads(Tokenizer(gguf), quick=args.quick) if w.key.upper() in keys]
    if not workloads:
        parser.error(f"--workloads: none of {sorted(keys)} is W1, W2 or W3")
    for w in workloads:
        print(f"{w.key} {w.name}: prompt text {min(w.prompt_tokens)}-{max(w.prompt_tokens)} tokens", flush=True)
    # The weight format pipeserve serves in, chosen (measured, converted) before any server starts, and kept
    # in the cache: its first start is then timed like any later one, and llama-server gets the same file.
    weights_dir = args.cache_dir.resolve() / "weights"
    choice = choose(gguf, weights_dir, threads=THREADS)
    os.environ[WEIGHTS_ENV] = str(weights_dir)
    solo = "" if choice.solo is None else f"; a lone sequence decodes in {choice.solo.name} (solo lane)"
    print(f"weights: {choice.name}{' (repacked)' if choice.repack else ''}: {choice.path}{solo}", flush=True)
    specs = server_specs(
        gguf, llama_server, args.pipeserve_option, converted=choice.path, converted_repack=choice.repack
    )
    runs: list[RunResult] = []
    failures: dict[str, str] = {}
    timings: dict[str, float] = {}
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="serving-logs-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    print(f"server logs in {log_dir}", flush=True)
    every = {w.key for w in workloads}
    for round_ in range(args.rounds):
        if time.monotonic() > deadline:
            failures[f"round {round_ + 1}"] = "time cap reached before it started"
            break
        if args.rounds > 1:
            print(f"round {round_ + 1} of {args.rounds}", flush=True)
        started = time.monotonic()
        with ExitStack() as stack:  # every server of the round up at once, all stopped at its end
            up: list[tuple[str, Running, set[str]]] = []
            for name in servers:
                try:
                    running = stack.enter_context(running_server(specs[name], log_dir, round_=round_))
                except RuntimeError as exc:
                    print(f"{name}: {exc}", flush=True)
                    failures[name] = str(exc)
                    continue
                timings[f"{name} startup{f' r{round_ + 1}' if args.rounds > 1 else ''}"] = running.startup_s
                up.append((name, running, only.get(name, every)))
            runs += asyncio.run(
                benchmark_round(
                    up,
                    workloads,
                    failures,
                    round_=round_,
                    timeout=args.request_timeout,
                    deadline=deadline,
                    quiet_wait=args.quiet_wait,
                )
            )
        timings[f"round {round_ + 1}"] = time.monotonic() - started
    timings["run"] = time.monotonic() - began

    chosen = f"weights chosen: {choice.name}" + ("" if choice.solo is None else f", solo lane: {choice.solo.name}")
    text = report(runs, workloads, failures, [*args.pipeserve_option, chosen])
    print()
    print(text)
    print()
    print("timings: " + ", ".join(f"{key} {value:.0f} s" for key, value in timings.items()))
    if args.json_out is not None:
        per_round = round_ratios(runs)
        ratios = median_ratios(per_round)
        payload = {
            "model": MODEL,
            "cpu_count": os.cpu_count(),
            "llama_cpp_python": importlib.metadata.version("llama-cpp-python"),
            "context": CONTEXT,
            "threads": THREADS,
            "temperature": TEMPERATURE,
            "quick": args.quick,
            "pipeserve_options": args.pipeserve_option,
            "workloads": [
                {k: v for k, v in asdict(w).items() if k != "prompts"} | {"requests": len(w.prompts)} for w in workloads
            ],
            "runs": [asdict(r) | {"results": [asdict(x) | {"gaps_s": None} for x in r.results]} for r in runs],
            "rounds": args.rounds,
            "ratios_per_round": per_round,
            "ratios": ratios,
            "goals": [{"goal": g, "value": v, "pass": p} for g, v, p in goals(ratios)],
            "failures": failures,
            "timings_s": timings,
        }
        args.json_out.write_text(json.dumps(payload, indent=2))
        print(f"wrote {args.json_out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
