"""Backoff with full jitter, Retry-After in both forms."""

from __future__ import annotations

import email.utils
import time

from pipeserve.upstream import RetryPolicy, parse_retry_after


def test_retry_after_in_seconds_and_as_a_date() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after("-4") == 0.0
    now = time.time()
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert 28 <= (parse_retry_after(date, now=now) or 0) <= 30
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None


def test_backoff_is_full_jitter_below_a_doubling_cap() -> None:
    policy = RetryPolicy(max_attempts=5, base_delay=0.5, max_delay=3.0)
    for retry, cap in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 3.0), (6, 3.0)]:
        delays = [policy.delay(retry) for _ in range(200)]
        assert all(0 <= d <= cap for d in delays)
        assert max(delays) > cap / 2  # spread over the range, not a fixed wait


def test_retry_after_is_a_floor() -> None:
    policy = RetryPolicy(base_delay=0.1, max_delay=0.1)
    assert all(policy.delay(0, retry_after=2.0) == 2.0 for _ in range(50))
