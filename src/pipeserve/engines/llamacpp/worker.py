"""The thread that makes every llama.cpp call of one local model, and that ends while the model is idle.

ggml's CPU backend runs each computation on an OpenMP team of the calling thread. libgomp keeps a pool per
thread that has called it, for as long as that thread lives, and once the pooled threads outnumber the CPUs
every barrier of every pool spins 100 turns instead of 300,000 before it sleeps. A second local model whose
thread lived on, idle after one request, slowed the first one's batched decoding by 8-13% on two CPUs
(bench/NOTES.md). So an engine's thread ends once its model has been idle for `PARK_AFTER` seconds, which frees
its pool, and the next command starts a new one. (One thread for every model, taking turns, was measured too:
two busy models then made 69-74 tok/s together against 86 on a thread each, whose OpenMP teams fill each
other's barrier waits.)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Literal

log = logging.getLogger("pipeserve.llamacpp")

# What a turn leaves: more to do at once; nothing until a command, the thread may end; nothing now but a turn
# within a second (a lane to free on time, a reload to retry); or the engine is gone.
Turn = Literal["busy", "idle", "wait", "done"]

PARK_AFTER = 2.0  # seconds of idleness after which the thread ends; starting one again costs well under 1 ms
_WAIT_TURN = 1.0  # seconds between the turns of an engine that waits


class EngineThread:
    """Calls `turn` over and over on a thread of its own while it has work, sleeps while it waits for a
    command, ends after `PARK_AFTER` seconds without one (parked), and starts again at the next `wake`."""

    def __init__(self, turn: Callable[[], Turn], name: str) -> None:
        self._turn = turn
        self._name = name
        self._lock = threading.Lock()
        self._bell = threading.Event()  # rung by every command; a waiting thread sleeps on it
        self._thread: threading.Thread | None = None
        self._started = False
        self._done = False
        self.started_at = 0.0  # when the running thread started (a parked engine's heartbeat is not stale)

    def start(self) -> None:
        with self._lock:
            self._started = True
            self._spawn()

    def wake(self) -> None:
        """From any thread: a command is waiting; a parked engine gets its thread back."""
        self._bell.set()
        with self._lock:
            if self._started and not self._done and self._thread is None:
                self._spawn()

    @property
    def alive(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    @property
    def parked(self) -> bool:
        return self._started and not self._done and self._thread is None

    def _spawn(self) -> None:
        """Under the lock, which the thread takes before it parks: it can't clear `_thread` before it is set."""
        self.started_at = time.monotonic()
        thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        thread.start()
        self._thread = thread  # set once started: `alive` never sees a thread not yet running

    def _run(self) -> None:
        idle_since: float | None = None
        while True:
            # Cleared before the turn reads its commands: one that arrives during the turn rings it again.
            self._bell.clear()
            try:
                state = self._turn()
            except BaseException:  # the turn's own handling failed: log it, keep the engine's thread
                log.exception("%s: an engine turn failed", self._name)
                state = "wait"
            if state == "busy":
                idle_since = None
                continue
            if state == "done":
                with self._lock:
                    self._done, self._thread = True, None
                return
            timeout = _WAIT_TURN
            if state == "idle":
                now = time.monotonic()
                idle_since = idle_since if idle_since is not None else now
                timeout = PARK_AFTER - (now - idle_since)
                if timeout <= 0:
                    with self._lock:
                        if not self._bell.is_set():  # else a command came: turn again
                            self._thread = None
                            return
                    continue
            else:
                idle_since = None
            self._bell.wait(timeout)
