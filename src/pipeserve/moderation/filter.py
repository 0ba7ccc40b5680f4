"""The content filter of a request that a policy covers, in Azure OpenAI's shapes.

- The prompt (each user message) is classified before anything runs: a filtered prompt is a 400 with code
  `content_filter` (and Azure's `innererror` naming the categories); otherwise the response carries
  `prompt_filter_results` (a stream: in a first chunk without choices).
- Each choice's text is classified: every choice carries `content_filter_results`; a filtered one ends with
  finish_reason `content_filter` and its content left out (a plain answer's `content` is null).
- A stream's text is held back until a sentence ends (or 200 characters wait), then classified with what
  precedes it, and sent only if it passes, so a client never receives filtered text; a filtered choice ends
  there, its further tokens dropped. Tool calls and reasoning pass unclassified.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeserve.errors import InvalidRequestError
from pipeserve.moderation.classifier import Classifier
from pipeserve.moderation.policy import Policy, PolicyBook, filtered, worst
from pipeserve.params import ChatParams
from pipeserve.protocol import chat_completions as wire
from pipeserve.service.models import ServedModel
from pipeserve.service.stages import Chunk, Stage, StageRun

log = logging.getLogger("pipeserve.moderation")

_SENTENCE_END = re.compile(r"[.!?\n](?:\s|$)")
_HOLD_CHARS = 200  # text held at most before it is classified without waiting for a sentence's end
_CONTEXT_CHARS = 400  # text already sent that is classified again with the next piece, for what spans both


class ContentFilteredError(InvalidRequestError):
    """A prompt the content filter refuses (Azure OpenAI's 400 `content_filter`)."""

    default_code = "content_filter"

    def __init__(self, results: Mapping[str, Any]) -> None:
        names = ", ".join(filtered(results))
        super().__init__(
            f"The prompt was filtered by this server's content policy ({names}). Rephrase the prompt; the "
            "categories and severities are in 'innererror.content_filter_result'.",
            param="prompt",
        )
        self.results = dict(results)

    def body(self) -> dict[str, Any]:
        body = super().body()
        body["error"]["innererror"] = {"code": "ResponsibleAIPolicyViolation", "content_filter_result": self.results}
        return body


class ContentFilterStage(Stage):
    def __init__(self, classifier: Classifier, book: PolicyBook) -> None:
        self.classifier = classifier
        self.book = book

    def prepare(self, project: str, served: ServedModel, params: ChatParams) -> tuple[ChatParams, StageRun | None]:
        if not self.book:
            return params, None
        policy = self.book.policy(project, (served.config.id, *served.config.aliases, params.model))
        if policy is None:
            return params, None
        results = policy.results({}, prompt=True)
        for message in params.messages:
            if message.role == "user" and message.content:
                results = worst(results, policy.results(self.classifier.scores(message.content), prompt=True))
        if filtered(results):
            log.info("prompt filtered in project %s (%s)", project, ", ".join(filtered(results)))
            raise ContentFilteredError(results)
        return params, _FilterRun(self.classifier, policy, [{"prompt_index": 0, "content_filter_results": results}])


@dataclass
class _Held:
    """One choice of a stream: the text sent, the text held back, and its classification so far."""

    sent: str = ""
    pending: str = ""
    logprobs: list[Any] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)
    cut: bool = False


class _FilterRun(StageRun):
    def __init__(self, classifier: Classifier, policy: Policy, prompt: list[dict[str, Any]]) -> None:
        self.classifier = classifier
        self.policy = policy
        self.prompt = prompt
        self.choices: dict[int, _Held] = {}

    def _results(self, text: str) -> dict[str, Any]:
        return self.policy.results(self.classifier.scores(text) if text else {}, prompt=False)

    # --- a plain answer ------------------------------------------------------------------------------------
    async def complete(self, completion: wire.ChatCompletion) -> wire.ChatCompletion:
        choices = []
        for choice in completion.choices:
            results = self._results(choice.message.content or "")
            update: dict[str, Any] = {"content_filter_results": results}
            if filtered(results):
                update["finish_reason"] = "content_filter"
                update["message"] = choice.message.model_copy(update={"content": None})
                update["logprobs"] = None if choice.logprobs is None else wire.ChoiceLogprobs(content=[])
            choices.append(choice.model_copy(update=update))
        return completion.model_copy(update={"choices": choices, "prompt_filter_results": self.prompt})

    # --- a stream ------------------------------------------------------------------------------------------
    async def stream(self, chunks: AsyncIterator[Chunk]) -> AsyncIterator[Chunk]:
        first = True
        async for chunk in chunks:
            if "choices" not in chunk:  # an error event
                yield chunk
                continue
            if first:
                first = False
                yield {**chunk, "choices": [], "usage": None, "prompt_filter_results": self.prompt}
            if not chunk["choices"]:
                yield chunk
                continue
            kept = [shaped for choice in chunk["choices"] if (shaped := self._shape(choice)) is not None]
            if kept:
                yield {**chunk, "choices": kept}

    def _shape(self, choice: dict[str, Any]) -> dict[str, Any] | None:
        """The choice as it may be sent now; None when it has nothing to send yet (or any more)."""
        held = self.choices.setdefault(choice["index"], _Held())
        if held.cut:
            return None
        delta = choice["delta"]
        text = delta.pop("content", None)
        if text:
            held.pending += text
            logprobs = choice.get("logprobs") or {}
            held.logprobs += logprobs.get("content") or []
            choice["logprobs"] = None
        elif text is not None:
            delta["content"] = text  # an opening's empty content stays
        finishing = choice.get("finish_reason") is not None
        if held.pending and (finishing or len(held.pending) >= _HOLD_CHARS or _SENTENCE_END.search(held.pending)):
            results = self._results(held.sent[-_CONTEXT_CHARS:] + held.pending)
            held.results = worst(held.results, results)
            if filtered(results):
                held.cut = True
                return {
                    "index": choice["index"],
                    "delta": {},
                    "logprobs": None,
                    "finish_reason": "content_filter",
                    "content_filter_results": held.results,
                }
            delta["content"] = held.pending
            if held.logprobs:
                choice["logprobs"] = {"content": held.logprobs, "refusal": None}
            choice["content_filter_results"] = results
            held.sent += held.pending
            held.pending, held.logprobs = "", []
        if finishing:
            choice["content_filter_results"] = held.results or self._results("")
        if not delta and not finishing and not choice.get("criteria_results") and not choice.get("logprobs"):
            return None
        return choice

    def merged(self, completion: wire.ChatCompletion) -> wire.ChatCompletion:
        choices = []
        for choice in completion.choices:
            held = self.choices.get(choice.index, _Held())
            update: dict[str, Any] = {"content_filter_results": held.results or self._results("")}
            if held.cut:
                update["finish_reason"] = "content_filter"
                update["message"] = choice.message.model_copy(update={"content": held.sent or None})
            choices.append(choice.model_copy(update=update))
        return completion.model_copy(update={"choices": choices, "prompt_filter_results": self.prompt})
