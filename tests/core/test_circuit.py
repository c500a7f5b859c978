"""Every transition of the circuit breaker, on a fake clock."""

from __future__ import annotations

import pytest

from service.core.circuit import BreakerState, Call, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def state_of(b: CircuitBreaker) -> BreakerState:
    """The state, read through a function (mypy would narrow repeated property reads)."""
    return b.state


def breaker(clock: Clock, threshold: int = 2, cooldown_s: float = 5.0) -> CircuitBreaker:
    return CircuitBreaker(threshold=threshold, cooldown_s=cooldown_s, clock=clock)


def permit(b: CircuitBreaker) -> Call:
    call = b.acquire()
    assert call is not None
    return call


def opened(clock: Clock) -> CircuitBreaker:
    b = breaker(clock)
    permit(b).failure()
    permit(b).failure()
    assert state_of(b) is BreakerState.OPEN
    return b


def half_open(clock: Clock) -> CircuitBreaker:
    b = opened(clock)
    clock.now += 5.0
    assert state_of(b) is BreakerState.HALF_OPEN
    return b


def test_closed_counts_consecutive_failures_only(clock: Clock) -> None:
    b = breaker(clock, threshold=3)
    permit(b).failure()
    permit(b).failure()
    permit(b).success()  # resets the count
    permit(b).failure()
    permit(b).failure()
    assert state_of(b) is BreakerState.CLOSED
    permit(b).failure()
    assert state_of(b) is BreakerState.OPEN


def test_closed_to_open_at_the_threshold(clock: Clock) -> None:
    b = opened(clock)
    assert b.acquire() is None
    assert b.retry_after_s() == 5
    clock.now += 4.2
    assert b.retry_after_s() == 1
    assert b.acquire() is None


def test_open_to_half_open_after_the_cooldown(clock: Clock) -> None:
    b = opened(clock)
    clock.now += 4.99
    assert state_of(b) is BreakerState.OPEN
    clock.now += 0.01
    assert state_of(b) is BreakerState.HALF_OPEN


def test_half_open_lets_one_trial_through(clock: Clock) -> None:
    b = half_open(clock)
    trial = permit(b)
    assert trial.trial
    assert b.acquire() is None  # a second caller fails fast while the trial runs


def test_half_open_trial_success_closes(clock: Clock) -> None:
    b = half_open(clock)
    permit(b).success()
    assert state_of(b) is BreakerState.CLOSED
    assert not permit(b).trial


def test_half_open_trial_failure_opens_for_another_cooldown(clock: Clock) -> None:
    b = half_open(clock)
    permit(b).failure()
    assert state_of(b) is BreakerState.OPEN
    assert b.acquire() is None
    clock.now += 5.0
    assert state_of(b) is BreakerState.HALF_OPEN


def test_abandoned_trial_frees_the_slot_without_a_verdict(clock: Clock) -> None:
    b = half_open(clock)
    permit(b).abandon()  # e.g. the request was cancelled
    assert state_of(b) is BreakerState.HALF_OPEN
    assert not b.trial_running
    assert permit(b).trial  # the next caller tries


def test_first_verdict_wins(clock: Clock) -> None:
    b = half_open(clock)
    trial = permit(b)
    trial.success()
    trial.abandon()  # the `finally` of the caller: ignored after a verdict
    trial.failure()
    assert state_of(b) is BreakerState.CLOSED


def test_late_verdict_of_an_old_call_keeps_the_trial_slot(clock: Clock) -> None:
    b = breaker(clock)
    old = permit(b)  # went out while closed
    permit(b).failure()
    permit(b).failure()
    clock.now += 5.0
    trial = permit(b)
    old.abandon()  # ends after the trial started: must not free the trial's slot
    assert b.trial_running
    assert b.acquire() is None
    trial.success()
    assert state_of(b) is BreakerState.CLOSED


def test_probe_closes_from_every_state(clock: Clock) -> None:
    b = opened(clock)
    b.probe_succeeded()
    assert state_of(b) is BreakerState.CLOSED
    b = half_open(clock)
    trial = permit(b)
    b.probe_succeeded()
    assert state_of(b) is BreakerState.CLOSED
    assert not b.trial_running
    trial.failure()  # the trial's late failure counts as one failure, not an opening
    assert state_of(b) is BreakerState.CLOSED
    b = breaker(clock)
    permit(b).failure()
    b.probe_succeeded()  # also forgets earlier failures
    permit(b).failure()
    assert state_of(b) is BreakerState.CLOSED


def test_state_changes_are_reported(clock: Clock) -> None:
    seen: list[BreakerState] = []
    b = CircuitBreaker(threshold=1, cooldown_s=1.0, clock=clock, on_change=seen.append)
    permit(b).failure()
    clock.now += 1.0
    permit(b).success()
    assert seen == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]


def test_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="threshold"):
        CircuitBreaker(threshold=0)
