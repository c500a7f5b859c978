"""Micro-batching queue: concurrent requests share one model call.

The worker takes the first queued item, adds whatever else is already waiting
(up to ``max_batch``) and runs the batch. Items carry a rank (lower first: an
interactive request's encode before queued bulk ones), first come first served
within a rank. The queue has no bound of its own:
``core.admission`` bounds the encodes pending in the process before an image is
even decoded, whatever the encoder.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


class Batcher(Generic[In, Out]):
    def __init__(
        self,
        run_batch: Callable[[list[In]], Awaitable[list[Out]]],
        *,
        max_batch: int,
    ) -> None:
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._queue: asyncio.PriorityQueue[tuple[int, int, In, asyncio.Future[Out]]] = (
            asyncio.PriorityQueue()
        )
        self._order = itertools.count()
        self._worker: asyncio.Task[None] | None = None

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.create_task(self._work(), name="batcher")

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None

    async def submit(self, item: In, rank: int = 0) -> Out:
        self.start()
        future: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((rank, next(self._order), item, future))
        return await future

    async def _work(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            live = [(item, fut) for _, _, item, fut in batch if not fut.done()]
            if not live:
                continue
            try:
                results = await self._run_batch([item for item, _ in live])
            except Exception as exc:  # delivered to every waiter of this batch
                for _, fut in live:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, fut), result in zip(live, results, strict=True):
                if not fut.done():
                    fut.set_result(result)
