"""Spoken answers: the `audio` output of chat completions, synthesised offline.

`engine.py` is the interface a text-to-speech engine implements (like the LLM engines: one module per engine,
its heavy imports inside it), `espeak.py` the local engine, `encode.py` the output formats, `store.py` the
audio ids a later turn may refer to, and `speech.py` what a request with `audio` goes through.
"""

from __future__ import annotations

from pipeserve.audio.engine import OUTPUT_RATE, Speaker, SpeechEngine, load_engine
from pipeserve.audio.store import AudioStore, StoredAudio

__all__ = ["OUTPUT_RATE", "AudioStore", "Speaker", "SpeechEngine", "StoredAudio", "load_engine"]
