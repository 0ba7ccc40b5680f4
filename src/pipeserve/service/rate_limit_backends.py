"""Where rate limit counters live: this process's memory, or a Redis shared by every replica.

Both keep the same state with the same arithmetic, so a limit means the same on either:

- a rate (requests or tokens per minute) is GCRA, a token bucket kept as one number: its "theoretical arrival
  time" `tat`. Each unit of cost pushes `tat` forward by `60 s / limit`; a request fits while `tat` stays within a
  minute of now. The bucket holds a minute's worth, refills continuously (no burst at a window's edge) and says
  exactly when a refused request would fit. Settling a request's real token count moves `tat` by the
  difference, into debt if need be, as OpenAI counts.
- concurrent requests are leases: a sorted set of lease ids scored by their expiry. A replica refreshes the
  leases of its requests in flight; those of a replica that died expire after `LEASE_MS`.

Redis does each operation in one Lua script (EVALSHA), atomic across replicas and timed by Redis's own clock,
so replicas' clocks need not agree. A request's buckets are checked together and charged only if all admit it.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

PERIOD_MS = 60_000
LEASE_MS = 30_000  # how long a dead replica's requests keep their concurrency slots
_EPS = 1e-6  # float slack, so that exact multiples of an interval don't round up a unit

Kind = Literal["requests", "tokens", "concurrent"]


@dataclass(frozen=True, slots=True)
class Bucket:
    """One counter a request is checked against: `cost` units of `limit` (per minute, or at once)."""

    key: str
    kind: Kind
    limit: int
    cost: int


@dataclass(frozen=True, slots=True)
class Verdict:
    """A bucket's answer. `reset_ms`: until a rate bucket is full again; `retry_ms`: until a refused request's
    cost would fit (0 when admitted, and for concurrency, which frees when a request ends)."""

    allowed: bool
    remaining: int
    reset_ms: int
    retry_ms: int
    used: int


class Backend(ABC):
    @abstractmethod
    async def admit(self, buckets: Sequence[Bucket], lease: str) -> list[Verdict]:
        """Check every bucket; charge them all (rates by cost, concurrency by lease) only if all admit."""

    @abstractmethod
    async def settle(self, buckets: Sequence[Bucket]) -> None:
        """Add each rate bucket's `cost` (negative: give back) to what it has counted."""

    @abstractmethod
    async def release(self, keys: Sequence[str], lease: str) -> None: ...

    @abstractmethod
    async def refresh(self, leases: Sequence[tuple[str, str]]) -> None:
        """Extend the given (key, lease) pairs that still exist by `LEASE_MS` from now."""

    async def close(self) -> None:
        return None


def _rate(tat: float, now: float, limit: int, cost: int) -> tuple[Verdict, float]:
    """GCRA: the verdict on `cost` units and the bucket's new `tat` (unchanged when refused)."""
    interval = PERIOD_MS / limit
    tat = max(tat, now)
    after = tat + cost * interval
    used = max(0, math.ceil((tat - now) / interval - _EPS))
    if after - now <= PERIOD_MS + _EPS:
        remaining = max(0, math.floor((PERIOD_MS - (after - now)) / interval + _EPS))
        return Verdict(True, remaining, math.ceil(after - now), 0, used), after
    remaining = max(0, math.floor((PERIOD_MS - (tat - now)) / interval + _EPS))
    return Verdict(False, remaining, math.ceil(tat - now), math.ceil(after - PERIOD_MS - now), used), tat


class MemoryBackend(Backend):
    """Counters of this process alone (no `redis_url`). The event loop runs one operation at a time, so each
    is atomic as Redis's scripts are."""

    def __init__(self, clock: Any = None) -> None:
        self._clock = clock or (lambda: time.monotonic() * 1000)
        self._tats: dict[str, float] = {}
        self._leases: dict[str, dict[str, float]] = {}
        self._admitted = 0

    async def admit(self, buckets: Sequence[Bucket], lease: str) -> list[Verdict]:
        now = self._clock()
        self._admitted += 1
        if self._admitted % 4096 == 0:
            self._forget_idle(now)
        verdicts: list[Verdict] = []
        changes: list[tuple[Bucket, float]] = []
        for bucket in buckets:
            if bucket.kind == "concurrent":
                held = self._live(bucket.key, now)
                ok = len(held) + bucket.cost <= bucket.limit
                remaining = bucket.limit - len(held) - (bucket.cost if ok else 0)
                verdicts.append(Verdict(ok, remaining, 0, 0, len(held)))
                changes.append((bucket, now + LEASE_MS))
            else:
                verdict, tat = _rate(self._tats.get(bucket.key, now), now, bucket.limit, bucket.cost)
                verdicts.append(verdict)
                changes.append((bucket, tat))
        if all(verdict.allowed for verdict in verdicts):
            for bucket, value in changes:
                if bucket.kind == "concurrent":
                    self._leases.setdefault(bucket.key, {})[lease] = value
                else:
                    self._tats[bucket.key] = value
        return verdicts

    async def settle(self, buckets: Sequence[Bucket]) -> None:
        now = self._clock()
        for bucket in buckets:
            tat = max(self._tats.get(bucket.key, now), now) + bucket.cost * PERIOD_MS / bucket.limit
            if tat <= now:
                self._tats.pop(bucket.key, None)
            else:
                self._tats[bucket.key] = tat

    async def release(self, keys: Sequence[str], lease: str) -> None:
        for key in keys:
            self._leases.get(key, {}).pop(lease, None)

    async def refresh(self, leases: Sequence[tuple[str, str]]) -> None:
        expiry = self._clock() + LEASE_MS
        for key, lease in leases:
            held = self._leases.get(key, {})
            if lease in held:
                held[lease] = expiry

    def _forget_idle(self, now: float) -> None:
        """Drop full buckets and empty lease sets, as Redis expires their keys: one entry per key and model
        seen would otherwise stay for the life of the process."""
        self._tats = {key: tat for key, tat in self._tats.items() if tat > now}
        for key in list(self._leases):
            if not self._live(key, now):
                del self._leases[key]

    def _live(self, key: str, now: float) -> dict[str, float]:
        held = self._leases.setdefault(key, {})
        for lease in [lease for lease, expiry in held.items() if expiry <= now]:
            del held[lease]
        return held


