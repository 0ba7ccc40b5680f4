"""Continuous batching over one llama.cpp context, in the turns of one engine thread (worker.py).

Each sequence (slot) has its own KV stream of `window` cells. Each step decodes, in one `llama_decode`, the
next token of every generating sequence plus chunks of waiting prompts. Requests are admitted between steps;
a prompt prefix already in the KV cache (of a running sequence, or of an idle one whose stream still holds
its finished sequence) is reused or copied instead of computed; a cancelled request's sequences are removed
before the next step.

A request too long for one window (`Job.long`) runs in the long-context lane, when the engine gives one: a
second scheduler over a context of its own on the same weights, with one stream as long as the model's
context, stepped right after this one in the same loop. Its steps are capped at `prefill_chunk` tokens, so
that a long prompt delays the batch's streams by one short step at a time. Its context (180 MiB of KV cache
for SmolLM2's 8,192 tokens) is made for the first long request and freed after `LANE_IDLE_S` without one.

A sequence decoding alone (one request, nothing else prefilling or waiting) runs in the solo lane, when the
engine gives one: a context of one stream on the same model in another weight format, the one that decodes a
lone sequence fastest (its speed is bound by the weight bytes read per token, so a smaller format wins there,
while batched steps and prompts run faster in the batch's format). Its KV entries move there when it is left
alone and back at the next request, cancel or finish (`SequenceMover`), so that between steps the batch's
streams hold exactly each slot's tokens, as they do without the lane.
"""

from __future__ import annotations

import codecs
import logging
import queue
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from pipeserve.engines.base import EngineStats
from pipeserve.engines.llamacpp import sampling
from pipeserve.engines.llamacpp.guided import Guide, GuideCompiler
from pipeserve.engines.llamacpp.model import LlamaModel, SequenceMover
from pipeserve.engines.llamacpp.slots import Job, Slot, TextDelta, common_prefix
from pipeserve.errors import EngineError, PipeserveError, RateLimitError

log = logging.getLogger("pipeserve.llamacpp")

Dispatch = Callable[["Job", list[TextDelta], bool], None]


def _nothing() -> None:
    pass


# A job waits for a prompt being prefilled only when that saves at least this many tokens of prefill.
_FOLLOW_GAIN = 16
LANE_IDLE_S = 60.0  # seconds without a long request before the long-context lane's context is freed
# While the engine works, its statistics (/metrics) are rebuilt at most this often: rebuilding them after every
# step cost ~30 µs of a lone sequence's ~10 ms token. An engine going idle rebuilds them at once.
SNAPSHOT_EVERY_S = 0.05


