"""Dataset entries as the served model sees them: token ids with the positions the loss is taken on.

A training example must be the request the llama.cpp engine would build for the same conversation, token for
token, or the model learns a prompt it is never shown. So an entry goes through the same steps as a chat
completion: the wire request is validated and turned into `ChatParams` at the edge (`service/edge.py`), the
chat template renders it (`engines/llamacpp/templating.py`, with tools in the system message or the template),
and llama.cpp's own tokenizer reads the text. The answer is what the engine would have generated: its content,
its `<tool_call>` blocks (tool_choice auto) or its call JSON (tool_choice required or named), then the token
that ends the turn.

Nothing here imports torch: the server renders entries to check a dataset before a job is queued.
"""

from __future__ import annotations

import ctypes
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeserve.engines.llamacpp.templating import CHATML_TEMPLATE, ChatTemplate
from pipeserve.engines.llamacpp.toolcalls import render_call
from pipeserve.errors import InvalidRequestError
from pipeserve.params import ChatMessage, ChatParams
from pipeserve.protocol.chat_completions import ChatCompletionRequest
from pipeserve.service.edge import to_params
from pipeserve.validation import validate

IGNORE = -100  # the label of a position the loss skips (torch's cross-entropy default)


class Vocabulary:
    """llama.cpp's tokenizer of a GGUF file, loaded without its weights (a few MB, a fraction of a second)."""

    def __init__(self, path: Path) -> None:
        import llama_cpp as llama

        self._llama = llama
        llama.llama_backend_init()
        params = llama.llama_model_default_params()
        params.vocab_only = True
        self._model = llama.llama_model_load_from_file(str(path).encode(), params)
        if not self._model:
            raise ValueError(f"llama.cpp could not read the vocabulary of {path}; is it a GGUF file?")
        self._vocab = llama.llama_model_get_vocab(self._model)
        self.bos = int(llama.llama_vocab_bos(self._vocab))
        self.eos = int(llama.llama_vocab_eos(self._vocab))
        self.add_bos = bool(llama.llama_vocab_get_add_bos(self._vocab))
        self.chat_template = self._meta("tokenizer.chat_template")

    def close(self) -> None:
        if self._model:
            self._llama.llama_model_free(self._model)
            self._model = None

    def _meta(self, key: str) -> str | None:
        size = 1 << 20
        buffer = ctypes.create_string_buffer(size)
        n = self._llama.llama_model_meta_val_str(self._model, key.encode(), buffer, size)
        return buffer.value.decode(errors="replace") if 0 <= n < size else None

    def tokenize(self, text: str, *, add_special: bool = False) -> list[int]:
        """As the engine tokenizes a prompt: special tokens written in the text are parsed as such."""
        data = text.encode()
        capacity = len(data) + 16
        tokens = (self._llama.llama_token * capacity)()
        n = self._llama.llama_tokenize(self._vocab, data, len(data), tokens, capacity, add_special, True)
        if n < 0:
            capacity = -n
            tokens = (self._llama.llama_token * capacity)()
            n = self._llama.llama_tokenize(self._vocab, data, len(data), tokens, capacity, add_special, True)
        return list(tokens[:n])

    def text(self, token: int) -> str:
        buffer = ctypes.create_string_buffer(256)
        n = self._llama.llama_token_to_piece(self._vocab, token, buffer, len(buffer), 0, True)
        return buffer.raw[: max(n, 0)].decode(errors="replace")

    def is_eog(self, token: int) -> bool:
        return bool(self._llama.llama_vocab_is_eog(self._vocab, token))


@dataclass
class Example:
    """One conversation as ids; `labels[i]` is the id to predict at position i, or IGNORE."""

    ids: list[int]
    labels: list[int]
    # For preference tuning: the prompt's length and the rejected answer's ids (end-of-turn included).
    prompt_length: int = 0
    rejected: list[int] | None = None
    answer: list[int] = field(default_factory=list)

    @property
    def trained_tokens(self) -> int:
        return sum(label != IGNORE for label in self.labels)


