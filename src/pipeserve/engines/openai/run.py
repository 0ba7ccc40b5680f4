"""One client request in flight: the upstream streams feeding its generation (one, or n for a fan-out), the
stop of a choice or of all of them, and the usage they add up to."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

from pipeserve.engines.base import Delta, Generation, Usage
from pipeserve.engines.openai.stream import UpstreamStream
from pipeserve.errors import PipeserveError, UpstreamError
from pipeserve.upstream import UpstreamFailure

if TYPE_CHECKING:
    from pipeserve.engines.openai.engine import OpenAIEngine


class Run:
    def __init__(
        self,
        engine: OpenAIEngine,
        streams: list[UpstreamStream],
        *,
        choices: int,
        fan_out: bool,
        deadline: float,
        on_end: Callable[[Run], None],
    ) -> None:
        self.engine = engine
        self.streams = streams
        self.choices = choices
        self.fan_out = fan_out  # stream i carries choice i (each asked with n=1)
        self.deadline = deadline  # on the event loop's clock
        self.on_end = on_end
        self.generation = Generation(0, self._stop)
        self.stopped: set[int] = set()  # choices the pipeline needs no more of
        self.without_usage = False
        self._tasks: list[asyncio.Task[None]] = []
        self._remaining = len(streams)
        self._failed = False
        self._started: set[int] = set()  # pumps that ran (and so close their own stream)
        self._closing: set[asyncio.Task[None]] = set()  # closes of streams whose pump never ran
        # Each stream's deltas that finish a choice, held until the stream ends: the pipeline stops the
        # generation once every choice has finished and then reads the usage, which upstreams send after the
        # last finish; holding the finishes makes the usage final by then.
        self._held: list[list[Delta]] = [[] for _ in streams]
        self._finished: set[int] = set()  # choices whose finish is held: nothing more of them goes out
        self._seen: set[int] = set()  # choices of which something came

    def start(self) -> None:
        for position, stream in enumerate(self.streams):
            task = asyncio.create_task(self._pump(position, stream), name=f"upstream:{self.engine.model_id}")
            task.add_done_callback(functools.partial(self._cancelled_early, stream=stream))
            self._tasks.append(task)

    async def abort(self, error: PipeserveError) -> None:
        """End the run with `error` (the engine is closing) and close its upstream streams."""
        self._fail(error)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*self._closing, return_exceptions=True)

    # --- the pumps: one per upstream stream ----------------------------------------------------------------
    async def _pump(self, position: int, stream: UpstreamStream) -> None:
        self._started.add(position)
        try:
            # What was read while opening goes with what the pump reads next without waiting (often the rest
            # of the answer, which came in the same read): the pipeline, woken by the first push, runs once
            # this task waits, and takes them all as one step, one write to the client.
            self._push(position, stream.take_buffered())
            async with asyncio.timeout_at(self.deadline):
                while not stream.ended:
                    self._push(position, await stream.next())
            self._finish_unfinished(position, stream)
            self._count()
            held = [d for d in self._held[position] if d.index not in self.stopped]
            self._held[position] = []
            if held and not self._failed:
                self.generation.push(held, False)
        except UpstreamFailure as failure:
            if failure.replica_fault:
                stream.lease.failed(failure.error.message)
            self._fail(failure.error)
        except TimeoutError:
            self._fail(self.engine.total_timeout_error())
        finally:
            # Also on cancel: closing an unfinished answer closes its connection, so the upstream stops.
            # Shielded, so that a second cancel can't leave the connection half-closed. An answer read to its
            # end closes at once, without a task for the shield.
            try:
                if not stream.close_if_read():
                    with contextlib.suppress(Exception):
                        await asyncio.shield(stream.close())
            finally:
                self._stream_ended()

    def _cancelled_early(self, task: asyncio.Task[None], *, stream: UpstreamStream) -> None:
        """A pump cancelled before its first step never ran its `finally`: close its stream here."""
        position = self._tasks.index(task)
        if position not in self._started:
            self._started.add(position)
            self._closing.add(asyncio.create_task(self._close_unstarted(stream)))

    async def _close_unstarted(self, stream: UpstreamStream) -> None:
        try:
            await asyncio.shield(stream.close())
        finally:
            self._stream_ended()

    def _push(self, position: int, deltas: list[Delta]) -> None:
        if self.fan_out:
            for delta in deltas:
                delta.index = position
        wanted: list[Delta] = []
        for delta in deltas:
            if delta.index in self.stopped or delta.index in self._finished or not 0 <= delta.index < self.choices:
                continue  # an upstream that goes on after a choice's finish, or invents choices: not passed on
            self._seen.add(delta.index)
            if delta.finish_reason is not None:
                self._finished.add(delta.index)
                self._held[position].append(delta)
            else:
                wanted.append(delta)
        self._count()
        if wanted and not self._failed:
            self.generation.push(wanted, False)

    def _finish_unfinished(self, position: int, stream: UpstreamStream) -> None:
        """A stream that ended properly (`[DONE]`) without a finish for some choice (minimal servers omit it):
        those choices stopped, as the upstream says it is done. A choice of which nothing came at all was not
        answered: most likely an upstream that ignores `n`, which must not pass for an empty answer."""
        mine = [position] if self.fan_out else range(self.choices)
        silent = [i for i in mine if i not in self._seen and i not in self.stopped]
        if silent:
            where = f"the upstream {stream.context.upstream} (model {stream.context.model!r})"
            if not self.fan_out and len(silent) < self.choices:
                message = (
                    f"{where} answered {self.choices - len(silent)} of the {self.choices} choices asked: it seems "
                    "not to support `n`; set the model's `supports_n = false`"
                )
            else:
                message = f"{where} ended its answer without any content or finish_reason"
            raise UpstreamFailure(UpstreamError(message), retryable=False, replica_fault=False)
        for index in mine:
            if index not in self._finished and index not in self.stopped:
                self._finished.add(index)
                self._held[position].append(Delta(index, finish_reason="stop"))

    def _count(self) -> None:
        """Keep `generation.usage` current: the upstream's counts where sent, else tokens counted from chunks;
        over a fan-out the prompt once, completions summed."""
        usage = self.generation.usage
        if len(self.streams) == 1:  # nearly always: the same counts, without the lists
            stream = self.streams[0]
            if stream.usage is not None:
                usage.prompt_tokens, usage.cached_tokens = stream.usage.prompt_tokens, stream.usage.cached_tokens
                usage.completion_tokens = stream.usage.completion_tokens
                usage.reasoning_tokens = stream.usage.reasoning_tokens
            else:
                usage.prompt_tokens = usage.cached_tokens = 0
                usage.completion_tokens, usage.reasoning_tokens = stream.counted.completion, stream.counted.reasoning
            return
        reported = [s.usage for s in self.streams if s.usage is not None]
        usage.prompt_tokens = max((u.prompt_tokens for u in reported), default=0)
        usage.cached_tokens = min((u.cached_tokens for u in reported), default=0)
        parts = [
            s.usage or Usage(completion_tokens=s.counted.completion, reasoning_tokens=s.counted.reasoning)
            for s in self.streams
        ]
        usage.completion_tokens = sum(p.completion_tokens for p in parts)
        usage.reasoning_tokens = sum(p.reasoning_tokens for p in parts)

    def _fail(self, error: PipeserveError) -> None:
        if self._failed:
            return
        self._failed = True
        self.generation.fail(error)
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()

    def _stream_ended(self) -> None:
        self._remaining -= 1
        if self._remaining:
            return
        self._count()
        self.without_usage = any(s.usage is None and s.ended for s in self.streams)
        if not self._failed:
            self.generation.push([], True)
        self.on_end(self)

    # --- the pipeline's stop ---------------------------------------------------------------------------------
    def _stop(self, choice: int | None, keep_cache: bool) -> None:
        del keep_cache  # the upstream keeps its own prefix cache either way
        if choice is None:
            targets = range(len(self._tasks))
        else:
            self.stopped.add(choice)
            if self.fan_out:
                targets = range(choice, choice + 1)
            elif len(self.stopped) >= self.choices:
                targets = range(len(self._tasks))
            else:
                return
        for position in targets:
            if position < len(self._tasks):
                self._tasks[position].cancel()
