"""The micro-batcher merges what is queued into batches of at most ``max_batch``."""

from __future__ import annotations

import asyncio

from service.core.batching import Batcher


async def test_concurrent_items_share_a_batch() -> None:
    batches: list[list[int]] = []
    gate = asyncio.Event()

    async def run(items: list[int]) -> list[int]:
        batches.append(items)
        await gate.wait()
        return [i * 10 for i in items]

    batcher: Batcher[int, int] = Batcher(run, max_batch=4)
    first = asyncio.create_task(batcher.submit(0))
    await asyncio.sleep(0.01)  # 0 is running alone; the next five queue up
    rest = [asyncio.create_task(batcher.submit(i)) for i in range(1, 6)]
    await asyncio.sleep(0.01)
    gate.set()
    assert await first == 0
    assert [await t for t in rest] == [10, 20, 30, 40, 50]
    assert batches == [[0], [1, 2, 3, 4], [5]]
    await batcher.close()


async def test_a_failed_batch_fails_only_its_own_waiters() -> None:
    async def run(items: list[int]) -> list[int]:
        if 13 in items:
            raise RuntimeError("unlucky")
        return items

    batcher: Batcher[int, int] = Batcher(run, max_batch=1)
    bad, good = await asyncio.gather(batcher.submit(13), batcher.submit(7), return_exceptions=True)
    assert isinstance(bad, RuntimeError)
    assert good == 7
    await batcher.close()


async def test_cancelled_waiter_is_skipped() -> None:
    seen: list[list[int]] = []
    gate = asyncio.Event()

    async def run(items: list[int]) -> list[int]:
        seen.append(items)
        await gate.wait()
        return items

    batcher: Batcher[int, int] = Batcher(run, max_batch=8)
    first = asyncio.create_task(batcher.submit(1))
    await asyncio.sleep(0.01)
    doomed = asyncio.create_task(batcher.submit(2))
    kept = asyncio.create_task(batcher.submit(3))
    await asyncio.sleep(0.01)
    doomed.cancel()
    gate.set()
    assert await first == 1
    assert await kept == 3
    assert seen == [[1], [3]]
    await batcher.close()
