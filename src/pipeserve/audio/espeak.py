"""The local speech engine: eSpeak NG, the library and voice data the `espeakng-loader` wheel ships, called
through ctypes. A formant synthesiser: robotic next to a neural voice, but ~1000x faster than real time on one
core, small (10 MB), and with enough voice variants that each of OpenAI's voices is a distinct voice here.
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from pipeserve.audio.engine import Samples, SpeechEngine

_AUDIO_OUTPUT_SYNCHRONOUS = 2  # samples go to the callback, on the calling thread
_INITIALIZE_DONT_EXIT = 0x8000  # report errors rather than exit the process
_CHARS_UTF8 = 1
_RATE, _PITCH, _RANGE = 1, 3, 4  # espeak_PARAMETER
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


@dataclass(frozen=True, slots=True)
class Voice:
    """An eSpeak NG voice: a language (accent) with a voice variant, speed in words per minute, base pitch and
    pitch range (0-100, 50 being the variant's own)."""

    name: str
    rate: int
    pitch: int
    range: int
    description: str


# OpenAI's voices, each a distinct variant and accent (marin and cedar are OpenAI's newest).
VOICES: dict[str, Voice] = {
    "alloy": Voice("en-us+f4", 170, 35, 50, "US English, female variant 4, low"),
    "ash": Voice("en-us+m3", 165, 30, 45, "US English, male variant 3, low"),
    "ballad": Voice("en-gb-x-rp+m2", 150, 15, 60, "British (RP) English, male variant 2, deep and slow"),
    "coral": Voice("en-us+f3", 175, 60, 55, "US English, female variant 3"),
    "echo": Voice("en-us+m1", 170, 55, 50, "US English, male variant 1"),
    "sage": Voice("en-gb-x-rp+f2", 160, 45, 45, "British (RP) English, female variant 2"),
    "shimmer": Voice("en-us+f5", 180, 85, 60, "US English, female variant 5, high"),
    "verse": Voice("en-gb-scotland+m4", 180, 80, 65, "Scottish English, male variant 4, high"),
    "marin": Voice("en-029+f1", 165, 70, 50, "Caribbean English, female variant 1"),
    "cedar": Voice("en-us-nyc+m6", 155, 45, 50, "New York English, male variant 6, slow"),
}


class EspeakEngine(SpeechEngine):
    name = "espeak"

    def __init__(self) -> None:
        import espeakng_loader

        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        data = espeakng_loader.get_data_path().encode()
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data, _INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise RuntimeError(f"eSpeak NG failed to start (data in {data.decode()})")
        self._lib = lib
        self._rate = int(rate)
        self._chunks: list[Samples] = []
        self._callback = _CALLBACK(self._collect)  # kept referenced: the library calls it
        lib.espeak_SetSynthCallback(self._callback)
        self._voice: str | None = None
        for voice in VOICES.values():  # fail at start-up, not on a request, if the data lacks a voice
            self._select(voice)

    @property
    def sample_rate(self) -> int:
        return self._rate

    @property
    def voices(self) -> Mapping[str, str]:
        return {name: f"eSpeak NG {voice.name}: {voice.description}" for name, voice in VOICES.items()}

    def _collect(self, wav: ctypes._Pointer[ctypes.c_short], count: int, _events: int | None) -> int:
        if count > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).astype(np.int16, copy=True))
        return 0  # go on synthesising

    def _select(self, voice: Voice) -> None:
        if self._voice == voice.name:
            return
        if self._lib.espeak_SetVoiceByName(voice.name.encode()) != 0:
            raise RuntimeError(f"eSpeak NG has no voice {voice.name!r}")
        for parameter, value in ((_RATE, voice.rate), (_PITCH, voice.pitch), (_RANGE, voice.range)):
            self._lib.espeak_SetParameter(parameter, value, 0)
        self._voice = voice.name

    def synthesize(self, text: str, voice: str) -> Samples:
        self._select(VOICES[voice])
        self._chunks = []
        encoded = text.encode("utf-8", errors="replace")
        status = self._lib.espeak_Synth(encoded, len(encoded) + 1, 0, 1, 0, _CHARS_UTF8, None, None)
        if status != 0:
            raise RuntimeError(f"eSpeak NG failed to synthesise (status {status})")
        self._lib.espeak_Synchronize()
        chunks, self._chunks = self._chunks, []
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)


ENGINE = EspeakEngine
