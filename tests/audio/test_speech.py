"""Spoken answers through the real server (embedded model, eSpeak NG) and the official `openai` client."""

from __future__ import annotations

import io
import math
from typing import Any

import httpx
import openai
import pytest
import soundfile

from tests.audio.sound import b64, pcm16, wav
from tests.conftest import MODEL, Server

QUESTION = [{"role": "user", "content": "Describe the sea in a few sentences."}]
SPOKEN: dict[str, Any] = {"modalities": ["text", "audio"], "temperature": 0, "seed": 7}


def speak(client: openai.OpenAI, fmt: str = "wav", voice: str = "alloy", **fields: Any) -> Any:
    fields = {"messages": QUESTION, "max_tokens": 40, **SPOKEN, **fields}
    return client.chat.completions.create(model=MODEL, audio={"voice": voice, "format": fmt}, **fields)


def test_a_spoken_answer_is_a_wav_of_its_transcript(client: openai.OpenAI) -> None:
    response = speak(client)
    choice = response.choices[0]
    message = choice.message
    assert message.content is None  # as OpenAI answers: the words are the audio's transcript
    audio = message.audio
    assert audio is not None and audio.id.startswith("audio_") and audio.transcript.strip()
    assert audio.expires_at > response.created
    sound, channels, width = wav(b64(audio.data))
    assert (sound.rate, channels, width) == (24_000, 1, 2)
    assert sound.seconds > 0.5 and sound.rms > 500  # speech, not silence
    usage = response.usage
    assert usage is not None and usage.completion_tokens_details is not None
    details = usage.completion_tokens_details
    assert details.audio_tokens == math.ceil(sound.seconds * 20)  # the documented rule: 20 per second
    assert usage.completion_tokens == details.text_tokens + details.audio_tokens
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_the_audio_grows_with_the_transcript(client: openai.OpenAI) -> None:
    short = speak(client, max_tokens=6).choices[0].message.audio
    long = speak(client, max_tokens=60).choices[0].message.audio
    assert len(long.transcript) > 2 * len(short.transcript)
    assert wav(b64(long.data))[0].seconds > 2 * wav(b64(short.data))[0].seconds


@pytest.mark.parametrize(("fmt", "container"), [("mp3", "MP3"), ("flac", "FLAC"), ("opus", "OGG")])
def test_compressed_formats(client: openai.OpenAI, fmt: str, container: str) -> None:
    audio = speak(client, fmt=fmt, voice="verse").choices[0].message.audio
    data = b64(audio.data)
    assert soundfile.info(io.BytesIO(data)).format == container
    samples, rate = soundfile.read(io.BytesIO(data), dtype="int16")
    assert len(samples) / rate > 0.5


def test_each_voice_is_its_own(client: openai.OpenAI) -> None:
    sounds = {
        voice: wav(b64(speak(client, voice=voice).choices[0].message.audio.data))[0] for voice in ("ash", "coral")
    }
    assert sounds["coral"].pitch() > 1.5 * sounds["ash"].pitch()


def test_pcm16_and_every_choice(client: openai.OpenAI) -> None:
    response = speak(client, fmt="pcm16", n=2, temperature=1.0)
    ids = set()
    for choice in response.choices:
        audio = choice.message.audio
        ids.add(audio.id)
        sound = pcm16(b64(audio.data))
        assert sound.seconds > 0.3 and sound.rms > 500
    assert len(ids) == 2


def test_a_stream_sends_transcript_fragments_and_pcm16(client: openai.OpenAI) -> None:
    stream = speak(client, fmt="pcm16", stream=True, stream_options={"include_usage": True}, max_tokens=60)
    fragments: list[dict[str, Any]] = []
    usage = None
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            assert choice.delta.content is None
            if choice.delta.audio is not None:
                fragments.append(choice.delta.audio.model_dump(exclude_none=True))
    assert fragments[0]["id"].startswith("audio_")
    assert all("id" not in f for f in fragments[1:])
    assert "expires_at" in fragments[-1] and all("expires_at" not in f for f in fragments[:-1])
    transcripts = [f["transcript"] for f in fragments if "transcript" in f]
    assert len(transcripts) > 3  # the words stream as the model writes them
    data = "".join(f.get("data", "") for f in fragments)  # as the SDK merges them: one valid base64 string
    sound = pcm16(b64(data))
    assert sound.seconds > 1 and sound.rms > 500
    assert len([f for f in fragments if "data" in f]) > 1  # sentence by sentence
    assert usage is not None and usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.audio_tokens == math.ceil(sound.seconds * 20)


