"""Replica choice (rendezvous affinity, least outstanding, slack) and the circuit breaker, on a fake clock."""

from __future__ import annotations

from pipeserve.upstream import CircuitBreaker, ReplicaPool, affinity_key, redact_url


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


URLS = [f"http://replica-{i}:8000/v1" for i in range(5)]


def test_the_breaker_opens_after_consecutive_failures_and_tries_once_when_half_open() -> None:
    clock = Clock()
    breaker = CircuitBreaker(threshold=3, cooldown=10, clock=clock)
    breaker.on_failure()
    breaker.on_failure()
    breaker.on_success()  # a success in between resets the count
    breaker.on_failure()
    breaker.on_failure()
    assert breaker.state == "closed"
    breaker.on_failure()
    assert breaker.state == "open" and not breaker.allows()
    clock.now = 10
    assert breaker.state == "half_open" and breaker.allows()
    assert breaker.on_start()  # the trial
    assert not breaker.allows()  # only one at a time
    breaker.on_failure()
    assert breaker.state == "open"  # a failed trial: another cool-down
    clock.now = 20
    assert breaker.on_start()
    breaker.on_success()
    assert breaker.state == "closed" and breaker.allows()


def test_affinity_is_stable_and_moves_only_the_keys_of_a_lost_replica() -> None:
    pool = ReplicaPool("m", URLS)
    keys = [f"prompt {i}" for i in range(500)]
    before = {key: pool.choose(key).url for key in keys}  # type: ignore[union-attr]
    assert before == {key: pool.choose(key).url for key in keys}  # type: ignore[union-attr]
    assert len(set(before.values())) == len(URLS)  # spread over all
    lost = pool.replicas[2]
    lost.healthy = False
    after = {key: pool.choose(key).url for key in keys}  # type: ignore[union-attr]
    moved = {key for key in keys if before[key] != after[key]}
    assert moved == {key for key in keys if before[key] == lost.url}
    assert len({after[key] for key in moved}) > 1  # the lost replica's keys spread over the others
    lost.healthy = True
    assert before == {key: pool.choose(key).url for key in keys}  # type: ignore[union-attr]


def test_a_busy_affine_replica_gives_way_beyond_the_slack() -> None:
    pool = ReplicaPool("m", URLS[:2], affinity_slack=2)
    affine = pool.choose("shared")
    assert affine is not None
    leases = [pool.lease(affine) for _ in range(2)]
    assert pool.choose("shared") is affine  # 2 busier: within the slack
    leases.append(pool.lease(affine))
    other = pool.choose("shared")
    assert other is not None and other is not affine
    for lease in leases:
        lease.close()
        lease.close()  # idempotent
    assert affine.outstanding == 0


def test_least_outstanding_without_a_key_and_avoiding_tried_replicas() -> None:
    pool = ReplicaPool("m", URLS[:3])
    first = pool.choose(None)
    assert first is not None
    lease = pool.lease(first)
    second = pool.choose(None)
    assert second is not None and second is not first
    assert pool.choose("k", avoid=[r.url for r in pool.replicas[:2]]) is pool.replicas[2]
    # Avoiding every replica still leaves one: a retry may go back to the only usable replica.
    assert pool.choose("k", avoid=[r.url for r in pool.replicas]) is not None
    lease.close()


def test_problem_names_each_replica_and_why() -> None:
    clock = Clock()
    pool = ReplicaPool("m", URLS[:2], breaker_threshold=1, breaker_cooldown=5, clock=clock)
    assert pool.problem() is None
    pool.replicas[0].healthy = False
    lease = pool.lease(pool.replicas[1])
    lease.failed("HTTP 500")
    lease.close()
    problem = pool.problem() or ""
    assert "replica-0:8000/v1: fails its health check" in problem
    assert "replica-1:8000/v1: circuit open after 1 consecutive failures (HTTP 500)" in problem
    clock.now = 5
    assert pool.problem() is None and pool.choose(None) is pool.replicas[1]
    snapshot = pool.snapshot()[1]
    assert snapshot["breaker"] == "half_open" and snapshot["failures"] == 1 and snapshot["requests"] == 1


def test_a_cancelled_trial_lets_another_request_try() -> None:
    clock = Clock()
    pool = ReplicaPool("m", URLS[:1], breaker_threshold=1, breaker_cooldown=1, clock=clock)
    lease = pool.lease(pool.replicas[0])
    lease.failed("refused")
    lease.close()
    clock.now = 1
    trial = pool.lease(pool.replicas[0])
    assert pool.choose(None) is None  # the trial is in flight
    trial.close()  # cancelled: neither success nor failure
    assert pool.choose(None) is pool.replicas[0]


def test_urls_are_redacted_and_keys_are_prefixes() -> None:
    assert redact_url("https://user:secret@host.example:8443/v1/?key=abc#x") == "https://host.example:8443/v1"
    assert redact_url("http://[::1]:8000/v1") == "http://[::1]:8000/v1"
    assert affinity_key("abcdef", 3) == "abc"
    assert affinity_key("abcdef", 0) is None