class Renderer:
    """Entries (the JSON of dataset rows) to `Example`s, as one model serves them."""

    def __init__(self, vocabulary: Vocabulary, template_source: str | None = None) -> None:
        self.vocabulary = vocabulary
        source = template_source or vocabulary.chat_template or CHATML_TEMPLATE
        self.template = ChatTemplate(
            source, bos_token=vocabulary.text(vocabulary.bos), eos_token=vocabulary.text(vocabulary.eos)
        )
        self.end_of_turn = self._end_of_turn()

    def _end_of_turn(self) -> int:
        """The token the model writes to end its answer: the one the template puts right after an assistant
        message (`<|im_end|>` in ChatML), which need not be the vocabulary's EOS."""
        marker = "\u2063pipeserve\u2063"
        rendered = self.template.render(
            [ChatMessage("user", "hi"), ChatMessage("assistant", marker), ChatMessage("user", "again")]
        )
        _, found, after = rendered.partition(marker)
        if found:
            tokens = self.vocabulary.tokenize(after)
            if tokens and self.vocabulary.is_eog(tokens[0]):
                return tokens[0]
        return self.vocabulary.eos

    def prompt(self, entry: dict[str, Any], upto: int | None = None) -> tuple[ChatParams, str]:
        """The served request for the entry's messages before `upto` (default: before the last), and its text."""
        messages = entry["messages"]
        end = len(messages) - 1 if upto is None else upto
        body: dict[str, Any] = {"model": "fine-tune", "messages": messages[:end]}
        for key in ("tools", "tool_choice", "response_format"):
            if entry.get(key) is not None:
                body[key] = entry[key]
        try:
            params = to_params(validate(ChatCompletionRequest, body))
        except InvalidRequestError as error:
            raise InvalidRequestError(f"{error.message}", param=error.param) from None
        tools = params.tools if params.tool_choice != "none" else ()
        return params, self.template.render(params.messages, tools)

    def answer_text(self, params: ChatParams, message: dict[str, Any]) -> str:
        """The text the engine would generate for an assistant message, given the request it answers."""
        turn = to_params(
            validate(ChatCompletionRequest, {"model": "fine-tune", "messages": [_as_assistant(message)]})
        ).messages[0]
        if not turn.tool_calls:
            return turn.content
        calls = [{"name": c.name, "arguments": _arguments(c.arguments)} for c in turn.tool_calls]
        if params.tool_choice in ("required", "named"):  # a constrained decode writes the calls' JSON only
            one = params.tool_choice == "named" or not params.parallel_tool_calls
            return json.dumps(calls[0] if one else calls, ensure_ascii=False)
        return "\n".join([*([turn.content] if turn.content else []), *map(render_call, turn.tool_calls)])

    def tokens(self, text: str) -> list[int]:
        vocabulary = self.vocabulary
        add_bos = vocabulary.add_bos and not text.startswith(vocabulary.text(vocabulary.bos))
        return vocabulary.tokenize(text, add_special=add_bos)

    def example(self, entry: dict[str, Any], *, all_turns: bool = True) -> Example:
        """The entry's final answer trained on its exact served prompt; earlier assistant turns trained too
        (when `all_turns`) where the rendered history holds them token for token as they would be generated."""
        params, prompt_text = self.prompt(entry)
        prompt = self.tokens(prompt_text)
        answer = [*self.vocabulary.tokenize(self.answer_text(params, entry["messages"][-1])), self.end_of_turn]
        labels = [IGNORE] * len(prompt)
        if all_turns:
            for index, message in enumerate(entry["messages"][:-1]):
                if message.get("role") == "assistant":
                    self._label_history(entry, index, prompt, labels)
        rejected = None
        if entry.get("rejected_message") is not None:
            rejected_text = self.answer_text(params, entry["rejected_message"])
            rejected = [*self.vocabulary.tokenize(rejected_text), self.end_of_turn]
        return Example(
            ids=prompt + answer,
            labels=labels + answer,
            prompt_length=len(prompt),
            rejected=rejected,
            answer=answer,
        )

    def _label_history(self, entry: dict[str, Any], index: int, prompt: list[int], labels: list[int]) -> None:
        params, before_text = self.prompt(entry, index)
        before = self.tokens(before_text)
        said = [*self.vocabulary.tokenize(self.answer_text(params, entry["messages"][index])), self.end_of_turn]
        end = len(before) + len(said)
        if prompt[: len(before)] == before and prompt[len(before) : end] == said:
            labels[len(before) : end] = said


def _as_assistant(message: dict[str, Any]) -> dict[str, Any]:
    # A rejected message may leave its role unsaid (OpenPipe's shape).
    return {**message, "role": "assistant"}


def _arguments(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def render_all(renderer: Renderer, entries: Iterable[dict[str, Any]], max_length: int) -> tuple[list[Example], int]:
    """The entries that fit in `max_length` tokens, and how many did not."""
    kept: list[Example] = []
    too_long = 0
    for entry in entries:
        example = renderer.example(entry)
        longest = len(example.ids)
        if example.rejected is not None:
            longest = max(longest, example.prompt_length + len(example.rejected))
        if longest > max_length:
            too_long += 1
        else:
            kept.append(example)
    return kept, too_long
