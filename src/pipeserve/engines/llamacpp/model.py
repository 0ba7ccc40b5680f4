"""A loaded GGUF model and its context, through llama-cpp-python's low-level API.

Every function here must be called from the engine thread (see DEVELOPERS.md: llama.cpp slows badly when
several Python threads call into the same model).
"""

from __future__ import annotations

import ctypes
import logging
import struct
from pathlib import Path
from typing import Any

import llama_cpp as llama
import numpy as np

from pipeserve.engines.base import TokenLogprob, TopToken

log = logging.getLogger("pipeserve.llamacpp")

_LOG_LEVELS = {3: logging.WARNING, 4: logging.ERROR}  # GGML_LOG_LEVEL_WARN, _ERROR


def _on_log(level: int, text: bytes, _user: Any) -> None:
    if level in _LOG_LEVELS and text:
        log.log(_LOG_LEVELS[level], text.decode(errors="replace").rstrip())


# Module-level: llama.cpp keeps calling the last callback set for as long as the process lives, so it must
# outlive any one model (a per-instance callback freed with its closed model crashed the next model load).
_LOG_CALLBACK = llama.llama_log_callback(_on_log)


def route_logs() -> None:
    """llama.cpp's warnings and errors to our log; its chatter (loading, quantizing) nowhere."""
    llama.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))


_U32 = struct.Struct("<I")
_MAX_ROW_VIEWS = 4096  # logits row views kept per context: a batch's rows, times a few output buffers
_HEADER = 8  # a saved sequence's state opens with llama.cpp's magic number and the sequence's id


def restream(state: Any, length: int, n_streams: int) -> int:
    """Rewrite, in place, a sequence's saved KV state (the first `length` bytes of the ctypes byte array
    `state`) for a context of `n_streams` streams; return its new length. It needs 4 * n_streams bytes of room
    after `length`.

    After its header llama.cpp writes the number of streams, then each stream's cell count and, for the one
    stream holding the sequence, its cells; it refuses a state written by a context with another number of
    streams, and reads a sequence's cells into that sequence's own stream whichever position they come in.
    So the cells move to the first position and the counts around them are rewritten."""
    view = memoryview(state).cast("B")
    (n_source,) = _U32.unpack_from(view, _HEADER)
    start = end = _HEADER + 4
    for stream in range(n_source):
        (cells,) = _U32.unpack_from(view, start)
        if cells:
            end = length - 4 * (n_source - stream - 1)  # the streams after it are empty: a zero count each
            if any(view[end:length]):
                raise ValueError("a sequence's KV state spans several streams")
            break
        start += 4
    else:
        start = end = _HEADER + 4  # an empty sequence: every stream empty
    address = ctypes.addressof(state)
    _U32.pack_into(view, _HEADER, n_streams)
    cells_length = end - start
    ctypes.memmove(address + _HEADER + 4, address + start, cells_length)
    done = _HEADER + 4 + cells_length
    zeros = 4 * (n_streams if cells_length == 0 else n_streams - 1)
    ctypes.memset(address + done, 0, zeros)
    return done + zeros


class SequenceMover:
    """Moves one sequence's KV entries between the contexts of two models of the same shape (one model in
    two weight formats: the solo lane), through one staging buffer reused: a window's state is ~23 MiB for
    SmolLM2, and its copies are what a move costs."""

    def __init__(self) -> None:
        self._buffer: Any = (ctypes.c_uint8 * 0)()

    def move(self, source: LlamaModel, seq: int, target: LlamaModel, dest: int) -> bool:
        """Replace `dest` in `target` with `seq` of `source` (left as it is); False, and `dest` empty, if the
        state can't be read there."""
        size = llama.llama_state_seq_get_size(source.ctx, seq)
        room = size + 4 * target.n_streams
        if len(self._buffer) < room:
            self._buffer = (ctypes.c_uint8 * room)()
        written = llama.llama_state_seq_get_data(source.ctx, self._buffer, size, seq)
        try:
            length = restream(self._buffer, written, target.n_streams) if written else 0
        except ValueError as exc:  # a llama.cpp whose state layout differs: the caller copes with a failed move
            log.error("could not move a sequence's KV state: %s", exc)
            length = 0
        if not length or llama.llama_state_seq_set_data(target.ctx, self._buffer, length, dest) != length:
            target.seq_clear(dest)
            return False
        return True


