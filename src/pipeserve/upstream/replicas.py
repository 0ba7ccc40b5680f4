"""Replicas of one upstream model: choice by prefix affinity and load, circuit breakers, health checks.

Affinity uses rendezvous (highest-random-weight) hashing over a key made of the prompt's first characters:
each (key, replica) pair gets a hash score and the key goes to the top-scoring usable replica. We chose it
over a hash ring because pools are small (a handful of replicas, so scoring each is free), it needs no
virtual nodes to spread evenly, and when a replica drops out only its own keys move, each to its own
second-best replica, so they spread over the others instead of all landing on one ring successor, and come
back when it returns: the prefix caches of vLLM/SGLang keep hitting through a failover.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger("pipeserve.upstream")

BreakerState = Literal["closed", "open", "half_open"]


def redact_url(url: str) -> str:
    """The URL without user info, query or fragment, fit for messages and logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def affinity_key(text: str, prefix_chars: int) -> str | None:
    """The affinity key of a rendered prompt: its first `prefix_chars` characters (None when 0: no affinity)."""
    return text[:prefix_chars] if prefix_chars > 0 else None


@dataclass(slots=True)
class CircuitBreaker:
    """Opens after `threshold` consecutive failures; after `cooldown` seconds lets one trial request through
    (half-open): its success closes the breaker, its failure opens it again."""

    threshold: int
    cooldown: float
    clock: Callable[[], float] = time.monotonic
    consecutive_failures: int = 0
    opened_at: float | None = None
    trial_in_flight: bool = False

    @property
    def state(self) -> BreakerState:
        if self.opened_at is None:
            return "closed"
        return "half_open" if self.clock() - self.opened_at >= self.cooldown else "open"

    def allows(self) -> bool:
        state = self.state
        return state == "closed" or (state == "half_open" and not self.trial_in_flight)

    def on_start(self) -> bool:
        """A request starts; True when it is the half-open trial."""
        if self.state == "half_open":
            self.trial_in_flight = True
            return True
        return False

    def on_success(self) -> None:
        self.consecutive_failures = 0
        self.opened_at = None
        self.trial_in_flight = False

    def on_failure(self) -> None:
        self.consecutive_failures += 1
        self.trial_in_flight = False
        if self.opened_at is not None or self.consecutive_failures >= self.threshold:
            self.opened_at = self.clock()  # a failed trial opens it for another cool-down


@dataclass(slots=True)
class Replica:
    url: str  # base URL, no trailing slash, as configured (may hold credentials: never shown)
    breaker: CircuitBreaker
    display: str = ""  # the redacted URL, for messages
    outstanding: int = 0  # requests in flight
    requests: int = 0
    failures: int = 0
    healthy: bool = True  # the last health check passed (true until one fails)
    last_error: str | None = None
    _digest: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        self.display = self.display or redact_url(self.url)
        self._digest = self.url.encode()

    @property
    def usable(self) -> bool:
        return self.healthy and self.breaker.allows()

    def score(self, key: bytes) -> int:
        digest = hashlib.blake2b(self._digest, key=key, digest_size=8).digest()
        return int.from_bytes(digest, "big")

    def snapshot(self) -> dict[str, Any]:
        return {
            "url": self.display,
            "outstanding": self.outstanding,
            "requests": self.requests,
            "failures": self.failures,
            "breaker": self.breaker.state,
            "healthy": self.healthy,
            "last_error": self.last_error,
        }


