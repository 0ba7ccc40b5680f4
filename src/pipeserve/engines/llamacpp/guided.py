"""Constrained decoding for the llama.cpp engine: llguidance token masks plus a reserve to close the JSON.

llguidance compiles a JSON schema into a grammar and computes, at each step, the set of tokens that keep
the output valid; masking the other logits in place before llama.cpp's sampler chain keeps sampling in
C. A `JsonCloser` follows the same text: before a sampled token is taken, the engine checks that the
tokens needed to close the document validly still fit in the budget, and closes it instead when they
don't (finish_reason stays `length`). A budget too small for any valid document is no error, as with
OpenAI: the output then follows the grammar until the budget runs out, truncated, finish_reason `length`.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import llguidance
import llguidance.llamacpp
import numpy as np

from pipeserve.engines.llamacpp.model import LlamaModel
from pipeserve.engines.llamacpp.toolcalls import called_names, calls_schema
from pipeserve.errors import InvalidRequestError
from pipeserve.params import ChatParams
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

    def compile_output(self, schema: dict[str, Any], params: ChatParams, *, calls: bool) -> str:
        """The grammar of a request's output (`calls`: tool calls, else content); a 400 naming the parameter
        whose schema can't be enforced."""
        if not calls:
            return self.compile(schema, param="response_format.json_schema.schema")
        try:
            return self.compile(schema, param="tools")
        except InvalidRequestError:
            called = called_names(schema)
            for index, tool in enumerate(params.tools):
                if tool.name in called:  # one whose parameters alone can't be enforced is named
                    legacy = params.legacy_functions
                    param = f"functions[{index}].parameters" if legacy else f"tools[{index}].function.parameters"
                    self.compile(calls_schema((tool,), parallel=False), param=param)
            raise

    def compile(self, schema: dict[str, Any], *, param: str) -> str:
        """The grammar of `schema`; a 400 naming `param` when llguidance can't enforce it."""
        key = json.dumps(schema, sort_keys=True)
        grammar = self._grammars.get(key)
        if grammar is None:
            try:
                grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=_JSON_OPTIONS)
            except ValueError as exc:
                raise InvalidRequestError(f"This schema can't be enforced: {exc}.", param=param) from None
            is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, self.tokenizer)
            if is_error:
                raise InvalidRequestError(
                    f"This schema can't be enforced: {messages[0] if messages else 'unknown error'}. "
                    "Remove or rewrite the keyword it names.",
                    param=param,
                )
            self._check_start(grammar, param)
            if len(self._grammars) > 256:
                self._grammars.clear()
            self._grammars[key] = grammar
        return grammar

    def _check_start(self, grammar: str, param: str) -> None:
        """A 400 when the grammar can't even begin: llguidance compiles a schema with no finite value into a
        grammar that matches nothing, and the first mask then leaves only the end of the output (the
        schema check before the engine should have caught it; this is the net under it)."""
        matcher = llguidance.LLMatcher(self.tokenizer, grammar)
        bitmask = np.zeros(((self.model.n_vocab + 31) // 32,), dtype=np.int32)
        matcher.unsafe_compute_mask_ptr(bitmask.ctypes.data, bitmask.nbytes)
        allowed = np.flatnonzero(np.unpackbits(bitmask.view(np.uint8), bitorder="little")[: self.model.n_vocab])
        if matcher.is_error() or (not matcher.is_accepting() and set(allowed[:2].tolist()) <= {self.model.eos}):
            raise InvalidRequestError(
                "This schema can't be enforced: no output can begin a value valid against it. Check it for a "
                "recursion with no way out or for keywords that contradict each other.",
                param=param,
            )

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
        # Whether the budget holds a valid document, so that the output is closed before it runs out;
        # decided at the first token, when the budget is known.
        self.closes: bool | None = None

    def mask(self, logits: np.ndarray[Any, np.dtype[np.float32]]) -> None:
        """Set the logits of every token that would break the output to -inf, in place."""
        self.matcher.unsafe_compute_mask_ptr(self._bitmask.ctypes.data, self._bitmask.nbytes)
        allowed = np.unpackbits(self._bitmask.view(np.uint8), bitorder="little")[: self.n_vocab]
        logits[allowed == 0] = -np.inf

    def take(self, token: int, text: str, remaining: int) -> str | None:
        """Take a sampled token, or return the closing text to emit instead when taking it would leave too
        few tokens (of the `remaining` after it) to close the document."""
        if self.closes is None:
            needed = self._tokens(self.closer.closing())
            self.closes = needed is not None and needed <= remaining + 1
        if self.closes:
            ahead = self.closer.clone().feed(text)
            needed = self._tokens(ahead.closing())
            if needed is None or needed > remaining:
                closing = self.closer.closing()
                assert closing is not None  # it fitted when the previous token was taken
                return closing
            self.closer = ahead
        self.matcher.consume_token(token)
        return None

    def _tokens(self, closing: str | None) -> int | None:
        return None if closing is None else self.compiler.closing_tokens(closing)