class Scheduler:
    """Owns the slots and takes the engine's turns. Only the engine thread calls its methods, but `post`."""

    def __init__(
        self,
        model: LlamaModel,
        *,
        n_slots: int,
        batch_size: int,
        max_waiting: int,
        dispatch: Dispatch,
        prefill_chunk: int | None = None,
        flush: Callable[[], None] = _nothing,
        wake: Callable[[], None] = _nothing,
    ) -> None:
        self.model = model
        self.guides = GuideCompiler(model)
        self.slots = [Slot(seq) for seq in range(n_slots)]
        self.batch_size = batch_size
        self.prefill_chunk = prefill_chunk or batch_size
        self.window = model.n_ctx_seq
        self.max_waiting = max_waiting
        self.dispatch = dispatch  # per job and step; `flush` then sends what a step dispatched
        self.flush = flush
        self.waiting: deque[Job] = deque()
        self.prefilling: list[Job] = []  # admitted, prompt not yet fully decoded
        self.running: list[Job] = []
        self.inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self.wake = wake  # tells the engine thread that the inbox has a command
        self.heartbeat = time.monotonic()  # when the loop last began a turn; a stalled engine shows in /health
        self.snapshot = EngineStats(0, 0, 0, model.n_ctx)
        self._snapshot_at = 0.0
        self.long: Scheduler | None = None  # the long-context lane, while it exists; only its queues and steps
        self.long_cells = 0  # its context, when the engine gives one (0: none)
        self._make_long: Callable[[], Scheduler] | None = None
        self._long_used = 0.0
        self.solo: LlamaModel | None = None  # the solo lane's context (one stream of `window` cells), if given
        self._solo_slot: Slot | None = None  # the slot whose sequence decodes there now
        self._mover = SequenceMover()

    def long_lane(self, make: Callable[[], Scheduler], cells: int) -> None:
        """Give this scheduler a long-context lane of `cells`, made by `make` when first needed."""
        self._make_long, self.long_cells = make, cells

    def solo_lane(self, context: LlamaModel) -> None:
        """Decode a lone sequence in `context`: the same model in a weight format faster for one sequence."""
        if context.n_ctx_seq < self.window:
            raise ValueError(f"the solo lane's context holds {context.n_ctx_seq} cells, a window is {self.window}")
        self.solo = context

    def close_solo(self) -> None:
        if self.solo is not None:
            self._solo_slot = None
            solo, self.solo = self.solo, None
            solo.close()

    def close_long(self) -> None:
        if self.long is not None:
            lane, self.long = self.long, None
            lane.model.close()

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.prefilling or self.running)

    # --- the loop ------------------------------------------------------------------------------------
    def post(self, command: str, payload: Any) -> None:
        """From any thread: a command for the engine thread (submit, cancel), which it reads at its next turn."""
        self.inbox.put((command, payload))
        self.wake()

    def turn(self) -> bool:
        """One turn on the engine thread: the commands received, then a step of each lane that has work.
        Returns whether there is more to do at once; otherwise the thread sleeps until a command comes."""
        self.heartbeat = time.monotonic()
        try:
            self._turn()
        except Exception as exc:  # whatever one request or one bug does, the engine thread carries on
            log.exception("engine step failed")
            self._fail_all(EngineError(f"the engine failed while generating: {exc}"), forget_cache=True)
        self.flush()
        idle = self._idle()
        if idle or self.heartbeat - self._snapshot_at >= SNAPSHOT_EVERY_S:
            self._update_snapshot()
        return not idle

    def _idle(self) -> bool:
        """Nothing to do in either lane: the loop's next turn waits for a command."""
        long = self.long
        return not (self.busy or (long is not None and long.busy))

    def _turn(self) -> None:
        long = self.long
        self._drain_inbox()
        self._admit()
        if self.prefilling or self.running:
            self._step()
        if long is not None:
            long._admit()
            if long.prefilling or long.running:
                long._step()
            if long.busy:
                self._long_used = time.monotonic()
            elif time.monotonic() - self._long_used > LANE_IDLE_S:
                self.close_long()

    def _drain_inbox(self) -> None:
        try:
            command, payload = self.inbox.get_nowait()
        except queue.Empty:
            return
        # A new request, or a cancel, may touch any stream of the batch's context (a prefix copied, a stream
        # cleared): the lone sequence's entries go back there first.
        self._leave_solo()
        while True:
            if command == "submit":
                self._submit(*payload)
            elif command == "cancel":
                self._cancel(*payload)
            try:
                command, payload = self.inbox.get_nowait()
            except queue.Empty:
                return

    def _submit(self, job: Job, prepare: Callable[[Job], None], accepted: Future[None]) -> None:
        """Tokenize and check a new request here, on the engine thread, then queue it."""
        if not accepted.set_running_or_notify_cancel():
            # The client gave up while the request waited to be accepted; from here on the future can't be
            # cancelled, so setting its result below is safe.
            return
        try:
            prepare(job)
        except PipeserveError as error:
            accepted.set_exception(error)
            return
        except Exception as exc:  # a bug here must fail this request, not the engine thread
            log.exception("could not prepare a request")
            accepted.set_exception(EngineError(f"the engine could not prepare the request: {exc}"))
            return
        if job.long and self.long is None and self._make_long is not None:
            self.long = self._make_long()
            self._long_used = time.monotonic()
        lane = self.long if job.long and self.long is not None else self
        lane.waiting.append(job)
        lane._admit()
        if job in lane.waiting and len(lane.waiting) > self.max_waiting:
            lane.waiting.remove(job)
            accepted.set_exception(
                RateLimitError(
                    f"This model is at capacity and {self.max_waiting} requests are already waiting; "
                    "retry after a moment.",
                    retry_after=1,
                )
            )
            return
        accepted.set_result(None)

    def _cancel(self, job: Job, choice: int | None, keep_cache: bool) -> None:
        """Stop one choice or the whole job; its sequences stop before the next step."""
        log.debug("stop job %x choice %s keep_cache %s", id(job), choice, keep_cache)
        if job.long and self.long is not None:
            self.long._cancel(job, choice, keep_cache)
            return
        if job in self.waiting:
            if choice is None:
                job.cancelled = True
                self.waiting.remove(job)
            return
        for slot in job.slots:
            if slot.job is job and (choice is None or slot.choice == choice):
                slot.release(self.model, keep_cache=keep_cache)
        if choice is None or all(slot.job is not job for slot in job.slots):
            job.cancelled = True
            self._forget(job)

    def _forget(self, job: Job) -> None:
        if job in self.prefilling:
            self.prefilling.remove(job)
        if job in self.running:
            self.running.remove(job)

    def _fail_all(self, error: PipeserveError, *, forget_cache: bool = False) -> None:
        """End every request with `error`. After a failed step the KV cache may hold half-written entries,
        so `forget_cache` empties idle streams too rather than reuse them as prefixes."""
        if self.long is not None:
            self.long._fail_all(error, forget_cache=forget_cache)
        if self._solo_slot is not None and self.solo is not None:
            self._solo_slot = None
            self.solo.seq_clear(0)
        for job in [*self.waiting, *self.prefilling, *self.running]:
            for slot in job.slots:
                if slot.job is job:
                    slot.release(self.model, keep_cache=False)
            job.failed = error
            self.dispatch(job, [], True)
        self.waiting.clear()
        self.prefilling.clear()
        self.running.clear()
        if forget_cache:
            for slot in self.slots:
                slot.clear(self.model)

    def abandon(self, error: PipeserveError) -> None:
        """When the engine stops, or its turn itself crashed: fail what it held and what still waits in the
        inbox, so that no client waits for an engine that is gone."""
        self._fail_all(error)
        while True:
            try:
                command, payload = self.inbox.get_nowait()
            except queue.Empty:
                break
            if command == "submit":
                accepted: Future[None] = payload[2]
                if accepted.set_running_or_notify_cancel():
                    accepted.set_exception(error)
        self.flush()

    def _update_snapshot(self) -> None:
        self._snapshot_at = self.heartbeat
        lanes = [self] if self.long is None else [self, self.long]
        slots = [slot for lane in lanes for slot in lane.slots]
        self.snapshot = EngineStats(
            running_sequences=sum(1 for slot in slots if slot.job is not None),
            waiting_requests=sum(len(lane.waiting) for lane in lanes),
            kv_cells_used=sum(len(slot.tokens) for slot in slots if slot.job is not None),
            kv_cells_total=sum(lane.model.n_ctx for lane in lanes),
            kv_cells_cached=sum(len(slot.tokens) for slot in slots if slot.job is None),
        )

    # --- admission -------------------------------------------------------------------------------------
    def _admit(self) -> None:
        while self.waiting:
            job = self.waiting[0]
            free = [slot for slot in self.slots if slot.job is None]
            if len(free) < job.n:
                return
            source, shared = self._best_prefix(job.prompt)
            shared = min(shared, len(job.prompt) - 1)  # the last prompt token is decoded for its logits
            leader, planned = self._best_planned(job.prompt)
            if leader is not None and planned > shared + _FOLLOW_GAIN:
                # A prompt being prefilled right now shares more: wait for it and copy, rather than
                # computing the same prefix twice (requests built on one template arrive together).
                source, shared = None, 0
            else:
                leader = None
            # Empty streams first, then the least recently used cached one; ties to low ids, because llama.cpp
            # splits a step into one sub-batch per run of consecutive sequence ids.
            by_age = sorted(free, key=lambda slot: (bool(slot.tokens), slot.last_used, slot.seq))
            host = by_age[0]
            if source is not None and source.job is None and (source is host or 2 * shared >= len(source.tokens)):
                # Run in the idle stream that holds the prefix, unless that would throw away more of its cache
                # than the request reuses (prompts that share only a template's first tokens): then the prefix
                # is copied into the least valuable stream, and the other prompt stays cached for its own kind.
                host = source
            siblings = [slot for slot in by_age if slot is not host][: job.n - 1]
            self.waiting.popleft()
            self._place(job, host, source, shared, siblings)
            if leader is not None:
                job.follow = (leader, planned)

    def _best_planned(self, prompt: list[int]) -> tuple[Job | None, int]:
        """The prefilling job whose prompt shares the longest prefix with `prompt` (KV not computed yet)."""
        best: Job | None = None
        best_len = 0
        for job in self.prefilling:
            if job.follow is None:
                length = min(common_prefix(job.prompt, prompt), len(prompt) - 1)
                if length > best_len:
                    best, best_len = job, length
        return best, best_len

    def _caught_up(self, job: Job) -> bool:
        """Whether a following job may prefill: its leader computed the shared prefix (copied now) or
        stopped prefilling (whatever it computed is copied)."""
        assert job.follow is not None
        leader, wanted = job.follow
        source = leader.slots[0]
        have = min(common_prefix(source.tokens, job.prompt), wanted)
        if have < wanted and leader in self.prefilling:
            return False
        host = job.slots[0]
        if have > 0:
            self.model.seq_copy(source.seq, host.seq, have)
            host.tokens = job.prompt[:have]
            job.cached_tokens = have
        job.follow = None
        return True

    def _best_prefix(self, prompt: list[int]) -> tuple[Slot | None, int]:
        best: Slot | None = None
        best_len = 0
        for slot in self.slots:
            if slot.tokens:
                length = common_prefix(slot.tokens, prompt)
                # On a tie an idle stream wins: the request then runs in it, with no stream copy.
                if length > best_len or (
                    length == best_len and length and best is not None and best.job is not None and slot.job is None
                ):
                    best, best_len = slot, length
        return best, best_len

    def _place(self, job: Job, host: Slot, source: Slot | None, shared: int, siblings: list[Slot]) -> None:
        model = self.model
        if source is host:
            if not model.seq_truncate(host.seq, shared):
                host.clear(model)
                shared = 0
            host.tokens = host.tokens[:shared]
        elif source is not None and shared > 0:
            model.seq_copy(source.seq, host.seq, shared)
            host.tokens = job.prompt[:shared]
        else:
            host.clear(model)
            shared = 0
        for sibling in siblings:
            sibling.clear(model)
        job.cached_tokens = shared
        job.slots = [host, *siblings]
        for choice, slot in enumerate(job.slots):
            slot.job = job
            slot.choice = choice
            slot.generated = 0
            slot.pending = None
            slot.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            slot.sampler = sampling.build_sampler(
                job.sampling,
                n_vocab=model.n_vocab,
                max_tokens=job.max_tokens,
                seed=sampling.choice_seed(job.sampling.seed, choice),
            )
            if job.grammar is not None and job.schema is not None:
                slot.guide = Guide(self.guides, job.grammar, job.schema)
        self.prefilling.append(job)

    # --- one step ------------------------------------------------------------------------------------
    def _step(self) -> None:
        if self.solo is not None:
            alone = self._alone()
            if alone is not self._solo_slot:
                self._leave_solo()
                if alone is not None and not self._enter_solo(alone):
                    alone = None
            if alone is not None:
                self._solo_step(alone)
                return
        # seq -> (tokens, first position, whether the last one needs logits); each sequence is either
        # decoding one token or prefilling one chunk.
        work: dict[int, tuple[list[int], int, bool]] = {}
        decoding: list[Slot] = []
        for job in self.running:
            for slot in job.slots:
                if slot.job is job and slot.pending is not None:
                    work[slot.seq] = ([slot.pending], len(slot.tokens), True)
                    decoding.append(slot)
        count = len(decoding)
        chunks: list[tuple[Job, list[int], bool]] = []  # job, prompt chunk, whether it ends the prompt
        # While sequences decode, prompts advance by short chunks so that each step stays short for them.
        limit = self.batch_size if count == 0 else min(self.batch_size, count + self.prefill_chunk)
        for job in self.prefilling:
            budget = limit - count
            if budget <= 0:
                break
            if job.follow is not None and not self._caught_up(job):
                continue
            host = job.slots[0]
            start = len(host.tokens)
            chunk = job.prompt[start : start + budget]
            last = start + len(chunk) == len(job.prompt)
            work[host.seq] = (chunk, start, last)
            count += len(chunk)
            chunks.append((job, chunk, last))
        if count == 0:
            return
        fillers = self._fill_holes(work, count)
        count += len(fillers)
        # In sequence order: llama.cpp packs only runs of consecutive sequence ids into one sub-batch.
        batch = self.model.batch
        rows: dict[int, int] = {}
        i = 0
        for seq in sorted(work):
            tokens, start, wants_logits = work[seq]
            for offset, token in enumerate(tokens):
                self._put(batch, i, token, start + offset, seq, wants_logits and offset == len(tokens) - 1)
                i += 1
            if wants_logits:
                rows[seq] = i - 1
        batch.n_tokens = count
        try:
            status = self.model.decode()
        finally:
            self._drop_fillers(fillers)
        if status != 0:
            raise RuntimeError(f"llama_decode returned {status}")
        finishing: list[Job] = []
        for job, chunk, last in chunks:
            job.slots[0].tokens.extend(chunk)
            if last:
                finishing.append(job)

        outputs: dict[int, list[TextDelta]] = {}
        for slot in decoding:
            assert slot.pending is not None
            slot.tokens.append(slot.pending)
            self._sample(slot, self.model, rows[slot.seq], outputs)
        for job in finishing:
            self.prefilling.remove(job)
            host = job.slots[0]
            for sibling in job.slots[1:]:
                self.model.seq_copy(host.seq, sibling.seq, len(job.prompt))
                sibling.tokens = list(job.prompt)
            self.running.append(job)
            for slot in job.slots:
                self._sample(slot, self.model, rows[host.seq], outputs)
        self._deliver(outputs)

    def _fill_holes(self, work: dict[int, tuple[list[int], int, bool]], count: int) -> list[Slot]:
        """Give each idle sequence between two that step a throw-away token (added to `work`), so that the step's
        sequence ids are one run: llama.cpp computes a step in one sub-batch per run of consecutive ids, each a
        pass over all the weights (14 sequences decoding in 3 runs: 79 ms a step; with the 2 idle ones filled:
        54 ms, as 16). Returns the idle slots given one, whose token `_drop_fillers` removes after the step."""
        low, high = min(work), max(work)
        if high - low + 1 == len(work):
            return []
        fillers: list[Slot] = []
        for seq in range(low + 1, high):
            if seq in work:
                continue
            slot = self.slots[seq]
            end = len(slot.tokens)  # an idle slot's tokens are exactly its stream's entries
            if slot.job is not None or end + 1 >= self.window or count + len(fillers) >= self.batch_size:
                continue  # busy elsewhere (its own prefill waits), or no room: that run stays split
            work[seq] = ([slot.tokens[-1] if slot.tokens else self.model.bos], end, False)
            fillers.append(slot)
        return fillers

    def _drop_fillers(self, fillers: list[Slot]) -> None:
        for slot in fillers:
            if not self.model.seq_truncate(slot.seq, len(slot.tokens)):
                slot.clear(self.model)  # a memory that can't drop one position: the cached prefix goes instead

    # --- the solo lane -------------------------------------------------------------------------------
    def _alone(self) -> Slot | None:
        """The one sequence decoding, when nothing else runs, prefills or waits."""
        if self.waiting or self.prefilling or len(self.running) != 1:
            return None
        job = self.running[0]
        if len(job.slots) != 1:
            return None
        slot = job.slots[0]
        return slot if slot.job is job and slot.pending is not None else None

    def _enter_solo(self, slot: Slot) -> bool:
        assert self.solo is not None
        if not self._mover.move(self.model, slot.seq, self.solo, 0):
            # Not a passing condition (the lane holds a whole window): stop trying at every step.
            log.error("could not move a sequence's KV entries to the solo lane; closing the lane")
            self.close_solo()
            return False
        self._solo_slot = slot  # the batch's stream keeps its copy, replaced when the sequence comes back
        return True

    def _leave_solo(self) -> None:
        slot, solo = self._solo_slot, self.solo
        if slot is None or solo is None:
            return
        self._solo_slot = None
        moved = self._mover.move(solo, 0, self.model, slot.seq)
        solo.seq_clear(0)
        if moved:
            return
        log.error("could not move a sequence's KV entries back from the solo lane")
        slot.tokens = []  # its stream is empty now: a running sequence without its entries can't go on
        job = slot.job
        if job is not None:
            slot.release(self.model, keep_cache=False)
            job.failed = EngineError("the engine lost this request's KV cache while moving it; retry")
            self._forget(job)
            self.dispatch(job, [], True)

    def _solo_step(self, slot: Slot) -> None:
        solo = self.solo
        assert solo is not None and slot.pending is not None
        self._put(solo.batch, 0, slot.pending, len(slot.tokens), 0, True)
        solo.batch.n_tokens = 1
        status = solo.decode()
        if status != 0:
            raise RuntimeError(f"llama_decode returned {status} in the solo lane")
        slot.tokens.append(slot.pending)
        outputs: dict[int, list[TextDelta]] = {}
        self._sample(slot, solo, 0, outputs)
        if slot.job is None:
            self._leave_solo()  # finished: its entries go back to its stream, a prefix cache for what comes next
        self._deliver(outputs)

    @staticmethod
    def _put(batch: Any, i: int, token: int, pos: int, seq: int, logits: bool) -> None:
        batch.token[i] = token
        batch.pos[i] = pos
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = seq
        batch.logits[i] = logits

    def _sample(self, slot: Slot, model: LlamaModel, row: int, outputs: dict[int, list[TextDelta]]) -> None:
        """Sample from `model`'s logits at `row` (the batch's context or the solo lane's)."""
        job = slot.job
        assert job is not None and slot.decoder is not None
        if slot.guide is not None:
            slot.guide.mask(model.logits(row))
        token = sampling.sample(slot.sampler, model, row)
        slot.generated += 1
        logprobs = None
        finish: str | None = None
        tokens = 1
        if model.is_eog(token):
            text = slot.decoder.decode(b"", final=True)
            finish = "stop"
        else:
            before = slot.decoder.getstate()
            text = slot.decoder.decode(model.piece(token))
            closing = slot.guide.take(token, text, job.max_tokens - slot.generated) if slot.guide else None
            if closing is not None:
                # The budget is down to what closing the JSON takes: close it instead of taking the token.
                slot.decoder.setstate(before)
                text = slot.decoder.decode(b"", final=True) + closing
                tokens = self.guides.closing_tokens(closing)
                slot.generated += tokens - 1
                finish = "length"
            else:
                if job.top_logprobs is not None:
                    logprobs = [model.logprobs(row, token, job.top_logprobs)]
                slot.pending = token
                if slot.generated >= job.max_tokens or len(slot.tokens) + 1 >= self.window:
                    text += slot.decoder.decode(b"", final=True)
                    finish = "length"
        outputs.setdefault(id(job), []).append(TextDelta(slot.choice, text, tokens, logprobs, finish))
        if finish is not None:
            slot.release(self.model, keep_cache=True)

    def _deliver(self, outputs: dict[int, list[TextDelta]]) -> None:
        for job in list(self.running):
            deltas = outputs.get(id(job))
            if deltas is None:
                continue
            done = all(slot.job is not job for slot in job.slots)
            if done:
                self.running.remove(job)
            if not job.cancelled:
                self.dispatch(job, deltas, done)
