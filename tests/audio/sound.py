"""Reading the audio an answer carries: WAV decoding, loudness, pitch."""

from __future__ import annotations

import base64
import io
import wave
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass
class Sound:
    rate: int
    samples: npt.NDArray[np.int16]

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.rate

    @property
    def rms(self) -> float:
        return float(np.sqrt(np.mean(self.samples.astype(np.float64) ** 2))) if len(self.samples) else 0.0

    def pitch(self) -> float:
        """Median fundamental frequency (Hz) of the voiced 40 ms frames, by autocorrelation (60-400 Hz)."""
        frame = int(0.04 * self.rate)
        x = self.samples.astype(np.float64)
        loud = 0.3 * self.rms
        found = []
        for start in range(0, len(x) - frame, frame):
            window = x[start : start + frame]
            if np.sqrt(np.mean(window**2)) < loud:
                continue
            window = window - window.mean()
            corr = np.correlate(window, window, "full")[frame - 1 :]
            low, high = self.rate // 400, self.rate // 60
            lag = low + int(np.argmax(corr[low:high]))
            if corr[lag] > 0.3 * corr[0]:
                found.append(self.rate / lag)
        return float(np.median(found)) if found else 0.0


def wav(data: bytes) -> tuple[Sound, int, int]:
    """The sound of a WAV file, with its channel count and sample width."""
    with wave.open(io.BytesIO(data)) as reader:
        frames = reader.readframes(reader.getnframes())
        sound = Sound(reader.getframerate(), np.frombuffer(frames, dtype="<i2").astype(np.int16))
        return sound, reader.getnchannels(), reader.getsampwidth()


def pcm16(data: bytes, rate: int = 24_000) -> Sound:
    return Sound(rate, np.frombuffer(data, dtype="<i2").astype(np.int16))


def b64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)
