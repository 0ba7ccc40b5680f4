"""The text-to-speech engine interface, and the thread every engine runs on."""

from __future__ import annotations

import asyncio
import importlib
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import numpy.typing as npt

from pipeserve.audio.encode import encode, resample

# What every engine's audio becomes: OpenAI's pcm16 is 24 kHz, 16-bit, mono, little-endian.
OUTPUT_RATE = 24_000
# Markup a chat model writes that a voice should not read out ("asterisk", "hash").
_MARKUP = re.compile(r"[*_#`>|~]+")

Samples = npt.NDArray[np.int16]


class SpeechEngine(ABC):
    """Turns text into speech. Implementations live in one module each under `pipeserve.audio`; their
    `synthesize` is only ever called from one thread (the `Speaker`'s), so engines with global state (eSpeak NG)
    need no locks."""

    name: str = ""

    @property
    @abstractmethod
    def sample_rate(self) -> int:
        """The rate of the samples `synthesize` returns."""

    @property
    @abstractmethod
    def voices(self) -> Mapping[str, str]:
        """The voices clients may ask for (OpenAI's names), each with what it is locally, for people."""

    @abstractmethod
    def synthesize(self, text: str, voice: str) -> Samples:
        """Mono 16-bit samples of `text` spoken by `voice` (one of `voices`)."""

    def close(self) -> None:  # noqa: B027 - engines without resources have nothing to free
        """Free the engine's resources."""


def load_engine(name: str) -> SpeechEngine:
    """The engine `pipeserve.audio.<name>` defines (its module's `ENGINE` class)."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(f"invalid speech engine name {name!r}")
    try:
        module = importlib.import_module(f"pipeserve.audio.{name}")
    except ModuleNotFoundError as exc:
        raise ValueError(f"unknown speech engine {name!r}: there is no module pipeserve.audio.{name}") from exc
    engine: SpeechEngine = module.ENGINE()
    return engine


class Speaker:
    """One engine on a thread of its own: speech at `OUTPUT_RATE`, encoded, without blocking the event loop."""

    def __init__(self, engine: SpeechEngine) -> None:
        self.engine = engine
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"tts-{engine.name}")

    @property
    def voices(self) -> Mapping[str, str]:
        return self.engine.voices

    def speak_now(self, text: str, voice: str) -> Samples:
        """Speech of `text` at `OUTPUT_RATE`; on the engine's thread only (see `speak`)."""
        spoken = _MARKUP.sub(" ", text)
        if not spoken.strip():
            return np.zeros(0, dtype=np.int16)
        return resample(self.engine.synthesize(spoken, voice), self.engine.sample_rate, OUTPUT_RATE)

    async def speak(self, text: str, voice: str) -> Samples:
        return await asyncio.get_running_loop().run_in_executor(self._thread, self.speak_now, text, voice)

    async def speak_encoded(self, text: str, voice: str, fmt: str) -> tuple[bytes, float]:
        """`text` spoken and encoded in `fmt`, with the speech's duration in seconds."""

        def work() -> tuple[bytes, float]:
            samples = self.speak_now(text, voice)
            return encode(samples, OUTPUT_RATE, fmt), len(samples) / OUTPUT_RATE

        return await asyncio.get_running_loop().run_in_executor(self._thread, work)

    def close(self) -> None:
        self._thread.shutdown(wait=True)
        self.engine.close()
