"""The pending-encode budget of one process: past it, a new image is refused at once (429).

An encode is pending from the moment a request starts one (after single flight: N
requests for one image hold one slot) until it has been stored or has failed. The
budget holds whatever the encoder (in-process or Triton) and bounds what waiting
requests keep in memory: a refused image is never decoded.
"""

from __future__ import annotations

from service.core.metrics import Metrics
from service.errors import OverloadedError


class Slot:
    """One pending encode; :meth:`release` is idempotent."""

    def __init__(self, admission: Admission) -> None:
        self._admission: Admission | None = admission

    def release(self) -> None:
        if self._admission is not None:
            self._admission._release()
            self._admission = None


class Admission:
    def __init__(self, limit: int, metrics: Metrics, retry_after_s: int = 1) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self.retry_after_s = retry_after_s
        self._metrics = metrics
        self._pending = 0

    @property
    def pending(self) -> int:
        return self._pending

    def enter(self) -> Slot:
        """A slot for one more encode, or :class:`OverloadedError` when all are taken."""
        if self._pending >= self.limit:
            self._metrics.encodes_refused.inc()
            raise OverloadedError(
                f"{self.limit} new images are already being encoded by this gateway; retry shortly",
                retry_after_s=self.retry_after_s,
            )
        self._pending += 1
        self._metrics.pending_encodes.set(self._pending)
        return Slot(self)

    def _release(self) -> None:
        self._pending -= 1
        self._metrics.pending_encodes.set(self._pending)
