"""Retrying an upstream request before any of its answer has been passed on.

Backoff is exponential with full jitter (a uniform draw below the exponential cap), so that replicas of
pipeserve retrying the same overloaded upstream spread out instead of arriving together; a `Retry-After` the
upstream sent is a floor. No wait runs past the request's deadline: a retry that could not finish in time is
not attempted and the last failure is the answer.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from pipeserve.errors import EngineUnavailableError

if TYPE_CHECKING:
    from pipeserve.upstream.replicas import Lease, ReplicaPool

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 3  # attempts in all, the first included
    base_delay: float = 0.25  # seconds: the cap of the first backoff; it doubles with each attempt
    max_delay: float = 8.0  # seconds: the most any one backoff may be

    def delay(self, retry: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number `retry` (0 for the first retry)."""
        cap = min(self.max_delay, self.base_delay * (2**retry))
        jitter = random.uniform(0, cap)
        return max(jitter, retry_after) if retry_after is not None else jitter


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a `Retry-After` header: delta-seconds or an HTTP date; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


async def with_retries(
    pool: ReplicaPool,
    policy: RetryPolicy,
    attempt: Callable[[Lease], Awaitable[T]],
    *,
    deadline: float,
    affinity: str | None = None,
) -> tuple[T, Lease]:
    """Run `attempt` on a replica chosen by `pool`, again on `UpstreamFailure`s that allow it.

    `attempt(lease)` returns once the answer can be passed on (its first content read), or raises
    `UpstreamFailure`. On success the lease is returned still open: the caller closes it when the answer
    ends (and calls `lease.failed()` first if it ends in a failure). `deadline` is on `time.monotonic()`.
    A retry goes to another usable replica where there is one. Raises the last failure's error, or an
    `EngineUnavailableError` when no replica is usable.
    """
    from pipeserve.upstream.errors import UpstreamFailure

    tried: set[str] = set()
    retry = 0
    while True:
        replica = pool.choose(affinity, avoid=tried)
        if replica is None:
            raise EngineUnavailableError(
                f"No upstream of model {pool.model!r} can take requests now ({pool.problem() or 'all are busy'}). "
                "Retry in a moment; GET /health shows when one is back."
            )
        lease = pool.lease(replica)
        try:
            result = await attempt(lease)
        except UpstreamFailure as failure:
            if failure.replica_fault:
                lease.failed(failure.error.message)
            lease.close()
            tried.add(replica.url)
            if not failure.retryable or retry + 1 >= policy.max_attempts:
                raise failure.error from failure
            wait = policy.delay(retry, failure.retry_after)
            if time.monotonic() + wait >= deadline:
                raise failure.error from failure
            retry += 1
            await asyncio.sleep(wait)
            continue
        except BaseException:
            lease.close()
            raise
        lease.succeeded()
        return result, lease