# The same arithmetic as `_rate` and `MemoryBackend`, in Redis. ARGV: the lease, then per key: kind, limit, cost.
# Returns per key {allowed, remaining, reset_ms, retry_ms, used} (Lua numbers come back as integers).
_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local period, lease_ms, eps = tonumber(ARGV[2]), tonumber(ARGV[3]), 1e-6
local lease = ARGV[1]
local verdicts, tats, all_ok = {}, {}, true
for i, key in ipairs(KEYS) do
  local kind, limit, cost = ARGV[1 + 3 * i], tonumber(ARGV[2 + 3 * i]), tonumber(ARGV[3 + 3 * i])
  if kind == 'concurrent' then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    local held = redis.call('ZCARD', key)
    local ok = held + cost <= limit
    verdicts[i] = {ok and 1 or 0, limit - held - (ok and cost or 0), 0, 0, held}
    if not ok then all_ok = false end
  else
    local interval = period / limit
    local tat = tonumber(redis.call('GET', key) or now)
    if tat < now then tat = now end
    local after = tat + cost * interval
    local used = math.max(0, math.ceil((tat - now) / interval - eps))
    if after - now <= period + eps then
      verdicts[i] = {1, math.max(0, math.floor((period - (after - now)) / interval + eps)),
                     math.ceil(after - now), 0, used}
      tats[i] = after
    else
      verdicts[i] = {0, math.max(0, math.floor((period - (tat - now)) / interval + eps)),
                     math.ceil(tat - now), math.ceil(after - period - now), used}
      all_ok = false
    end
  end
end
if all_ok then
  for i, key in ipairs(KEYS) do
    if tats[i] then
      redis.call('SET', key, string.format('%.3f', tats[i]), 'PX', math.ceil(tats[i] - now) + 1000)
    else
      redis.call('ZADD', key, now + lease_ms, lease)
      redis.call('PEXPIRE', key, lease_ms)
    end
  end
end
return verdicts
"""

# ARGV: period, then per key: limit, cost (negative gives back).
_SETTLE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local period = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  tat = tat + tonumber(ARGV[2 * i + 1]) * period / tonumber(ARGV[2 * i])
  if tat <= now then
    redis.call('DEL', key)
  else
    redis.call('SET', key, string.format('%.3f', tat), 'PX', math.ceil(tat - now) + 1000)
  end
end
return 0
"""

# ARGV: lease_ms, then per key: the lease. XX: a lease released meanwhile stays released.
_REFRESH = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local lease_ms = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  if redis.call('ZADD', key, 'XX', 'CH', now + lease_ms, ARGV[i + 1]) > 0 then
    redis.call('PEXPIRE', key, lease_ms)
  end
end
return 0
"""


class RedisBackend(Backend):
    """Counters in Redis, shared by every replica that uses the same `redis_url` and `redis_key_prefix`.

    redis-py's retries are off: a Redis that can't be reached fails the call within `timeout`, and the limiter
    decides what to do (admit unchecked) rather than the request waiting on reconnection attempts."""

    def __init__(self, url: str, *, prefix: str, timeout: float) -> None:
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.prefix = prefix
        self._redis = Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0)
        )
        self._admit = self._redis.register_script(_ADMIT)
        self._settle = self._redis.register_script(_SETTLE)
        self._refresh = self._redis.register_script(_REFRESH)

    async def admit(self, buckets: Sequence[Bucket], lease: str) -> list[Verdict]:
        args: list[str | int] = [lease, PERIOD_MS, LEASE_MS]
        for bucket in buckets:
            args += [bucket.kind, bucket.limit, bucket.cost]
        rows = await self._admit(keys=[self.prefix + bucket.key for bucket in buckets], args=args)
        return [
            Verdict(bool(ok), int(remaining), int(reset), int(retry), int(used))
            for ok, remaining, reset, retry, used in rows
        ]

    async def settle(self, buckets: Sequence[Bucket]) -> None:
        args: list[int] = [PERIOD_MS]
        for bucket in buckets:
            args += [bucket.limit, bucket.cost]
        await self._settle(keys=[self.prefix + bucket.key for bucket in buckets], args=args)

    async def release(self, keys: Sequence[str], lease: str) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.zrem(self.prefix + key, lease)
            await pipe.execute()

    async def refresh(self, leases: Sequence[tuple[str, str]]) -> None:
        keys = [self.prefix + key for key, _ in leases]
        await self._refresh(keys=keys, args=[LEASE_MS, *(lease for _, lease in leases)])

    async def close(self) -> None:
        await self._redis.aclose()
