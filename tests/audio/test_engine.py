"""The local speech engine (eSpeak NG) and the encoders, without a server."""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterator

import numpy as np
import pytest
import soundfile

from pipeserve.audio import OUTPUT_RATE, Speaker, load_engine
from pipeserve.audio.encode import encode, resample, supported_formats
from pipeserve.audio.espeak import VOICES
from tests.audio.sound import Sound, wav

OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse")
SENTENCE = "The quick brown fox jumps over the lazy dog, and then it runs home for dinner."


@pytest.fixture(scope="module")
def speaker() -> Iterator[Speaker]:
    speaker = Speaker(load_engine("espeak"))
    yield speaker
    speaker.close()


def test_every_openai_voice_is_a_distinct_local_voice(speaker: Speaker) -> None:
    assert set(OPENAI_VOICES) <= set(speaker.voices)
    assert len({(v.name, v.pitch, v.rate) for v in VOICES.values()}) == len(VOICES)
    sounds = {voice: Sound(OUTPUT_RATE, speaker.speak_now(SENTENCE, voice)) for voice in VOICES}
    for a, b in itertools.combinations(VOICES, 2):
        first, second = sounds[a], sounds[b]
        # Each pair differs audibly: in pitch (by a semitone or more) or in speed (by 3% or more).
        pitch_ratio = max(first.pitch(), second.pitch()) / min(first.pitch(), second.pitch())
        speed_ratio = max(first.seconds, second.seconds) / min(first.seconds, second.seconds)
        assert pitch_ratio > 1.059 or speed_ratio > 1.03, (a, b, first.pitch(), second.pitch())
    female = [sounds[v].pitch() for v in ("alloy", "coral", "sage", "shimmer")]
    male = [sounds[v].pitch() for v in ("ash", "ballad", "echo", "verse")]
    assert min(female) > max(male)


def test_speech_is_speech(speaker: Speaker) -> None:
    short = Sound(OUTPUT_RATE, speaker.speak_now("Hello.", "alloy"))
    long = Sound(OUTPUT_RATE, speaker.speak_now(SENTENCE * 3, "alloy"))
    assert 0.2 < short.seconds < 2
    assert long.seconds > 4 * short.seconds
    assert long.rms > 1000  # not silence
    assert 80 < long.pitch() < 400  # a voice's range


def test_markup_is_not_read_out(speaker: Speaker) -> None:
    plain = speaker.speak_now("Hello there", "echo")
    marked = speaker.speak_now("**Hello** _there_", "echo")
    assert abs(len(plain) - len(marked)) < 0.05 * OUTPUT_RATE
    assert len(speaker.speak_now("***", "echo")) == 0


def test_formats(speaker: Speaker) -> None:
    assert supported_formats() == ("wav", "mp3", "flac", "opus", "pcm16")  # the soundfile wheel encodes them all
    samples = speaker.speak_now(SENTENCE, "coral")
    sound, channels, width = wav(encode(samples, OUTPUT_RATE, "wav"))
    assert (sound.rate, channels, width) == (OUTPUT_RATE, 1, 2)
    assert np.array_equal(sound.samples, samples)
    assert encode(samples, OUTPUT_RATE, "pcm16") == samples.astype("<i2").tobytes()
    for fmt, container in (("mp3", "MP3"), ("flac", "FLAC"), ("opus", "OGG")):
        data = encode(samples, OUTPUT_RATE, fmt)
        info = soundfile.info(io.BytesIO(data))
        assert info.format == container and info.channels == 1
        decoded, rate = soundfile.read(io.BytesIO(data), dtype="int16")
        assert rate in (OUTPUT_RATE, 48_000)  # Ogg Opus may report its 48 kHz decoding rate
        assert abs(len(decoded) / rate - len(samples) / OUTPUT_RATE) < 0.1
    assert len(encode(samples, OUTPUT_RATE, "mp3")) < len(encode(samples, OUTPUT_RATE, "wav")) / 4


def test_resample_keeps_duration_and_tone() -> None:
    t = np.arange(22_050) / 22_050
    tone = (np.sin(2 * np.pi * 440 * t) * 10_000).astype(np.int16)
    out = resample(tone, 22_050, 24_000)
    assert len(out) == 24_000
    spectrum = np.abs(np.fft.rfft(out.astype(np.float64)))
    assert abs(np.argmax(spectrum) * 24_000 / len(out) - 440) < 2


def test_unknown_engine() -> None:
    with pytest.raises(ValueError, match="unknown speech engine"):
        load_engine("nosuch")
