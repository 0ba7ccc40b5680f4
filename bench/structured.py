"""Benchmark: decoding speed of JSON-schema-constrained output against unconstrained output.

What it measures
----------------
Constrained output (`response_format={"type": "json_schema", ...}`) costs the server extra work per
generated token: llguidance computes a token mask that is applied to the logits before sampling, and a
"closing reserve" (the tokens still needed to close the JSON validly) is recomputed before each token is
taken. This script sends the *same* prompts, with the same `max_tokens`, temperature and per-prompt seed,
once without and once with a JSON schema, and compares completion tokens per second.

Two scenarios are run, each for both modes:

* ``single``     -- one client, requests one after another;
* ``concurrent`` -- ``--concurrency`` clients (default 8) sending requests at the same time.

For each scenario and mode it reports the number of requests, the total completion tokens
(``usage.completion_tokens``), the wall time and the aggregate completion tokens/s; then, from streaming,
the content chunks ("steps", one per sampled token), steps/s, the mean time to the first content chunk and
the mean and median per-request decode speed (content chunks after the first divided by the time from the
first to the last content chunk). Then, per scenario, the ratio constrained/unconstrained aggregate tok/s
against the goal of 0.80, plus the same ratio for steps/s and for the median per-request decode speed.

Why steps as well as tokens: when a constrained answer reaches ``max_tokens``, the server emits the text
that closes the JSON validly in one piece and counts it as that many completion tokens, although they were
never sampled; this inflates constrained tok/s. Steps/s counts only what was sampled. Note also that the
machine's other load (e.g. a test run beside the benchmark) can stall llama.cpp's threads for seconds:
the median per-request decode speed is the figure least sensitive to that.

It starts its own server (``python -m pipeserve serve``) on a free loopback port with a temporary data
directory and warms it up, not counted: 2 requests of each mode (one per schema; the first constrained
request builds the llguidance tokenizer and each schema's grammar is compiled once), then every prompt once
with max_tokens=1 so that both modes see the same prefix cache, and ``--concurrency`` connections opened.
It always stops the server at the end, also on errors and Ctrl-C.

Run it from the repository root with the project's virtualenv active::

    python bench/structured.py
    python bench/structured.py --requests 24 --concurrency 8 --max-tokens 128 --json-out /tmp/structured.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai

MODEL = "SmolLM2-135M-Instruct"
GOAL = 0.80
REQUEST_TIMEOUT_S = 180.0
STARTUP_TIMEOUT_S = 120.0
TEMPERATURE = 0.7
BASE_SEED = 1234

# A single object with a nested object, an array of strings, an enum, an integer and a number.
THING_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "category": {"type": "string", "enum": ["animal", "plant", "place", "object", "food", "vehicle"]},
        "year": {"type": "integer"},
        "rating": {"type": "number"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "details": {
            "type": "object",
            "properties": {
                "origin": {"type": "string"},
                "size": {"type": "string", "enum": ["small", "medium", "large"]},
                "weight_kg": {"type": "number"},
            },
            "required": ["origin", "size", "weight_kg"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "category", "year", "rating", "tags", "details"],
    "additionalProperties": False,
}

# A wider schema: a list of 5 to 8 records.
LIST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "items": {
            "type": "array",
            "minItems": 5,
            "maxItems": 8,
            "items": {
                "type": "object",
                "properties": {
                    "id": {"type": "integer"},
                    "name": {"type": "string"},
                    "kind": {"type": "string", "enum": ["a", "b", "c"]},
                    "score": {"type": "number"},
                },
                "required": ["id", "name", "kind", "score"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["items"],
    "additionalProperties": False,
}

# (prompt, schema): the same list is used, in the same order, for both modes.
PROMPTS: list[tuple[str, dict[str, Any]]] = [
    ("Describe a red fox as JSON with its name, category, year, rating, tags and details.", THING_SCHEMA),
    ("Describe the Eiffel Tower as a JSON object: name, category, year, rating, tags and details.", THING_SCHEMA),
    ("Give a JSON description of a bicycle, with tags and details about its origin and size.", THING_SCHEMA),
    ("Describe a mango as JSON: name, category, year, rating, a list of tags, and details.", THING_SCHEMA),
    ("List six famous rivers as JSON records with an id, a name, a kind and a score.", LIST_SCHEMA),
    ("Describe an oak tree in JSON, including tags and details (origin, size, weight in kg).", THING_SCHEMA),
    ("Describe a steam locomotive as a JSON object with tags and details.", THING_SCHEMA),
    ("List five programming languages as JSON records with an id, a name, a kind and a score.", LIST_SCHEMA),
    ("Describe a cup of coffee in JSON: name, category, year, rating, tags and details.", THING_SCHEMA),
    ("Describe the city of Kyoto as JSON with tags and details about it.", THING_SCHEMA),
    ("List seven fruits as JSON records, each with an id, a name, a kind and a score.", LIST_SCHEMA),
    ("Describe an elephant as a JSON object with name, category, year, rating, tags and details.", THING_SCHEMA),
]

SYSTEM = "You are a helpful assistant. Answer with JSON only."
WARMUP_PROMPTS = (0, 4)  # one per schema, so that both grammars are compiled before anything is measured


@dataclass
class RequestResult:
    prompt_index: int
    completion_tokens: int
    finish_reason: str | None
    seconds: float
    ttft_s: float | None  # time to the first content chunk
    content_chunks: int  # one per sampled token that produced text; the closing text comes as one chunk
    decode_tok_s: float | None  # (content chunks - 1) / (last content chunk - first content chunk)
    valid_json: bool | None  # constrained mode: does the content parse and match the schema
    error: str | None = None


@dataclass
class RunResult:
    scenario: str
    mode: str
    concurrency: int
    requests: int
    errors: int
    tokens: int
    seconds: float
    tok_s: float
    steps: int  # content chunks: roughly the tokens actually sampled (closing reserve text not counted)
    steps_s: float
    mean_decode_tok_s: float | None
    median_decode_tok_s: float | None  # robust to a request stalled by other load on the machine
    mean_ttft_s: float | None
    mean_tokens_per_request: float
    finish_length: int
    valid_json: int | None
    results: list[RequestResult] = field(default_factory=list)


# --- the server ------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("PIPESERVE_", "OPENAI_"))}


@contextmanager
def running_server(port: int) -> Iterator[str]:
    """Start `python -m pipeserve serve` on 127.0.0.1:port, wait for /health, yield its URL, always stop it."""
    with tempfile.TemporaryDirectory(prefix="pipeserve-bench-") as tmp:
        log_path = Path(tmp) / "server.log"
        args = [sys.executable, "-m", "pipeserve", "serve", "--port", str(port), "--data-dir", str(Path(tmp) / "data")]
        url = f"http://127.0.0.1:{port}"
        with log_path.open("wb") as log:
            process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=clean_env())
        try:
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"server exited with {process.returncode}:\n{log_path.read_text()}")
                try:
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server did not start in {STARTUP_TIMEOUT_S:.0f} s:\n{log_path.read_text()}")
                time.sleep(0.2)
            print(f"server pid {process.pid} on {url}", flush=True)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# --- requests --------------------------------------------------------------------------------------------
def request_kwargs(index: int, *, constrained: bool, max_tokens: int) -> dict[str, Any]:
    prompt, schema = PROMPTS[index % len(PROMPTS)]
    kwargs: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": TEMPERATURE,
        "seed": BASE_SEED + index % len(PROMPTS),
    }
    if constrained:
        kwargs["response_format"] = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    return kwargs


def check_json(text: str, schema: dict[str, Any]) -> bool:
    try:
        jsonschema.validate(json.loads(text), schema)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


async def one_request(client: openai.AsyncOpenAI, index: int, *, constrained: bool, max_tokens: int) -> RequestResult:
    """One streamed request; usage comes from the final chunk (`stream_options.include_usage`)."""
    kwargs = request_kwargs(index, constrained=constrained, max_tokens=max_tokens)
    start = time.perf_counter()
    first: float | None = None
    last: float | None = None
    chunks = 0
    parts: list[str] = []
    usage_tokens: int | None = None
    finish: str | None = None
    try:
        stream = await client.chat.completions.create(
            **kwargs, stream=True, stream_options={"include_usage": True}, timeout=REQUEST_TIMEOUT_S
        )
        async for chunk in stream:
            now = time.perf_counter()
            if chunk.usage is not None:
                usage_tokens = chunk.usage.completion_tokens
            for choice in chunk.choices:
                if choice.delta.content:
                    if first is None:
                        first = now
                    last = now
                    chunks += 1
                    parts.append(choice.delta.content)
                if choice.finish_reason is not None:
                    finish = choice.finish_reason
    except (openai.OpenAIError, httpx.HTTPError, TimeoutError) as exc:
        return RequestResult(index, 0, None, time.perf_counter() - start, None, 0, None, None, repr(exc))
    seconds = time.perf_counter() - start
    tokens = usage_tokens or 0
    decode: float | None = None
    if first is not None and last is not None and last > first and chunks > 1:
        decode = (chunks - 1) / (last - first)
    valid = check_json("".join(parts), PROMPTS[index % len(PROMPTS)][1]) if constrained else None
    error = None if usage_tokens is not None else "no usage in the stream"
    ttft = None if first is None else first - start
    return RequestResult(index, tokens, finish, seconds, ttft, chunks, decode, valid, error)


async def run_batch(
    client: openai.AsyncOpenAI, indices: list[int], *, constrained: bool, concurrency: int, max_tokens: int
) -> tuple[list[RequestResult], float]:
    """Send the requests with `concurrency` workers pulling from one queue; return results and wall time."""
    todo: asyncio.Queue[int] = asyncio.Queue()
    for index in indices:
        todo.put_nowait(index)
    results: list[RequestResult] = []

    async def worker() -> None:
        while True:
            try:
                index = todo.get_nowait()
            except asyncio.QueueEmpty:
                return
            results.append(await one_request(client, index, constrained=constrained, max_tokens=max_tokens))

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return sorted(results, key=lambda r: r.prompt_index), time.perf_counter() - start


def summarize(scenario: str, mode: str, concurrency: int, results: list[RequestResult], seconds: float) -> RunResult:
    ok = [r for r in results if r.error is None]
    tokens = sum(r.completion_tokens for r in ok)
    steps = sum(r.content_chunks for r in ok)
    decodes = [r.decode_tok_s for r in ok if r.decode_tok_s is not None]
    ttfts = [r.ttft_s for r in ok if r.ttft_s is not None]
    valid = [r.valid_json for r in ok if r.valid_json is not None]
    return RunResult(
        scenario=scenario,
        mode=mode,
        concurrency=concurrency,
        requests=len(results),
        errors=len(results) - len(ok),
        tokens=tokens,
        seconds=seconds,
        tok_s=tokens / seconds if seconds > 0 else 0.0,
        steps=steps,
        steps_s=steps / seconds if seconds > 0 else 0.0,
        mean_decode_tok_s=statistics.fmean(decodes) if decodes else None,
        median_decode_tok_s=statistics.median(decodes) if decodes else None,
        mean_ttft_s=statistics.fmean(ttfts) if ttfts else None,
        mean_tokens_per_request=tokens / len(ok) if ok else 0.0,
        finish_length=sum(1 for r in ok if r.finish_reason == "length"),
        valid_json=sum(valid) if valid else (None if mode == "unconstrained" else 0),
        results=results,
    )


async def benchmark(url: str, args: argparse.Namespace) -> list[RunResult]:
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="bench", max_retries=0, timeout=REQUEST_TIMEOUT_S)
    try:
        models = await client.models.list()
        served = [m.id for m in models.data]
        if MODEL not in served:
            raise RuntimeError(f"the server does not serve {MODEL}; it serves {served}")
        print("warm-up: 2 requests of each mode, then a 1-token request for every prompt ...", flush=True)
        for constrained in (False, True):
            for index in WARMUP_PROMPTS:
                result = await one_request(client, index, constrained=constrained, max_tokens=args.max_tokens)
                if result.error is not None:
                    raise RuntimeError(f"warm-up request failed: {result.error}")
        # Put every prompt into the prefix cache so that neither mode is favoured by running second. One at a
        # time: the cached KV entries then don't depend on how prompts happened to be batched, and with the
        # per-prompt seeds the single-stream outputs are the same from run to run.
        for index in range(len(PROMPTS)):
            result = await one_request(client, index, constrained=False, max_tokens=1)
            if result.error is not None:
                raise RuntimeError(f"warm-up request failed: {result.error}")
        # Open the client's `concurrency` connections so that the first concurrent run doesn't pay for them.
        await asyncio.gather(*(client.models.list() for _ in range(args.concurrency)))

        runs: list[RunResult] = []
        indices = list(range(args.requests))
        for scenario, concurrency in (("single", 1), ("concurrent", args.concurrency)):
            for mode in ("unconstrained", "constrained"):
                print(f"running {scenario} x{concurrency} {mode}: {len(indices)} requests ...", flush=True)
                results, seconds = await run_batch(
                    client,
                    indices,
                    constrained=mode == "constrained",
                    concurrency=concurrency,
                    max_tokens=args.max_tokens,
                )
                run = summarize(scenario, mode, concurrency, results, seconds)
                for r in results:
                    if r.error is not None:
                        print(f"  request {r.prompt_index} failed: {r.error}", flush=True)
                runs.append(run)
        return runs
    finally:
        await client.close()


# --- the report ------------------------------------------------------------------------------------------
def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def ratios(runs: list[RunResult]) -> dict[str, dict[str, float | None]]:
    out: dict[str, dict[str, float | None]] = {}
    for scenario in dict.fromkeys(r.scenario for r in runs):
        by_mode = {r.mode: r for r in runs if r.scenario == scenario}
        free, json_ = by_mode.get("unconstrained"), by_mode.get("constrained")
        if free is None or json_ is None:
            continue
        agg = json_.tok_s / free.tok_s if free.tok_s > 0 else None
        steps = json_.steps_s / free.steps_s if free.steps_s > 0 else None
        dec = (
            json_.median_decode_tok_s / free.median_decode_tok_s
            if json_.median_decode_tok_s is not None and free.median_decode_tok_s
            else None
        )
        out[scenario] = {"aggregate": agg, "steps": steps, "per_request_decode": dec}
    return out


def report(runs: list[RunResult], args: argparse.Namespace) -> str:
    lines = [
        f"model: {MODEL}   cpus: {os.cpu_count()}   python: {platform.python_version()}   "
        f"max_tokens: {args.max_tokens}   temperature: {TEMPERATURE}",
        "",
    ]
    header = (
        f"{'scenario':<14} {'mode':<14} {'requests':>8} {'tokens':>7} {'seconds':>8} {'tok/s':>8}"
        f" | {'steps':>6} {'steps/s':>8} {'tok/req':>7} {'length':>6} {'valid':>5} {'ttft s':>7}"
        f" {'dec mean':>8} {'dec med':>7}"
    )
    lines += [header, "-" * len(header)]
    for r in runs:
        scenario = f"{r.scenario} x{r.concurrency}"
        valid = "-" if r.valid_json is None else str(r.valid_json)
        requests = str(r.requests) if not r.errors else f"{r.requests}({r.errors}!)"
        lines.append(
            f"{scenario:<14} {r.mode:<14} {requests:>8} {r.tokens:>7} {r.seconds:>8.2f} {r.tok_s:>8.1f}"
            f" | {r.steps:>6} {r.steps_s:>8.1f} {r.mean_tokens_per_request:>7.1f} {r.finish_length:>6} {valid:>5}"
            f" {fmt(r.mean_ttft_s, '.3f'):>7}"
            f" {fmt(r.mean_decode_tok_s, '.1f'):>8} {fmt(r.median_decode_tok_s, '.1f'):>7}"
        )
    lines += [
        "",
        "tokens, tok/s: usage.completion_tokens and their sum / wall time (the goal's measure).  steps, steps/s:",
        "content chunks, one per sampled token; a constrained answer cut at max_tokens ends with its closing text in",
        "one chunk counted as several completion tokens, so steps/s is the fairer speed.  tok/req: mean completion",
        "tokens.  length: finish_reason=length.  valid: constrained outputs that parse and match the schema.",
        "ttft: mean time to first content chunk.  dec mean, dec med: mean and median over requests of the",
        "per-request decode speed (chunks - 1) / (last chunk - first chunk), in tokens/s.",
        "",
    ]
    for scenario, ratio in ratios(runs).items():
        agg = ratio["aggregate"]
        verdict = "-" if agg is None else ("PASS" if agg >= GOAL else "BELOW")
        lines.append(
            f"ratio constrained/unconstrained tok/s, {scenario:<10}: {fmt(agg, '.2f'):>5}  (goal ≥ {GOAL:.2f}) "
            f"{verdict:<5}   steps/s ratio: {fmt(ratio['steps'], '.2f')}   "
            f"median per-request decode ratio: {fmt(ratio['per_request_decode'], '.2f')}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=12, help="requests per mode per scenario (default 12)")
    parser.add_argument("--concurrency", type=int, default=8, help="clients in the concurrent scenario (default 8)")
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=128,
        help="max_tokens of every request (default 128; the list schema's shortest valid output is 47 tokens)",
    )
    parser.add_argument("--port", type=int, default=None, help="server port (default: a free one)")
    parser.add_argument("--json-out", type=Path, default=None, help="also write the results as JSON to this path")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.concurrency < 1 or args.max_tokens < 1:
        parser.error("--requests, --concurrency and --max-tokens must be at least 1")

    port = args.port if args.port is not None else free_port()
    with running_server(port) as url:
        runs = asyncio.run(benchmark(url, args))
    text = report(runs, args)
    print()
    print(text)
    if args.json_out is not None:
        payload = {
            "model": MODEL,
            "cpu_count": os.cpu_count(),
            "max_tokens": args.max_tokens,
            "temperature": TEMPERATURE,
            "goal": GOAL,
            "ratios": ratios(runs),
            "runs": [asdict(r) for r in runs],
        }
        args.json_out.write_text(json.dumps(payload, indent=2))
        print(f"\nwrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
