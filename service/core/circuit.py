"""A circuit breaker as an explicit state machine: closed → open → half-open → closed | open.

Every call the breaker lets through holds a :class:`Call` that ends in exactly one
verdict: ``success()`` (the server answered; an error about *this request* is an
answer too), ``failure()`` (the server could not be reached or did not answer in
time) or ``abandon()`` (no verdict: the caller was cancelled). Callers end it in a
``finally`` (``call.abandon()`` is a no-op after a verdict), so a half-open trial can
never stay "running" for good. A successful readiness probe
(``probe_succeeded()``) closes the circuit from any state.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable


class BreakerState(enum.IntEnum):
    """The value is what the ``esam_encoder_circuit_state`` gauge shows."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitBreaker:
    """``threshold`` consecutive failures open the circuit for ``cooldown_s``.

    While open, :meth:`acquire` gives no permit and callers fail at once. Once the
    cool-down has passed, one trial call is let through (half-open): success
    closes the circuit, failure opens it again for another cool-down, and an
    abandoned trial lets the next caller try.
    """

    def __init__(
        self,
        threshold: int = 3,
        cooldown_s: float = 5.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[BreakerState], None] | None = None,
    ) -> None:
        if threshold < 1 or cooldown_s < 0:
            raise ValueError("threshold must be >= 1 and cooldown_s >= 0")
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._on_change = on_change
        self._state = BreakerState.CLOSED
        self._failures = 0  # consecutive, while closed
        self._open_until = 0.0
        self._trial: Call | None = None  # the half-open trial that is out, if any

    # --- reading -------------------------------------------------------------------------
    @property
    def state(self) -> BreakerState:
        """OPEN turns into HALF_OPEN by itself once the cool-down has passed."""
        if self._state is BreakerState.OPEN and self._clock() >= self._open_until:
            self._set(BreakerState.HALF_OPEN)
        return self._state

    @property
    def is_open(self) -> bool:
        return self.state is BreakerState.OPEN

    @property
    def trial_running(self) -> bool:
        return self._trial is not None

    def retry_after_s(self) -> int:
        """Whole seconds until a call may be let through again (at least 1)."""
        return max(1, int(self._open_until - self._clock() + 0.999))

    # --- transitions ---------------------------------------------------------------------
    def acquire(self) -> Call | None:
        """A permit for one call, or None when the caller must fail fast.

        In half-open state only one call (the trial) is out at a time. The
        permit's first verdict counts; later ones are ignored.
        """
        state = self.state
        if state is BreakerState.CLOSED:
            return Call(self, trial=False)
        if state is BreakerState.OPEN or self._trial is not None:
            return None
        self._trial = Call(self, trial=True)
        return self._trial

    def probe_succeeded(self) -> None:
        """The server reported itself ready: close the circuit whatever its state."""
        self._close()

    def _verdict(self, call: Call, outcome: str) -> None:
        if call is self._trial:
            self._trial = None
        if outcome == "success":
            self._close()
        elif outcome == "failure":
            if self.state is BreakerState.CLOSED:
                self._failures += 1
                if self._failures < self.threshold:
                    return
            self._open()
        # "abandon": the call told nothing about the server; only the trial slot is freed

    def _close(self) -> None:
        self._failures = 0
        self._trial = None
        self._set(BreakerState.CLOSED)

    def _open(self) -> None:
        self._failures = 0
        self._trial = None
        self._open_until = self._clock() + self.cooldown_s
        self._set(BreakerState.OPEN)

    def _set(self, state: BreakerState) -> None:
        if state is not self._state:
            self._state = state
            if self._on_change is not None:
                self._on_change(state)


class Call:
    """One call let through by the breaker; end it with exactly one verdict."""

    def __init__(self, breaker: CircuitBreaker, *, trial: bool) -> None:
        self._breaker = breaker
        self.trial = trial
        self.outcome: str | None = None

    def _end(self, outcome: str) -> None:
        if self.outcome is None:
            self.outcome = outcome
            self._breaker._verdict(self, outcome)

    def success(self) -> None:
        """The server answered (an error about this one request is an answer too)."""
        self._end("success")

    def failure(self) -> None:
        """The server could not be reached or did not answer in time."""
        self._end("failure")

    def abandon(self) -> None:
        """No verdict (the caller was cancelled); a no-op after another verdict."""
        self._end("abandon")
