"""Output formats of spoken answers: wav and pcm16 always (the standard library writes them); mp3, flac and opus
through libsndfile (the `soundfile` wheel bundles it with LAME, libFLAC and libopus) when it can write them."""

from __future__ import annotations

import functools
import io
import wave
from typing import Any

import numpy as np
import numpy.typing as npt

ALWAYS = ("wav", "pcm16")
# OpenAI's format names → libsndfile's container and codec.
_SNDFILE = {"mp3": ("MP3", "MPEG_LAYER_III"), "flac": ("FLAC", "PCM_16"), "opus": ("OGG", "OPUS")}
# Formats OpenAI defines that no encoder here writes: a request for one gets a 400 naming those that work.
KNOWN = ("wav", "mp3", "flac", "opus", "pcm16", "aac")


def _soundfile() -> Any | None:
    try:
        import soundfile
    except (ImportError, OSError):  # the package, or its bundled library, is missing
        return None
    return soundfile


@functools.cache
def supported_formats() -> tuple[str, ...]:
    """The formats this install can write, in OpenAI's order."""
    soundfile = _soundfile()
    extra: list[str] = []
    if soundfile is not None:
        formats = soundfile.available_formats()
        for name, (container, codec) in _SNDFILE.items():
            if container in formats and codec in soundfile.available_subtypes(container):
                extra.append(name)
    return tuple(f for f in KNOWN if f in ALWAYS or f in extra)


def encode(samples: npt.NDArray[np.int16], rate: int, fmt: str) -> bytes:
    """Mono 16-bit `samples` at `rate` in `fmt` (one of `supported_formats()`)."""
    if fmt == "pcm16":
        return samples.astype("<i2", copy=False).tobytes()
    if fmt == "wav":
        out = io.BytesIO()
        with wave.open(out, "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(rate)
            wav.writeframes(samples.astype("<i2", copy=False).tobytes())
        return out.getvalue()
    soundfile = _soundfile()
    if soundfile is None or fmt not in _SNDFILE:
        raise ValueError(f"no encoder for {fmt!r}")
    container, codec = _SNDFILE[fmt]
    out = io.BytesIO()
    soundfile.write(out, samples, rate, subtype=codec, format=container)
    return out.getvalue()


def resample(samples: npt.NDArray[np.int16], rate: int, target: int) -> npt.NDArray[np.int16]:
    """`samples` at `target` Hz: linear interpolation, enough for speech between nearby rates (22.05 → 24 kHz)."""
    if rate == target or len(samples) == 0:
        return samples
    count = round(len(samples) * target / rate)
    positions = np.arange(count, dtype=np.float64) * (rate / target)
    out = np.interp(positions, np.arange(len(samples), dtype=np.float64), samples.astype(np.float64))
    return np.clip(np.rint(out), -32768, 32767).astype(np.int16)
