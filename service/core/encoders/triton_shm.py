"""Shared-memory outputs: Triton writes each embedding straight into this process's memory.

With Triton on the same host (a sidecar container sharing ``/dev/shm``), the 2-4 MiB
embedding need not travel in the gRPC or HTTP answer: the gateway lends Triton a POSIX
shared-memory region per call in flight (registered once, reused), and Triton's answer
carries only the image size. That saved 2-3 ms of gateway CPU per new 1080p image in
``bench/triton.py`` (``docs/benchmarks.md``). ``ESAM_TRITON_SHARED_MEMORY=system`` turns it on.

A region goes back to the pool once Triton has answered. A call that ended without an
answer (deadline, cancellation, a broken connection) may still have Triton writing into
its region, so that region is retired instead: it is unregistered (Triton refuses while
it is in use) and destroyed later. A region Triton no longer knows (it restarted) makes
the call fail as "not found", which the caller treats as unreachable: the registrations
are forgotten and made again before the retry.
"""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.utils.shared_memory as shm
from numpy.typing import NDArray

log = logging.getLogger(__name__)

#: Where Linux keeps POSIX shared-memory objects.
SHM_DIR = Path("/dev/shm")  # noqa: S108 - the shared-memory namespace, not a temp file


@dataclass
class OutputRegion:
    name: str  # Triton's name for it
    key: str  # the POSIX shared-memory object (/dev/shm/<key>)
    byte_size: int
    handle: Any

    def read(self, dtype: np.dtype[Any], shape: tuple[int, ...]) -> NDArray[Any]:
        """A copy of what Triton wrote (the region is reused by the next call)."""
        return np.array(shm.get_contents_as_numpy(self.handle, dtype, shape), copy=True)


class OutputRegions:
    """A pool of output regions for one Triton server, one per call in flight."""

    def __init__(self, byte_size: int) -> None:
        self.byte_size = byte_size
        self._prefix = f"esam_{os.getpid()}_{secrets.token_hex(4)}"
        self._count = 0
        self._free: list[OutputRegion] = []
        self._registered: set[str] = set()
        self._retired: list[OutputRegion] = []

    async def acquire(self, client: Any) -> OutputRegion:
        """A registered region for one call (created when none is free)."""
        if self._retired:
            await self._reclaim(client)
        region = self._free.pop() if self._free else self._create()
        try:
            if region.name not in self._registered:
                await self._register(client, region)
        except BaseException:
            self._free.append(region)
            raise
        return region

    def release(self, region: OutputRegion) -> None:
        """Triton has answered the call: the region is free again."""
        self._free.append(region)

    def retire(self, region: OutputRegion) -> None:
        """The call ended without an answer: Triton may still write into the region."""
        self._retired.append(region)

    def forget_registrations(self) -> None:
        """Triton may have restarted (and lost them): register each region again on use."""
        self._registered.clear()

    async def close(self, client: Any) -> None:
        regions = self._free + self._retired
        self._free, self._retired = [], []
        for region in regions:
            if region.name in self._registered:
                try:
                    await client.unregister_system_shared_memory(region.name)
                except Exception as exc:  # Triton gone, or still writing: it maps its own copy
                    log.debug("could not unregister %s: %s", region.name, exc)
            shm.destroy_shared_memory_region(region.handle)
        self._registered.clear()

    # ------------------------------------------------------------------------------------
    def _create(self) -> OutputRegion:
        self._count += 1
        name = f"{self._prefix}_{self._count}"
        handle = shm.create_shared_memory_region(name, f"/{name}", self.byte_size, create_only=True)
        # created 0600: Triton runs as another user in its own container, so the group may
        # read and write it too (give Triton the gateway's group; see docs/triton.md)
        os.chmod(SHM_DIR / name, 0o660)
        return OutputRegion(name, f"/{name}", self.byte_size, handle)

    async def _register(self, client: Any, region: OutputRegion) -> None:
        # a name Triton still holds from before a reconnect would refuse a second register;
        # unregistering a name it does not know succeeds
        await client.unregister_system_shared_memory(region.name)
        await client.register_system_shared_memory(region.name, region.key, region.byte_size)
        self._registered.add(region.name)

    async def _reclaim(self, client: Any) -> None:
        """Destroy the retired regions Triton has finished with."""
        still: list[OutputRegion] = []
        for region in self._retired:
            try:
                await client.unregister_system_shared_memory(region.name)
            except Exception as exc:  # "currently in use", or unreachable: later
                log.debug("retired region %s not released yet: %s", region.name, exc)
                still.append(region)
                continue
            self._registered.discard(region.name)
            shm.destroy_shared_memory_region(region.handle)
        self._retired = still