class Lease:
    """One request's hold on a replica: counted as outstanding until closed. Idempotent close."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self._trial = replica.breaker.on_start()
        self._judged = False
        self._closed = False
        replica.outstanding += 1
        replica.requests += 1

    @property
    def url(self) -> str:
        return self.replica.url

    def succeeded(self) -> None:
        """The replica answered (its first content arrived): it works."""
        if not self._judged:
            self._judged = True
            self.replica.breaker.on_success()

    def failed(self, reason: str) -> None:
        """The replica failed this request in a way that counts against it (not a client's 4xx)."""
        self.replica.failures += 1
        self.replica.last_error = reason
        self._judged = True
        self.replica.breaker.on_failure()  # also after its first content: a dropped stream is the replica's fault

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.replica.outstanding -= 1
        if self._trial and not self._judged:
            self.replica.breaker.trial_in_flight = False  # a cancelled trial: let another request try


class ReplicaPool:
    """The replicas of one model, with the choice of one per request."""

    def __init__(
        self,
        model: str,
        urls: Iterable[str],
        *,
        breaker_threshold: int = 5,
        breaker_cooldown: float = 30.0,
        affinity_slack: int = 4,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model = model
        self.replicas = [
            Replica(url.rstrip("/"), CircuitBreaker(breaker_threshold, breaker_cooldown, clock)) for url in urls
        ]
        if not self.replicas:
            raise ValueError(f"model {model!r}: give at least one upstream base URL")
        self.affinity_slack = affinity_slack
        self._health_task: asyncio.Task[None] | None = None

    def usable(self) -> list[Replica]:
        return [r for r in self.replicas if r.usable]

    def choose(self, affinity: str | None = None, *, avoid: Iterable[str] = ()) -> Replica | None:
        """The replica for a request: the affine one (rendezvous hashing on `affinity`) unless it is
        `affinity_slack` requests busier than the least busy, else the least busy. Replicas whose URL is in
        `avoid` (already failed this request) are taken only when no other is usable."""
        usable = self.usable()
        avoided = set(avoid)
        candidates = [r for r in usable if r.url not in avoided] or usable
        if not candidates:
            return None
        least = min(candidates, key=lambda r: (r.outstanding, r.requests))
        if affinity is None:
            return least
        key = hashlib.blake2b(affinity.encode(), digest_size=32).digest()
        affine = max(candidates, key=lambda r: r.score(key))
        return affine if affine.outstanding <= least.outstanding + self.affinity_slack else least

    def lease(self, replica: Replica) -> Lease:
        return Lease(replica)

    def problem(self) -> str | None:
        """None while a replica is usable; else why none is."""
        if self.usable():
            return None
        reasons = []
        for r in self.replicas:
            if not r.healthy:
                why = "fails its health check"
            elif r.breaker.state == "open":
                why = f"circuit open after {r.breaker.consecutive_failures} consecutive failures"
            else:
                why = "its half-open trial request is in flight"
            reasons.append(f"{r.display}: {why}" + (f" ({r.last_error})" if r.last_error else ""))
        return "no upstream replica is usable: " + "; ".join(reasons)

    def snapshot(self) -> list[dict[str, Any]]:
        return [r.snapshot() for r in self.replicas]

    # --- health checks ---------------------------------------------------------------------------------
    async def check_health(self, probe: Callable[[Replica], Awaitable[None]]) -> None:
        """Probe every replica once, concurrently: one whose probe raises is skipped until a probe passes."""

        async def one(replica: Replica) -> None:
            try:
                await probe(replica)
            except Exception as exc:
                if replica.healthy:
                    log.warning("%s: upstream %s failed its health check: %s", self.model, replica.display, exc)
                replica.healthy = False
                replica.last_error = f"health check: {exc}"
            else:
                if not replica.healthy:
                    log.info("%s: upstream %s passes its health check again", self.model, replica.display)
                replica.healthy = True

        await asyncio.gather(*(one(r) for r in self.replicas))

    def start_health_checks(self, probe: Callable[[Replica], Awaitable[None]], interval: float) -> None:
        """Probe every `interval` seconds in a background task until `stop_health_checks`."""

        async def loop() -> None:
            while True:
                await asyncio.sleep(interval)
                await self.check_health(probe)

        if interval > 0 and self._health_task is None:
            self._health_task = asyncio.create_task(loop(), name=f"health:{self.model}")

    async def stop_health_checks(self) -> None:
        task, self._health_task = self._health_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
