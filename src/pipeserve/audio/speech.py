"""The `audio` of a chat completion: the answer spoken by the local speech engine, as OpenAI returns it.

- A plain answer: each choice's message gets `audio: {id, data, expires_at, transcript}` (base64 audio in the
  requested format) and `content: null`. A choice that only calls tools gets no audio.
- A stream (pcm16, as OpenAI streams audio): the text the model writes goes out as `delta.audio.transcript`
  fragments at once; each sentence, once complete, as `delta.audio.data` (base64 pcm16, cut on whole samples
  in multiples of 3 bytes, so that the fragments, concatenated as the `openai` SDK merges them, are one valid
  base64 string); the id comes first, `expires_at` in the choice's last audio chunk.
- Usage: `completion_tokens_details.audio_tokens` counts 20 tokens per second of speech (OpenAI's rate for
  spoken output, 1 token per 50 ms), rounded up per choice; `completion_tokens` and `total_tokens` include
  them, and `text_tokens` counts the transcript.
- A later turn `{"role": "assistant", "audio": {"id": ...}}` is read as the transcript of that audio while
  the id lasts (`AudioStore`).
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

from pipeserve.audio.encode import supported_formats
from pipeserve.audio.engine import OUTPUT_RATE, Speaker
from pipeserve.audio.store import AudioStore
from pipeserve.errors import InvalidRequestError, UnsupportedParameterError
from pipeserve.params import AudioOutput, ChatMessage, ChatParams
from pipeserve.protocol import chat_completions as wire
from pipeserve.service.models import ServedModel
from pipeserve.service.stages import Chunk, Stage, StageRun

TOKENS_PER_SECOND = 20
_SENTENCE_END = re.compile(r"[.!?…:;](?=\s)|\n")
_CLAUSE_END = re.compile(r"[,)\]](?=\s)|\s")
_LONG_CLAUSE = 120  # characters held at most before speaking at a clause boundary rather than a sentence's end
_BYTES_PER_SAMPLE = 2
_ALIGN = 6  # bytes per data fragment: whole samples (2) and whole base64 groups (3)


def audio_tokens(seconds: float) -> int:
    return math.ceil(seconds * TOKENS_PER_SECOND - 1e-9)


def with_audio_tokens(usage: dict[str, Any], tokens: int) -> None:
    """`usage` (a wire `Usage` as sent) counting `tokens` of spoken output."""
    details = usage.setdefault("completion_tokens_details", {})
    details["audio_tokens"] = details.get("audio_tokens", 0) + tokens
    usage["completion_tokens"] += tokens
    usage["total_tokens"] += tokens


def ready_text(pending: str) -> int:
    """How much of `pending` to speak now: up to its last sentence end, or, when a long sentence is still
    open, its last clause boundary; 0 to wait for more."""
    ends = list(_SENTENCE_END.finditer(pending))
    if ends:
        return ends[-1].end()
    if len(pending) >= _LONG_CLAUSE:
        clauses = list(_CLAUSE_END.finditer(pending))
        if clauses:
            return clauses[-1].end()
    return 0


class AudioStage(Stage):
    def __init__(self, speaker: Speaker | None, store: AudioStore) -> None:
        """`speaker`: None when the speech engine could not start (requests with `audio` then get a 400)."""
        self.speaker = speaker
        self.store = store

    def prepare(self, project: str, served: ServedModel, params: ChatParams) -> tuple[ChatParams, StageRun | None]:
        if any(message.audio_id for message in params.messages):
            params = replace(params, messages=tuple(self._heard(i, m) for i, m in enumerate(params.messages)))
        wanted = params.audio
        if wanted is None:
            return params, None
        if self.speaker is None:
            raise UnsupportedParameterError(
                "This server's speech engine is unavailable (see its log), so it can't answer with 'audio'. "
                "Remove 'audio', or reinstall pipeserve with its dependencies.",
                param="audio",
            )
        formats = supported_formats()
        if wanted.format not in formats:
            raise InvalidRequestError(
                f"'audio.format' {wanted.format!r} can't be written by this server; use one of {list(formats)}.",
                param="audio.format",
                code="unsupported_value",
            )
        if wanted.voice not in self.speaker.voices:
            raise InvalidRequestError(
                f"Unknown 'audio.voice' {wanted.voice!r}; use one of {sorted(self.speaker.voices)}.",
                param="audio.voice",
                code="unsupported_value",
            )
        return params, _AudioRun(self.speaker, self.store, wanted)

    def _heard(self, index: int, message: ChatMessage) -> ChatMessage:
        if message.audio_id is None:
            return message
        stored = self.store.get(message.audio_id)
        if stored is None:
            raise InvalidRequestError(
                f"messages[{index}].audio.id {message.audio_id!r} is unknown to this server or has expired "
                f"(audio lasts {self.store.ttl_seconds} s after its answer, on the server that made it). Send the "
                "assistant's words as 'content' instead.",
                param=f"messages[{index}].audio.id",
                code="audio_not_found",
            )
        content = message.content or stored.transcript
        return replace(message, content=content, audio_id=None)


@dataclass
class _Spoken:
    """One choice of a stream: what it has said so far."""

    id: str
    pending: str = ""  # text not spoken yet
    transcript: list[str] = field(default_factory=list)
    pcm: list[bytes] = field(default_factory=list)  # every sample spoken, for the merged completion
    unsent: bytes = b""  # samples spoken but not sent (a fragment ends on a multiple of _ALIGN bytes)
    samples: int = 0
    calls: bool = False
    opened: bool = False
    expires_at: int = 0

    def take(self, pcm: bytes, final: bool) -> str:
        self.pcm.append(pcm)
        self.samples += len(pcm) // _BYTES_PER_SAMPLE
        data = self.unsent + pcm
        cut = len(data) if final else len(data) - len(data) % _ALIGN
        self.unsent = data[cut:]
        return base64.b64encode(data[:cut]).decode()

    @property
    def seconds(self) -> float:
        return self.samples / OUTPUT_RATE


class _AudioRun(StageRun):
    def __init__(self, speaker: Speaker, store: AudioStore, wanted: AudioOutput) -> None:
        self.speaker = speaker
        self.store = store
        self.wanted = wanted
        self.choices: dict[int, _Spoken] = {}

    # --- a plain answer ------------------------------------------------------------------------------------
    async def complete(self, completion: wire.ChatCompletion) -> wire.ChatCompletion:
        tokens = 0
        choices = []
        for choice in completion.choices:
            message = choice.message
            if message.tool_calls or message.function_call or message.content is None:  # calls, or filtered
                choices.append(choice)
                continue
            transcript = message.content or ""
            data, seconds = await self.speaker.speak_encoded(transcript, self.wanted.voice, self.wanted.format)
            stored = self.store.put(self.store.new_id(), transcript)
            audio = wire.ResponseAudio(
                id=stored.id,
                data=base64.b64encode(data).decode(),
                expires_at=stored.expires_at,
                transcript=transcript,
            )
            tokens += audio_tokens(seconds)
            choices.append(
                choice.model_copy(update={"message": message.model_copy(update={"content": None, "audio": audio})})
            )
        usage = completion.usage.model_dump()
        with_audio_tokens(usage, tokens)
        return completion.model_copy(update={"choices": choices, "usage": wire.Usage.model_validate(usage)})

    # --- a stream ------------------------------------------------------------------------------------------
    async def stream(self, chunks: AsyncIterator[Chunk]) -> AsyncIterator[Chunk]:
        async for chunk in chunks:
            finishing = []
            for choice in chunk.get("choices") or ():
                spoken = self.choices.get(choice["index"])
                if spoken is None:
                    spoken = self.choices[choice["index"]] = _Spoken(self.store.new_id())
                await self._shape(spoken, choice["delta"])
                if choice.get("finish_reason") is not None:
                    finishing.append((spoken, choice))
            for spoken, choice in finishing:
                last = await self._last_words(spoken)
                if last is not None:  # the rest of the speech, in a chunk of its own before the finish
                    yield {**chunk, "choices": [{"index": choice["index"], "delta": {"audio": last}}], "usage": None}
                    choice["delta"]["audio"] = {"expires_at": spoken.expires_at}
            usage = chunk.get("usage")
            if usage is not None:
                with_audio_tokens(usage, sum(audio_tokens(s.seconds) for s in self.choices.values()))
            yield chunk

    async def _shape(self, spoken: _Spoken, delta: dict[str, Any]) -> None:
        """The text of `delta` as the transcript, and its complete sentences as speech."""
        spoken.calls = spoken.calls or bool(delta.get("tool_calls") or delta.get("function_call"))
        text = delta.pop("content", None)
        if not text:
            return
        audio: dict[str, Any] = {}
        if not spoken.opened:
            audio["id"] = spoken.id
            spoken.opened = True
        audio["transcript"] = text
        spoken.transcript.append(text)
        spoken.pending += text
        cut = ready_text(spoken.pending)
        if cut:
            ready, spoken.pending = spoken.pending[:cut], spoken.pending[cut:]
            samples = await self.speaker.speak(ready, self.wanted.voice)
            data = spoken.take(samples.astype("<i2").tobytes(), final=False)
            if data:
                audio["data"] = data
        delta["audio"] = audio

    async def _last_words(self, spoken: _Spoken) -> dict[str, Any] | None:
        """The choice's remaining speech as its last data fragment (None for a choice that said nothing but
        called tools); the id is kept until `expires_at`."""
        if spoken.calls and not spoken.transcript:
            return None
        samples = await self.speaker.speak(spoken.pending, self.wanted.voice) if spoken.pending.strip() else None
        spoken.pending = ""
        pcm = samples.astype("<i2").tobytes() if samples is not None else b""
        last: dict[str, Any] = {"data": spoken.take(pcm, final=True)}
        if not spoken.opened:
            last["id"] = spoken.id
            spoken.opened = True
        spoken.expires_at = self.store.put(spoken.id, "".join(spoken.transcript)).expires_at
        return last

    def merged(self, completion: wire.ChatCompletion) -> wire.ChatCompletion:
        choices = []
        for choice in completion.choices:
            spoken = self.choices.get(choice.index)
            if spoken is None or not spoken.expires_at:
                choices.append(choice)
                continue
            transcript = "".join(spoken.transcript)
            audio = wire.ResponseAudio(
                id=spoken.id,
                data=base64.b64encode(b"".join(spoken.pcm)).decode(),
                expires_at=spoken.expires_at,
                transcript=transcript,
            )
            message = choice.message.model_copy(update={"content": None, "audio": audio})
            choices.append(choice.model_copy(update={"message": message}))
        usage = completion.usage.model_dump()
        with_audio_tokens(usage, sum(audio_tokens(s.seconds) for s in self.choices.values()))
        return completion.model_copy(update={"choices": choices, "usage": wire.Usage.model_validate(usage)})
