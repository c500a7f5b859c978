"""The pending-encode budget of one process: past it, a new image is refused at once (429).

An encode is pending from the moment a request starts one (after single flight: N
requests for one image hold one slot) until it has been stored or has failed. The
budget holds whatever the encoder (in-process or Triton) and bounds what waiting
requests keep in memory: a refused image is never decoded.

Within it, bulk work may hold only its share (``ESAM_INTERACTIVE_SHARE`` keeps the
rest for annotators), and each tenant at most its own limit
(``ESAM_TENANT_PENDING_ENCODES`` or the tenant's entry in ``ESAM_TENANT_LIMITS``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from service.core.metrics import Metrics
from service.core.tenancy import DEFAULT_TENANT, Priority, bulk_share, current_priority
from service.errors import OverloadedError, TenantLimitError


class Slot:
    """One pending encode; :meth:`release` is idempotent."""

    def __init__(self, admission: Admission, tenant: str, priority: Priority) -> None:
        self._admission: Admission | None = admission
        self.tenant = tenant
        self.priority = priority

    def release(self) -> None:
        if self._admission is not None:
            self._admission._release(self)
            self._admission = None


def _no_tenant_limit(tenant: str) -> int:
    return 0


class Admission:
    def __init__(
        self,
        limit: int,
        metrics: Metrics,
        retry_after_s: int = 1,
        *,
        interactive_share: float = 0.0,
        tenant_limit: Callable[[str], int] = _no_tenant_limit,
    ) -> None:
        """``tenant_limit(tenant)``: the most encodes that tenant may have pending (0: only
        the process's ``limit``)."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self.bulk_limit = bulk_share(limit, interactive_share)
        self.retry_after_s = retry_after_s
        self._metrics = metrics
        self._tenant_limit = tenant_limit
        self._pending = 0
        self._bulk = 0
        self._by_tenant: Counter[str] = Counter()

    @property
    def pending(self) -> int:
        return self._pending

    def pending_for(self, tenant: str) -> int:
        return self._by_tenant[tenant]

    def enter(self, tenant: str = DEFAULT_TENANT, priority: Priority | None = None) -> Slot:
        """A slot for one more encode, or 429 (:class:`OverloadedError`,
        :class:`TenantLimitError`) when the process, bulk work's share or the tenant's
        limit is used up."""
        priority = priority or current_priority()
        tenant_limit = self._tenant_limit(tenant)
        if tenant_limit and self._by_tenant[tenant] >= tenant_limit:
            self._metrics.tenant_refused.labels(tenant, "pending_encodes").inc()
            raise TenantLimitError(
                f"tenant {tenant!r} already has {tenant_limit} new images being encoded, its "
                "limit (ESAM_TENANT_PENDING_ENCODES); retry shortly",
                retry_after_s=self.retry_after_s,
            )
        if self._pending >= self.limit:
            self._metrics.encodes_refused.inc()
            raise OverloadedError(
                f"{self.limit} new images are already being encoded by this gateway; retry shortly",
                retry_after_s=self.retry_after_s,
            )
        if priority == "bulk" and self._bulk >= self.bulk_limit:
            self._metrics.encodes_refused.inc()
            self._metrics.tenant_refused.labels(tenant, "bulk_share").inc()
            raise OverloadedError(
                f"bulk work already holds {self.bulk_limit} of this gateway's {self.limit} "
                "encode slots, its share (ESAM_INTERACTIVE_SHARE keeps the rest for "
                "interactive requests); retry shortly",
                retry_after_s=self.retry_after_s,
            )
        self._pending += 1
        self._bulk += priority == "bulk"
        self._by_tenant[tenant] += 1
        self._metrics.pending_encodes.set(self._pending)
        self._metrics.tenant_pending_encodes.labels(tenant).set(self._by_tenant[tenant])
        return Slot(self, tenant, priority)

    def _release(self, slot: Slot) -> None:
        self._pending -= 1
        self._bulk -= slot.priority == "bulk"
        self._by_tenant[slot.tenant] -= 1
        self._metrics.pending_encodes.set(self._pending)
        self._metrics.tenant_pending_encodes.labels(slot.tenant).set(self._by_tenant[slot.tenant])