def test_the_sdk_merges_a_stream_into_the_message(client: openai.OpenAI) -> None:
    fields = {"messages": QUESTION, "max_tokens": 30, **SPOKEN}
    with client.chat.completions.stream(model=MODEL, audio={"voice": "sage", "format": "pcm16"}, **fields) as stream:
        for _ in stream:
            pass
        merged = stream.current_completion_snapshot  # the final one refuses answers cut at max_tokens
    audio = merged.choices[0].message.audio
    assert audio is not None and audio.transcript and audio.expires_at
    assert pcm16(b64(audio.data)).seconds > 0.5


def test_a_later_turn_may_refer_to_the_audio(client: openai.OpenAI) -> None:
    audio = speak(client).choices[0].message.audio
    follow_up = [
        *QUESTION,
        {"role": "assistant", "audio": {"id": audio.id}},
        {"role": "user", "content": "Now say it shorter."},
    ]
    answer = client.chat.completions.create(model=MODEL, messages=follow_up, max_tokens=5)  # type: ignore[arg-type]
    assert answer.choices[0].message.content
    follow_up[1] = {"role": "assistant", "audio": {"id": "audio_doesnotexist"}}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=follow_up, max_tokens=5)  # type: ignore[arg-type]
    assert caught.value.code == "audio_not_found"
    assert caught.value.param == "messages[1].audio.id"


def error_of(server: Server, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(f"{server.v1}/chat/completions", json={"model": MODEL, "messages": QUESTION, **body})
    assert response.status_code == 400, response.text
    return response.json()["error"]  # type: ignore[no-any-return]


def test_what_cant_be_spoken_is_a_400(server: Server) -> None:
    error = error_of(server, {"audio": {"voice": "alloy", "format": "aac"}})
    assert error["param"] == "audio.format" and "'wav', 'mp3', 'flac', 'opus', 'pcm16'" in error["message"]
    error = error_of(server, {"audio": {"voice": "nobody", "format": "wav"}})
    assert error["param"] == "audio.voice" and "shimmer" in error["message"]
    error = error_of(server, {"audio": {"voice": "alloy", "format": "wav"}, "stream": True})
    assert error["param"] == "audio.format" and "pcm16" in error["message"]
    error = error_of(server, {"modalities": ["text", "audio"]})
    assert error["param"] == "audio"
    error = error_of(server, {"modalities": ["text"], "audio": {"voice": "alloy", "format": "wav"}})
    assert error["param"] == "modalities"


def test_text_only_requests_are_unchanged(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=5, modalities=["text"])  # type: ignore[arg-type]
    message = response.choices[0].message
    assert message.content and message.audio is None
    assert "audio" not in response.choices[0].message.model_dump(exclude_unset=True)


def test_a_cache_hit_is_spoken_afresh(client: openai.OpenAI) -> None:
    cache = {"op-cache": "readWrite"}
    first = speak(client, seed=11, extra_headers=cache).choices[0].message.audio
    again = speak(client, seed=11, extra_headers=cache).choices[0].message.audio
    assert again.transcript == first.transcript and again.id != first.id  # an id of its own, lasting anew
    assert abs(wav(b64(again.data))[0].seconds - wav(b64(first.data))[0].seconds) < 0.05  # eSpeak varies a little
    stream = speak(client, fmt="pcm16", seed=11, stream=True, extra_headers=cache)
    fragments = [c.delta.audio for chunk in stream for c in chunk.choices if c.delta.audio is not None]
    assert "".join(f.transcript or "" for f in fragments) == first.transcript
    assert pcm16(b64("".join(f.data or "" for f in fragments))).seconds > 0.5
