"""The circuit breaker opens after repeated failures and lets one trial through later."""

from __future__ import annotations

import time

from service.core.circuit import CircuitBreaker


def test_opens_then_half_opens_then_closes() -> None:
    breaker = CircuitBreaker(threshold=2, cooldown_s=0.05)
    assert breaker.allow()
    breaker.failure()
    assert breaker.allow()  # one failure is not enough
    breaker.failure()
    assert breaker.is_open
    assert not breaker.allow()
    assert breaker.retry_after_s() >= 1
    time.sleep(0.06)
    assert breaker.allow()  # the trial
    assert not breaker.allow()  # only one at a time
    breaker.success()
    assert breaker.allow()
    assert not breaker.is_open


def test_failed_trial_opens_again() -> None:
    breaker = CircuitBreaker(threshold=1, cooldown_s=0.05)
    breaker.failure()
    time.sleep(0.06)
    assert breaker.allow()
    breaker.failure()
    assert not breaker.allow()
