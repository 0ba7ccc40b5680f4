"""Constrained decoding for the llama.cpp engine: llguidance token masks plus a reserve to close the JSON.

llguidance compiles a JSON schema into a grammar and computes, at each step, the set of tokens that keep
the output valid; masking the other logits in place before llama.cpp's sampler chain keeps sampling in
C. A `JsonCloser` follows the same text: before a sampled token is taken, the engine checks that the
tokens needed to close the document validly still fit in the budget, and closes it instead when they
don't (finish_reason stays `length`).
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import llguidance
import llguidance.llamacpp
import numpy as np

from pipeserve.engines.llamacpp.model import LlamaModel
from pipeserve.errors import InvalidRequestError
from pipeserve.structured.closer import JsonCloser

# Canonical separators and no free whitespace: a small model can't ramble in blank space, and the
# closer writes the same separators.
_JSON_OPTIONS: Any = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class GuideCompiler:
    """Per model: the llguidance tokenizer (built on first use, ~1 s) and compiled grammars by schema."""

    def __init__(self, model: LlamaModel) -> None:
        self.model = model
        self._tokenizer: llguidance.LLTokenizer | None = None
        self._grammars: dict[str, str] = {}

    @property
    def tokenizer(self) -> llguidance.LLTokenizer:
        if self._tokenizer is None:
            # llguidance reads each token's attributes through a binding llama-cpp-python marks deprecated:
            # one warning per vocabulary entry (49,152 here), none of them actionable by us.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                self._tokenizer = llguidance.llamacpp.lltokenizer_from_vocab(self.model.vocab)
        return self._tokenizer

    def compile(self, schema: dict[str, Any], *, param: str) -> str:
        key = json.dumps(schema, sort_keys=True)
        grammar = self._grammars.get(key)
        if grammar is None:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=_JSON_OPTIONS)
            is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, self.tokenizer)
            if is_error:
                raise InvalidRequestError(
                    f"This schema can't be enforced: {messages[0] if messages else 'unknown error'}. "
                    "Remove or rewrite the keyword it names.",
                    param=param,
                )
            if len(self._grammars) > 256:
                self._grammars.clear()
            self._grammars[key] = grammar
        return grammar

    def closing_tokens(self, text: str) -> int:
        return len(self.model.tokenize(text, add_special=False)) if text else 0


class Guide:
    """One sequence's constraint state."""

    def __init__(self, compiler: GuideCompiler, grammar: str, schema: dict[str, Any]) -> None:
        self.compiler = compiler
        self.matcher = llguidance.LLMatcher(compiler.tokenizer, grammar)
        self.closer = JsonCloser(schema)
        self.n_vocab = compiler.model.n_vocab
        self._bitmask = np.full((((self.n_vocab + 31) // 32),), -1, dtype=np.int32)

    def mask(self, logits: np.ndarray[Any, np.dtype[np.float32]]) -> None:
        """Set the logits of every token that would break the output to -inf, in place."""
        self.matcher.unsafe_compute_mask_ptr(self._bitmask.ctypes.data, self._bitmask.nbytes)
        allowed = np.unpackbits(self._bitmask.view(np.uint8), bitorder="little")[: self.n_vocab]
        logits[allowed == 0] = -np.inf

    def take(self, token: int, text: str, remaining: int) -> str | None:
        """Take a sampled token, or return the closing text to emit instead when taking it would leave too
        few tokens (of the `remaining` after it) to close the document."""
        ahead = self.closer.clone().feed(text)
        if self.compiler.closing_tokens(ahead.closing()) > remaining:
            return self.closer.closing()
        self.closer = ahead
        self.matcher.consume_token(token)
        return None

    def minimal_tokens(self) -> int:
        return self.compiler.closing_tokens(self.closer.closing())