class LlamaModel:
    """The model, its vocabulary and one context holding the KV cache of all sequences, one stream each."""

    def __init__(
        self,
        path: Path,
        *,
        n_ctx: int,
        n_seq_max: int,
        n_batch: int,
        threads: int,
        repack: bool = False,
        weights: LlamaModel | None = None,
    ) -> None:
        """`weights`: another LlamaModel whose loaded weights this one shares, with a context of its own (the
        long-context lane); it must outlive this one."""
        self.owns_weights = weights is None
        self.model: Any
        if weights is not None:
            self.model = weights.model
        else:
            llama.llama_backend_init()
            route_logs()
            model_params = llama.llama_model_default_params()
            # Repacked weight buffers (ggml's "extra buffer types": AMX, or formats rearranged for SIMD) are
            # only used when measured faster and not crashing on this CPU (weights.py): AMX kernels crash on
            # the first decode on some hypervisors (DEVELOPERS.md, trap 1).
            model_params.use_extra_bufts = repack
            self.model = llama.llama_model_load_from_file(str(path).encode(), model_params)
            if not self.model:
                raise RuntimeError(f"llama.cpp could not load {path}; is it a GGUF file?")
        self.vocab = llama.llama_model_get_vocab(self.model)
        self.n_vocab: int = llama.llama_vocab_n_tokens(self.vocab)
        self.n_ctx_train: int = llama.llama_model_n_ctx_train(self.model)

        ctx_params = llama.llama_context_default_params()
        ctx_params.n_ctx = n_ctx
        ctx_params.n_batch = n_batch
        ctx_params.n_ubatch = n_batch
        ctx_params.n_seq_max = n_seq_max
        ctx_params.n_threads = threads
        ctx_params.n_threads_batch = threads
        # One KV stream per sequence (llama-server's default): attention then spans only the sequence's own
        # cells. In one unified stream it spans every occupied cell of all sequences: a step of 15 decoding
        # sequences of ~500 tokens plus a 256-token prompt chunk took seconds instead of ~0.6 s (bench/NOTES.md).
        # The price: sharing a prefix between sequences copies a whole stream (see `seq_copy`).
        ctx_params.kv_unified = False
        self.ctx = llama.llama_init_from_model(self.model, ctx_params)
        if not self.ctx:
            if self.owns_weights:
                llama.llama_model_free(self.model)
            raise RuntimeError(f"llama.cpp could not create a context of {n_ctx} cells for {path}")
        self.n_ctx: int = llama.llama_n_ctx(self.ctx)
        self.n_ctx_seq: int = llama.llama_n_ctx_seq(self.ctx)  # cells of each sequence's stream
        self.n_streams = n_seq_max  # one KV stream per sequence (`kv_unified` off)
        self.memory = llama.llama_get_memory(self.ctx)
        self.batch = llama.llama_batch_init(n_batch, 0, 1)
        self._pieces: dict[int, bytes] = {}
        self._special_pieces: dict[int, bytes] = {}
        self._piece_buffer = ctypes.create_string_buffer(256)
        self._row_type = ctypes.c_float * self.n_vocab
        self._rows: dict[int, np.ndarray[Any, np.dtype[np.float32]]] = {}  # logits row views by address

    def close(self) -> None:
        llama.llama_batch_free(self.batch)
        llama.llama_free(self.ctx)
        if self.owns_weights:
            llama.llama_model_free(self.model)

    # --- metadata ------------------------------------------------------------------------------------
    def meta(self, key: str) -> str | None:
        size = 1 << 16
        buffer = ctypes.create_string_buffer(size)
        n = llama.llama_model_meta_val_str(self.model, key.encode(), buffer, size)
        if n < 0:
            return None
        if n >= size:
            buffer = ctypes.create_string_buffer(n + 1)
            llama.llama_model_meta_val_str(self.model, key.encode(), buffer, n + 1)
        return buffer.value.decode(errors="replace")

    def token_text(self, token: int) -> str:
        return self.piece(token, special=True).decode(errors="replace")

    @property
    def add_bos(self) -> bool:
        return bool(llama.llama_vocab_get_add_bos(self.vocab))

    @property
    def bos(self) -> int:
        return int(llama.llama_vocab_bos(self.vocab))

    @property
    def eos(self) -> int:
        return int(llama.llama_vocab_eos(self.vocab))

    # --- tokens -----------------------------------------------------------------------------------------
    def tokenize(self, text: str, *, add_special: bool) -> list[int]:
        data = text.encode()
        capacity = len(data) + 16
        tokens = (llama.llama_token * capacity)()
        n = llama.llama_tokenize(self.vocab, data, len(data), tokens, capacity, add_special, True)
        if n < 0:
            capacity = -n
            tokens = (llama.llama_token * capacity)()
            n = llama.llama_tokenize(self.vocab, data, len(data), tokens, capacity, add_special, True)
        return list(tokens[:n])

    def piece(self, token: int, *, special: bool = False) -> bytes:
        """The bytes of one token; control tokens render as nothing unless `special`."""
        cache = self._special_pieces if special else self._pieces
        cached = cache.get(token)
        if cached is not None:
            return cached
        buffer = self._piece_buffer
        n = llama.llama_token_to_piece(self.vocab, token, buffer, len(buffer), 0, special)
        if n < 0:
            buffer = ctypes.create_string_buffer(-n)
            n = llama.llama_token_to_piece(self.vocab, token, buffer, len(buffer), 0, special)
        value = buffer.raw[:n]
        cache[token] = value
        return value

    def is_eog(self, token: int) -> bool:
        return bool(llama.llama_vocab_is_eog(self.vocab, token))

    # --- KV cache -----------------------------------------------------------------------------------------
    def seq_clear(self, seq: int) -> None:
        llama.llama_memory_seq_rm(self.memory, seq, -1, -1)

    def seq_truncate(self, seq: int, keep: int) -> bool:
        return bool(llama.llama_memory_seq_rm(self.memory, seq, keep, -1))

    def seq_copy(self, src: int, dst: int, length: int) -> None:
        """Make `dst` hold the first `length` positions of `src`, replacing whatever it held.

        Across streams llama.cpp copies only whole buffers (a partial range asserts), queued until the next
        decode; so copy everything, then drop the tail."""
        llama.llama_memory_seq_cp(self.memory, src, dst, -1, -1)
        llama.llama_memory_seq_rm(self.memory, dst, length, -1)

    # --- decoding ----------------------------------------------------------------------------------------
    def decode(self) -> int:
        return int(llama.llama_decode(self.ctx, self.batch))

    def logits(self, row: int) -> np.ndarray[Any, np.dtype[np.float32]]:
        """The logits of one output row, as a writable view into llama.cpp's buffer.

        The views are kept by address: right after a decode has streamed the weights through the caches, building
        one (`np.ctypeslib.as_array`) cost ~50 µs of a token's ~300 µs of sampling, at every step. An address
        llama.cpp hands out holds a whole row for as long as it does, so a view kept for it stays right."""
        address = ctypes.addressof(llama.llama_get_logits_ith(self.ctx, row).contents)
        view = self._rows.get(address)
        if view is None:
            if len(self._rows) >= _MAX_ROW_VIEWS:  # output buffers reallocated many times over: start afresh
                self._rows.clear()
            view = np.frombuffer(self._row_type.from_address(address), dtype=np.float32)
            self._rows[address] = view
        return view

    def logprobs(self, row: int, token: int, top: int) -> TokenLogprob:
        """Log-probabilities under the model's distribution (before temperature and penalties; under a
        constraint, of the constrained distribution)."""
        logits = self.logits(row)
        peak = float(logits.max())
        log_total = peak + float(np.log(np.exp(logits - peak, dtype=np.float64).sum()))
        alternatives: list[TopToken] = []
        if top:
            best = np.argpartition(logits, -top)[-top:]
            best = best[np.argsort(logits[best])[::-1]]
            for candidate in best.tolist():
                if not np.isfinite(logits[candidate]):
                    continue  # masked out by a constraint: not a possible token
                raw = self.piece(candidate, special=True)
                alternatives.append(TopToken(raw.decode(errors="replace"), raw, float(logits[candidate]) - log_total))
        raw = self.piece(token, special=True)
        return TokenLogprob(raw.decode(errors="replace"), raw, float(logits[token]) - log_total, alternatives)
