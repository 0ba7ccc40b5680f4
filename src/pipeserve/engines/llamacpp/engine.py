"""The llama.cpp engine: a GGUF model served in-process with continuous batching on one engine thread, which
ends while the model is idle (worker.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from concurrent.futures import Future
from pathlib import Path

from pydantic import ValidationError

from pipeserve.engines.base import Capabilities, Engine, EngineStats
from pipeserve.engines.llamacpp.model import LlamaModel
from pipeserve.engines.llamacpp.options import LlamaCppOptions
from pipeserve.engines.llamacpp.output import TextGeneration, reading
from pipeserve.engines.llamacpp.scheduler import Scheduler
from pipeserve.engines.llamacpp.slots import Job, TextDelta
from pipeserve.engines.llamacpp.templating import CHATML_TEMPLATE, ChatTemplate
from pipeserve.engines.llamacpp.weights import CONVERSIONS, Choice, choose, convert, source_key
from pipeserve.engines.llamacpp.worker import EngineThread, Turn
from pipeserve.errors import (
    ContextLengthExceededError,
    EngineError,
    EngineUnavailableError,
    InvalidRequestError,
    PipeserveError,
)
from pipeserve.params import ChatParams
from pipeserve.settings import ModelConfig

log = logging.getLogger("pipeserve.llamacpp")

# One request's share of a step, for the event loop: generation, deltas, cached tokens, done, failure.
Outgoing = tuple[TextGeneration, list[TextDelta], int, bool, PipeserveError | None]

_RELOAD_PAUSE = 5.0  # seconds between attempts to reload a model after a crash
_CLOSE_WAIT = 30.0  # seconds to wait for the engine's last turn at shutdown
# An engine that has not begun a step for this long is reported as stalled: a busy step takes well under a
# second, and an idle engine's thread either turns every second or has ended (worker.py).
_STALL_AFTER = 60.0
_SOLO_BATCH = 64  # the solo lane decodes one token a step; a small batch keeps its compute buffers small
_ACCEPT_CHECK = 1.0  # seconds between looks at whether the engine a request waits on is still the running one


class LlamaCppEngine(Engine):
    def __init__(self, config: ModelConfig, *, max_waiting: int, cache_dir: Path | None = None) -> None:
        try:
            self.options = LlamaCppOptions.model_validate(config.engine_options)
        except ValidationError as exc:
            raise ValueError(f"model {config.id!r}: invalid llama.cpp options: {exc}") from exc
        self.model_id = config.id
        self.max_waiting = max_waiting
        self.cache_dir = cache_dir  # converted weights live here (weights.py)
        self._weights: Choice | None = None  # the file and repack setting served, once chosen
        self.capabilities = Capabilities(reasoning=self.options.reasoning)
        self._model: LlamaModel | None = None
        self._scheduler: Scheduler | None = None
        self._template: ChatTemplate | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = EngineThread(self.turn, f"engine:{config.id}")  # makes every call into llama.cpp
        self._ready: Future[None] = Future()  # the model's first load: done, or failed
        self._ended: Future[None] | None = None  # from start: set when the engine is done (closed, or failed to load)
        self._retry_at = 0.0  # after a failed reload, when to try again
        self._outbox: list[Outgoing] = []  # what the current step dispatched, sent in one hop by `_flush`
        self._problem: str | None = None  # why the engine can't serve right now (restarting after a crash)
        self._closing = False
        self.restarts = 0

    # --- lifecycle ---------------------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._ended = Future()
        self._thread.start()  # the model loads in its first turn
        await asyncio.wrap_future(self._ready)

    def turn(self) -> Turn:
        """On the engine thread: a turn of the scheduler, or the model's (re)load, or the engine's end. A
        turn that ends by anything but an Exception the scheduler absorbs (a crash of the turn itself) fails
        its requests, and the next turn starts over on a freshly loaded model."""
        scheduler = self._scheduler
        if self._closing:
            if scheduler is not None:
                self._unload(scheduler, EngineError("the server is shutting down"))
            self._end()
            return "done"
        if scheduler is None:
            return self._reload()
        try:
            if scheduler.turn():
                return "busy"
            return "wait" if scheduler.long is not None else "idle"  # the long lane is freed on a later turn
        except BaseException as exc:
            self._problem = f"the engine stopped on an error and is restarting: {exc!r}"
            log.critical("%s: the engine loop stopped; restarting it", self.model_id, exc_info=exc)
            self.restarts += 1
            gone = EngineUnavailableError(f"The model {self.model_id} failed and is restarting; retry.")
            self._unload(scheduler, gone)
            return "busy"

    def _reload(self) -> Turn:
        if time.monotonic() < self._retry_at:
            return "wait"
        try:
            model, scheduler = self._load()
        except Exception as exc:
            if not self._ready.done():
                self._ready.set_exception(exc)
                self._end()
                return "done"
            log.critical("%s: could not reload the model: %s; retrying", self.model_id, exc)
            self._problem = f"the engine is restarting and could not reload the model: {exc}"
            self._retry_at = time.monotonic() + _RELOAD_PAUSE
            return "wait"
        self._model, self._scheduler, self._problem = model, scheduler, None
        if not self._ready.done():
            self._ready.set_result(None)
        return "busy"

    def _unload(self, scheduler: Scheduler, error: PipeserveError) -> None:
        self._scheduler = None  # new requests get a 503 from here on
        with contextlib.suppress(Exception):
            scheduler.abandon(error)
        scheduler.close_long()  # its context, before the weights it shares
        scheduler.close_solo()
        scheduler.model.close()

    def _end(self) -> None:
        if not self._ready.done():  # closed before its model ever loaded
            self._ready.set_exception(EngineUnavailableError(f"The model {self.model_id} was closed while loading."))
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(None)

    def _load(self) -> tuple[LlamaModel, Scheduler]:
        options = self.options
        threads = options.threads or os.cpu_count() or 1
        if self._weights is None:
            self._weights = self._choose_weights(threads)
        path = self._weights.path
        model = LlamaModel(
            path,
            n_ctx=options.total_cells,
            n_seq_max=options.max_sequences,
            n_batch=options.batch_size,
            threads=threads,
            repack=self._weights.repack,
        )
        scheduler: Scheduler | None = None
        try:
            source = options.chat_template or model.meta("tokenizer.chat_template") or CHATML_TEMPLATE
            self._template = ChatTemplate(
                source, bos_token=model.token_text(model.bos), eos_token=model.token_text(model.eos)
            )
            scheduler = Scheduler(
                model,
                n_slots=options.max_sequences,
                batch_size=options.batch_size,
                prefill_chunk=options.prefill_chunk,
                max_waiting=self.max_waiting,
                dispatch=self._dispatch,
                flush=self._flush,
                wake=self._thread.wake,
            )
            cells = options.long_context if options.long_context is not None else model.n_ctx_train
            if model.n_ctx_train:
                cells = min(cells, model.n_ctx_train)
            if cells > model.n_ctx_seq:

                def lane() -> Scheduler:
                    context = LlamaModel(
                        path, n_ctx=cells, n_seq_max=1, n_batch=options.batch_size, threads=threads, weights=model
                    )
                    return Scheduler(
                        context,
                        n_slots=1,
                        batch_size=options.prefill_chunk,  # each of its steps stays short for the batch
                        prefill_chunk=options.prefill_chunk,
                        max_waiting=self.max_waiting,
                        dispatch=self._dispatch,
                    )

                scheduler.long_lane(lane, cells)
            solo = self._weights.solo
            if solo is not None and options.solo_lane:
                scheduler.solo_lane(
                    LlamaModel(
                        solo.path,
                        n_ctx=model.n_ctx_seq,
                        n_seq_max=1,
                        n_batch=_SOLO_BATCH,
                        threads=threads,
                        repack=solo.repack,
                    )
                )
        except BaseException:
            if scheduler is not None:
                scheduler.close_solo()
            model.close()
            raise
        log.info(
            "%s: loaded %s%s (%d sequences of %d KV cells each%s%s)",
            self.model_id,
            path,
            ", repacked" if self._weights.repack else "",
            options.max_sequences,
            model.n_ctx_seq,
            f", a long-context lane of {scheduler.long_cells} when needed" if scheduler.long_cells else "",
            f", a solo lane on {self._weights.solo.name}" if scheduler.solo is not None and self._weights.solo else "",
        )
        return model, scheduler

    def _choose_weights(self, threads: int) -> Choice:
        source = self.options.resolved_path()
        wanted = self.options.weights
        if wanted == "original" or self.cache_dir is None:
            return Choice(source, repack=False, name="original")
        if wanted == "auto":
            return choose(source, self.cache_dir, threads=threads)
        target = self.cache_dir / f"{source.stem}.{source_key(source)}.{wanted}.gguf"
        if not target.is_file():
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            log.info("%s: converting %s to %s", self.model_id, source.name, wanted)
            convert(source, target, CONVERSIONS[wanted], threads=threads)
        return Choice(target, repack=False, name=wanted)

    async def close(self) -> None:
        self._closing = True  # the engine's next turn fails what it holds, frees its model and ends
        self._thread.wake()
        if self._ended is not None:
            # A turn wedged inside llama.cpp must not hold the process: the thread is a daemon thread.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(self._ended)), _CLOSE_WAIT)
        self._scheduler = None

    def problem(self) -> str | None:
        thread = self._thread
        if self._scheduler is not None and not thread.alive and not thread.parked:
            return "the engine thread has stopped"
        if self._problem is not None:
            return self._problem
        scheduler = self._scheduler
        if scheduler is not None and not thread.parked:  # a parked engine is idle, not stalled
            stalled = time.monotonic() - max(scheduler.heartbeat, thread.started_at)
            if stalled > _STALL_AFTER:
                return f"the engine has not completed a step for {stalled:.0f} s"
        return None

    # --- requests -------------------------------------------------------------------------------------------
    @property
    def context_window(self) -> int:
        """The most tokens one request may use: the long-context lane's, else a sequence's window."""
        scheduler = self._scheduler
        if scheduler is not None and scheduler.long_cells:
            return scheduler.long_cells
        return self._window(self._require_model())

    @staticmethod
    def _window(model: LlamaModel) -> int:
        return min(model.n_ctx_train or model.n_ctx_seq, model.n_ctx_seq)

    async def generate(self, params: ChatParams) -> TextGeneration:
        scheduler = self._scheduler
        problem = self.problem()
        if scheduler is None or self._template is None or problem is not None:
            raise EngineUnavailableError(
                f"The model {self.model_id} can't serve right now ({problem or 'it is not running'}). "
                "Retry in a moment; GET /health shows when it is back."
            )
        # Under tool_choice none the model is not told about the tools: it can't call them here anyway.
        tools = params.tools if params.tool_choice != "none" else ()
        prompt_text = self._template.render(params.messages, tools)
        if params.sampling.logit_bias:
            self._check_logit_bias(params)
        output = reading(params)
        job = Job(
            prompt=[],
            n=params.n,
            max_tokens=params.max_tokens or 0,
            sampling=params.sampling,
            top_logprobs=params.top_logprobs if params.logprobs else None,
            dispatch_to=None,
            schema=output.schema,
        )
        generation = TextGeneration(
            params,
            lambda choice, keep_cache: scheduler.post("cancel", (job, choice, keep_cache)),
            self.options.think_tags if self.options.reasoning else None,
        )
        job.dispatch_to = generation
        accepted: Future[None] = Future()
        scheduler.post("submit", (job, lambda j: self._prepare(j, prompt_text, params), accepted))
        answer = asyncio.wrap_future(accepted)
        try:
            while not (await asyncio.wait({answer}, timeout=_ACCEPT_CHECK))[0]:
                if self._scheduler is not scheduler:
                    # The loop crashed after this request reached its inbox: nobody will ever answer it.
                    answer.cancel()
                    raise EngineUnavailableError(f"The model {self.model_id} failed and is restarting; retry.")
            answer.result()
        except asyncio.CancelledError:
            # The client left while the engine was accepting the request. If it was accepted meanwhile, nobody
            # would read or stop it: tell the engine to drop it (the inbox keeps order, so it follows the submit).
            answer.cancel()
            generation.cancel()
            raise
        generation.usage.prompt_tokens = len(job.prompt)
        return generation

    def _prepare(self, job: Job, prompt_text: str, params: ChatParams) -> None:
        """On the engine thread: tokenize and fit the request into the context window."""
        model = self._require_model()
        add_bos = model.add_bos and not prompt_text.startswith(model.token_text(model.bos))
        job.prompt = model.tokenize(prompt_text, add_special=add_bos)
        window = self.context_window  # the whole context one request may use (the long lane's, if any)
        short = self._window(model)  # one sequence's window in the batch
        prompt = len(job.prompt)
        if job.schema is not None:
            self._prepare_constraint(job, params)
        sequences = self.options.max_sequences
        if params.n > sequences:
            raise InvalidRequestError(
                f"This model decodes at most {sequences} sequences at once, so n may be at most {sequences} "
                f"(got {params.n}). Lower n, or raise the model's max_sequences.",
                param="n",
            )
        # Each choice decodes in its own KV stream, which must hold prompt and completion: one of the batch's
        # (`short` cells) when they fit, else the long-context lane's.
        hint = ""
        if window < model.n_ctx_train or not model.n_ctx_train:  # the server's configuration is the limit
            hint = (
                f" (Each sequence gets {window} of this server's {model.n_ctx} KV cells: its operator can raise "
                "the model's context_size or lower its max_sequences.)"
            )
        if params.max_tokens is None:
            # No budget asked: the batch's window when the prompt leaves at least half of it for the answer;
            # else the whole context, in the long lane.
            job.long = window > short and 2 * prompt > short
            job.max_tokens = (window if job.long else short) - prompt
            if job.max_tokens < 1:
                raise ContextLengthExceededError(
                    f"This model's maximum context length is {window} tokens. However, your messages "
                    f"resulted in {prompt} tokens. Please reduce the length of the messages.{hint}",
                    param="messages",
                )
        elif prompt + params.max_tokens > window:
            raise ContextLengthExceededError(
                f"This model's maximum context length is {window} tokens. However, you requested "
                f"{prompt + params.max_tokens} tokens ({prompt} in the messages, {params.max_tokens} in the "
                f"completion). Please reduce the length of the messages or completion.{hint}",
                param="messages",
            )
        else:
            job.long = prompt + params.max_tokens > short
        if job.long and params.n > 1:
            raise InvalidRequestError(
                f"This request needs {prompt + job.max_tokens} tokens of context, more than a sequence of the batch "
                f"holds ({short}): it runs in the long-context lane, which decodes one sequence, so n must be 1 "
                f"(got {params.n}). Lower n, or shorten the request.",
                param="n",
            )

    def _prepare_constraint(self, job: Job, params: ChatParams) -> None:
        """Compile the output's grammar (a 400 for a schema llguidance can't enforce). A budget too small for
        a valid document is no error, as with OpenAI: the output then runs out at the budget, finish_reason
        `length` (see `Guide`)."""
        assert job.schema is not None and self._scheduler is not None
        calls = reading(params).mode == "tool_json"
        job.grammar = self._scheduler.guides.compile_output(job.schema, params, calls=calls)

    def _check_logit_bias(self, params: ChatParams) -> None:
        n_vocab = self._require_model().n_vocab
        for token, _ in params.sampling.logit_bias:
            if not 0 <= token < n_vocab:
                raise InvalidRequestError(
                    f"logit_bias names token {token}, but this model's token ids run from 0 to {n_vocab - 1}.",
                    param="logit_bias",
                )

    def _dispatch(self, job: Job, deltas: list[TextDelta], done: bool) -> None:
        """On the engine thread: queue a step's deltas for the request's generation (sent by `_flush`)."""
        generation = job.dispatch_to
        assert isinstance(generation, TextGeneration)
        self._outbox.append((generation, deltas, job.cached_tokens, done, job.failed))

    def _flush(self) -> None:
        """On the engine thread: hand what a step dispatched, for every request, to the event loop in one hop.

        One `call_soon_threadsafe` per step rather than per request: each call writes to the loop's self-pipe,
        and a woken loop contends with this thread for the GIL while it sets up the next step."""
        if not self._outbox:
            return
        outbox, self._outbox = self._outbox, []
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the event loop is closed: the server is gone
            self._loop.call_soon_threadsafe(self._deliver, outbox)

    @staticmethod
    def _deliver(outbox: list[Outgoing]) -> None:
        """On the event loop: feed each generation its deltas, or its failure."""
        for generation, deltas, cached_tokens, done, failed in outbox:
            if failed is not None:
                generation.fail(failed)
            else:
                generation.push_text(deltas, cached_tokens, done)

    def stats(self) -> EngineStats:
        if self._scheduler is None:
            return EngineStats(0, 0, 0, 0)
        return self._scheduler.snapshot

    def _require_model(self) -> LlamaModel:
        if self._model is None:
            raise EngineUnavailableError(f"the model {self.model_id} is not loaded")
        return self._model
