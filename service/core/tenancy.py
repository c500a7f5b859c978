"""Tenants and priorities: who a request is for, and whether it is an annotator's.

A tenant is the team or customer an API key belongs to (``ESAM_API_KEYS`` entries
``tenant:key``; a bare key belongs to :data:`DEFAULT_TENANT`). Embeddings are stored
once by content, and each records the tenants that uploaded its image: a tenant sees
only its own (see ``core.cache``).

A request is ``interactive`` (an annotator waiting: the default) or ``bulk`` (a
precompute, a batch of predictions, a segment-everything job). The request's priority
travels with it as a context variable (:func:`current_priority`), set once at the
edge, read where it decides something: the pending-encode budget, the decoder's slots,
the local batch queue and the priority of the request sent to Triton. Work that a
request started keeps the priority it started with (asyncio copies the context into
tasks).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal, get_args

DEFAULT_TENANT = "default"
#: lowercase letters, digits and ``-``, at most 32 characters
TENANT_PATTERN = re.compile(r"^[a-z0-9-]{1,32}$")
MIN_KEY_LENGTH = 16

Priority = Literal["interactive", "bulk"]
PRIORITIES: tuple[Priority, ...] = get_args(Priority)
#: lower is served first: the local batch queue's rank and Triton's priority level (the
#: models declare ``priority_levels: 2``)
PRIORITY_RANK: dict[Priority, int] = {"interactive": 1, "bulk": 2}


@dataclass(frozen=True)
class ApiKey:
    tenant: str
    key: str


def parse_keys(entries: Iterable[str]) -> list[ApiKey]:
    """``tenant:key`` or ``key`` (tenant ``default``) entries; a ``ValueError`` names the
    bad entries by position (never the key itself)."""
    keys: list[ApiKey] = []
    problems: list[str] = []
    for position, raw in enumerate(entries, start=1):
        entry = raw.strip()
        tenant, separator, key = entry.partition(":")
        if not separator:
            tenant, key = DEFAULT_TENANT, entry
        if not TENANT_PATTERN.match(tenant):
            problems.append(
                f"entry {position}: the tenant before ':' must be lowercase letters, digits "
                "and '-', at most 32 characters"
            )
        elif len(key) < MIN_KEY_LENGTH:
            problems.append(
                f"entry {position}: every API key must be at least {MIN_KEY_LENGTH} characters"
            )
        else:
            keys.append(ApiKey(tenant, key))
    if problems:
        raise ValueError("; ".join(problems))
    if len({k.key for k in keys}) != len(keys):
        raise ValueError("an API key is listed twice")
    return keys


def split_entries(text: str) -> list[str]:
    """Entries of a keys file or variable: separated by commas or lines; ``#`` starts a
    comment line."""
    entries = []
    for line in text.splitlines():
        if line.strip().startswith("#"):
            continue
        entries += [item.strip() for item in line.split(",") if item.strip()]
    return entries


_priority: ContextVar[Priority] = ContextVar("esam_priority", default="interactive")
_tenant: ContextVar[str] = ContextVar("esam_tenant", default=DEFAULT_TENANT)


def current_priority() -> Priority:
    return _priority.get()


def current_rank() -> int:
    """The request's :data:`PRIORITY_RANK` (the batch queue's rank, Triton's level)."""
    return PRIORITY_RANK[_priority.get()]


def current_tenant() -> str:
    """The request's tenant, for fair shares of shared capacity (never for access: the
    cache's by-id operations take the tenant as an argument)."""
    return _tenant.get()


@contextlib.contextmanager
def priority_scope(priority: Priority, tenant: str | None = None) -> Iterator[None]:
    """Run the block (and the tasks it starts) at ``priority`` (and for ``tenant``)."""
    token = _priority.set(priority)
    tenant_token = _tenant.set(tenant) if tenant is not None else None
    try:
        yield
    finally:
        if tenant_token is not None:
            _tenant.reset(tenant_token)
        _priority.reset(token)


def bulk_share(total: int, interactive_share: float) -> int:
    """How many of ``total`` slots bulk work may hold: all but the interactive share
    (rounded up, at least one), and never fewer than one (a single slot is shared)."""
    if total <= 1:
        return total
    reserved = max(1, math.ceil(total * interactive_share)) if interactive_share > 0 else 0
    return max(1, total - reserved)


class PrioritySlots:
    """``total`` slots, of which bulk work may hold at most ``bulk_max``; a freed slot
    goes to a waiting interactive request before any bulk one, and within a priority to
    the tenants in turn (round robin; first come, first served within a tenant): a
    tenant with many requests waiting delays another's by one turn, not by its queue."""

    def __init__(self, total: int, bulk_max: int) -> None:
        if total < 1 or not 1 <= bulk_max <= total:
            raise ValueError("need 1 <= bulk_max <= total")
        self.total = total
        self.bulk_max = bulk_max
        self._busy = 0
        self._bulk_busy = 0
        self._waiters: dict[Priority, OrderedDict[str, deque[asyncio.Future[None]]]] = {
            p: OrderedDict() for p in PRIORITIES
        }

    @property
    def busy(self) -> int:
        return self._busy

    @property
    def bulk_busy(self) -> int:
        return self._bulk_busy

    def locked(self, priority: Priority = "interactive") -> bool:
        """A request at ``priority`` would have to wait: no slot it may take is free, or
        requests it must not overtake are waiting (interactive ones; for bulk, bulk too)."""
        ahead = self._waiters["interactive"] or (priority == "bulk" and self._waiters["bulk"])
        return not self._free(priority) or bool(ahead)

    def _free(self, priority: Priority) -> bool:
        if self._busy >= self.total:
            return False
        return priority == "interactive" or self._bulk_busy < self.bulk_max

    def _take(self, priority: Priority) -> None:
        self._busy += 1
        if priority == "bulk":
            self._bulk_busy += 1

    def _release(self, priority: Priority) -> None:
        self._busy -= 1
        if priority == "bulk":
            self._bulk_busy -= 1
        self._wake()

    def _next_waiter(self, priority: Priority) -> asyncio.Future[None] | None:
        """The first waiter of the tenant whose turn it is (that tenant goes to the back)."""
        tenants = self._waiters[priority]
        while tenants:
            tenant, queue = next(iter(tenants.items()))
            future = queue.popleft()
            if queue:
                tenants.move_to_end(tenant)
            else:
                del tenants[tenant]
            if not future.done():
                return future
        return None

    def _wake(self) -> None:
        for priority in PRIORITIES:  # interactive first
            while self._waiters[priority] and self._free(priority):
                future = self._next_waiter(priority)
                if future is None:
                    break
                self._take(priority)
                future.set_result(None)

    async def _acquire(self, priority: Priority) -> None:
        if not self.locked(priority):
            self._take(priority)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        tenant = current_tenant()
        self._waiters[priority].setdefault(tenant, deque()).append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._release(priority)  # the slot was handed over as the wait was cancelled
            else:
                queue = self._waiters[priority].get(tenant)
                if queue is not None:
                    with contextlib.suppress(ValueError):
                        queue.remove(future)
                    if not queue:
                        del self._waiters[priority][tenant]
            raise

    @contextlib.asynccontextmanager
    async def hold(self, priority: Priority | None = None) -> AsyncIterator[None]:
        """Hold one slot for the block (at the request's priority unless given)."""
        chosen = priority or current_priority()
        await self._acquire(chosen)
        try:
            yield
        finally:
            self._release(chosen)
