"""Benchmark: what content filtering adds to a request (goal: ≤ 5 ms p50 when enabled).

1. In process, the filter's own work per request, without the model: classifying the prompt (`prepare`), then
   a plain answer of ~150 tokens (`complete`), or the same answer as a stream of one chunk per token through
   the staged stream (parsing, holding back to sentence ends, classifying, sending again).
2. End to end (skip with `--no-server`): one pipeserve server (started here, embedded model) whose
   `[[content_filters]]` table covers an alias of the model only, so that the same model answers filtered
   (the alias) and unfiltered (its id) requests, one at a time, the same request in both modes in turn; the
   median of the pairs' differences is what filtering adds, machine noise included.

    python bench/moderation.py                  # both
    python bench/moderation.py --requests 100   # more end-to-end requests per mode
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.support import pipeserve  # noqa: E402
from pipeserve.moderation import load_classifier  # noqa: E402
from pipeserve.moderation.filter import ContentFilterStage  # noqa: E402
from pipeserve.moderation.policy import PolicyBook  # noqa: E402
from pipeserve.params import ChatMessage, ChatParams  # noqa: E402
from pipeserve.protocol import chat_completions as wire  # noqa: E402
from pipeserve.service.chat import SSE_DONE, EventStream, sse  # noqa: E402
from pipeserve.service.stages import StagedRequest  # noqa: E402
from pipeserve.settings import ContentFilterRule  # noqa: E402

MODEL = "SmolLM2-135M-Instruct"
ANSWER = (
    "The sea is vast and restless. Waves roll in from the horizon and break on the shore, leaving foam on the "
    "sand. Gulls call overhead while fishing boats return to the harbour with the evening tide. Sailors have "
    "long told stories of storms and calm days alike, of distant islands and of the creatures of the deep. "
    "Today people still come to the coast to walk, to swim, and to watch the light change on the water."
)
PROMPTS = [
    "Describe the sea in a few sentences.",
    "Can you explain how tides work and why there are two high tides a day in most places?",
    "Write a short poem about a lighthouse keeper who waits for a ship that never comes back to the harbour.",
]


def percentiles(values: list[float]) -> str:
    values = sorted(values)
    pick = lambda q: values[min(len(values) - 1, int(q * len(values)))]  # noqa: E731
    return f"p50 {pick(0.5) * 1000:.3f} ms  p95 {pick(0.95) * 1000:.3f} ms  p99 {pick(0.99) * 1000:.3f} ms"


class _Served:
    """What `ContentFilterStage.prepare` reads of the served model."""

    class config:
        id = MODEL
        aliases: list[str] = []


def completion() -> wire.ChatCompletion:
    usage = wire.Usage(
        prompt_tokens=20,
        completion_tokens=150,
        total_tokens=170,
        prompt_tokens_details=wire.PromptTokensDetails(),
        completion_tokens_details=wire.CompletionTokensDetails(),
        prompt_cache_hit_tokens=0,
        prompt_cache_miss_tokens=20,
    )
    message = wire.ResponseMessage(content=ANSWER)
    return wire.ChatCompletion(
        id="chatcmpl-x",
        created=1,
        model=MODEL,
        choices=[wire.Choice(index=0, message=message, finish_reason="stop")],
        usage=usage,
    )


def chunks() -> list[bytes]:
    words = ANSWER.split(" ")
    out = []
    base = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1, "model": MODEL}
    out.append(
        sse(
            wire.ChatCompletionChunk.model_validate(
                {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
            )
            .model_dump_json()
            .encode()
        )
    )
    for i, word in enumerate(words):
        piece = word if i == 0 else " " + word
        chunk = {**base, "choices": [{"index": 0, "delta": {"content": piece}}]}
        out.append(sse(wire.ChatCompletionChunk.model_validate(chunk).model_dump_json().encode()))
    last = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    out.append(sse(wire.ChatCompletionChunk.model_validate(last).model_dump_json().encode()))
    out.append(SSE_DONE)
    return out


async def in_process(iterations: int) -> None:
    started = time.perf_counter()
    classifier = load_classifier("linear")
    print(f"classifier loaded in {time.perf_counter() - started:.2f} s (once, at start-up)")
    stage = ContentFilterStage(classifier, PolicyBook([ContentFilterRule()]))
    raw = chunks()

    async def source() -> AsyncGenerator[bytes, None]:
        for chunk in raw:
            yield chunk

    plain, streamed, prompt_only = [], [], []
    for i in range(iterations):
        params = ChatParams(model=MODEL, messages=(ChatMessage("user", PROMPTS[i % len(PROMPTS)]),))
        t0 = time.perf_counter()
        _, run = stage.prepare("default", _Served(), params)  # type: ignore[arg-type]
        t1 = time.perf_counter()
        assert run is not None
        await StagedRequest([run]).complete(completion())
        t2 = time.perf_counter()
        _, run = stage.prepare("default", _Served(), params)  # type: ignore[arg-type]
        assert run is not None
        async for _ in StagedRequest([run]).stream(EventStream(source())):
            pass
        t3 = time.perf_counter()
        prompt_only.append(t1 - t0)
        plain.append(t2 - t0)
        streamed.append(t3 - t2 + (t1 - t0))
    print(f"prompt classified ({len(PROMPTS)} prompts, 7-20 words): {percentiles(prompt_only)}")
    print(f"plain answer, prompt + answer ({len(ANSWER.split())} words):  {percentiles(plain)}")
    print(f"stream of {len(raw) - 1} chunks, prompt + every chunk:   {percentiles(streamed)}")


def end_to_end(requests: int, max_tokens: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "pipeserve.toml"
        config.write_text(
            f'[[models]]\nid = "{MODEL}"\naliases = ["filtered"]\n\n[[content_filters]]\nmodel = "filtered"\n'
        )
        with pipeserve(Path(tmp), config=config) as url:
            latencies: dict[str, list[float]] = {"unfiltered": [], "filtered": []}
            with httpx.Client(timeout=120) as client:
                for i in range(2 * requests):
                    # Pairs of one request of each mode, the same request, in alternating order.
                    mode = ("unfiltered", "filtered", "filtered", "unfiltered")[i % 4]
                    body: dict[str, Any] = {
                        "model": MODEL if mode == "unfiltered" else "filtered",
                        "messages": [{"role": "user", "content": PROMPTS[(i // 2) % len(PROMPTS)]}],
                        "max_tokens": max_tokens,
                        "temperature": 0,
                        "seed": i // 2,
                        "store": False,
                    }
                    t0 = time.perf_counter()
                    response = client.post(f"{url}/v1/chat/completions", json=body)
                    latencies[mode].append(time.perf_counter() - t0)
                    response.raise_for_status()
            for mode, values in latencies.items():
                print(f"end to end, {mode:10s} ({len(values)} requests, {max_tokens} tokens): {percentiles(values)}")
            pairs = zip(latencies["filtered"], latencies["unfiltered"], strict=True)
            added = statistics.median(f - u for f, u in pairs)
            print(f"added by filtering, end to end (median of paired differences): {added * 1000:.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=500, help="in-process repetitions")
    parser.add_argument("--requests", type=int, default=60, help="end-to-end requests per mode")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--no-server", action="store_true", help="only the in-process measurement")
    args = parser.parse_args()
    asyncio.run(in_process(args.iterations))
    if not args.no_server:
        end_to_end(args.requests, args.max_tokens)


if __name__ == "__main__":
    main()
