"""A small circuit breaker: after repeated failures, fail fast for a cool-down period."""

from __future__ import annotations

import time


class CircuitBreaker:
    """Closed → (``threshold`` consecutive failures) → open for ``cooldown_s`` → half-open.

    While open, :meth:`allow` is False and callers fail at once. After the
    cool-down one trial call is let through; its success closes the circuit,
    its failure opens it again.
    """

    def __init__(self, threshold: int = 3, cooldown_s: float = 5.0) -> None:
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self._failures = 0
        self._open_until = 0.0
        self._trial_running = False

    @property
    def is_open(self) -> bool:
        return self._failures >= self.threshold and time.monotonic() < self._open_until

    def retry_after_s(self) -> int:
        return max(1, int(self._open_until - time.monotonic() + 0.999))

    def allow(self) -> bool:
        if self._failures < self.threshold:
            return True
        if time.monotonic() < self._open_until or self._trial_running:
            return False
        self._trial_running = True  # half-open: one trial call
        return True

    def success(self) -> None:
        self._failures = 0
        self._trial_running = False

    def failure(self) -> None:
        self._failures += 1
        self._trial_running = False
        if self._failures >= self.threshold:
            self._open_until = time.monotonic() + self.cooldown_s
