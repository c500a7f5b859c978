"""Tenants and priorities at their own level: key entries, the interactive share of the
pending-encode budget and of the decoder's slots, per-tenant pending encodes, and the
local batch queue's order."""

from __future__ import annotations

import asyncio

import pytest

from service.core.admission import Admission
from service.core.batching import Batcher
from service.core.metrics import Metrics
from service.core.tenancy import (
    ApiKey,
    PrioritySlots,
    bulk_share,
    current_priority,
    parse_keys,
    priority_scope,
    split_entries,
)
from service.errors import OverloadedError, TenantLimitError

KEY = "k" * 16


def test_key_entries_name_their_tenant() -> None:
    assert parse_keys([f"acme:{KEY}", f"{KEY}x", f"team-2:{KEY}:with:colons"]) == [
        ApiKey("acme", KEY),
        ApiKey("default", f"{KEY}x"),
        ApiKey("team-2", f"{KEY}:with:colons"),
    ]
    assert split_entries(f"# a comment\nacme:{KEY}, b:{KEY}y\n\n") == [f"acme:{KEY}", f"b:{KEY}y"]


@pytest.mark.parametrize(
    ("entry", "complaint"),
    [
        (f"Acme:{KEY}", "tenant"),
        (f"{'a' * 33}:{KEY}", "tenant"),
        ("acme:short", "16 characters"),
        ("short", "16 characters"),
    ],
)
def test_bad_key_entries_are_refused_without_showing_the_key(entry: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint) as refused:
        parse_keys([entry])
    assert entry.rpartition(":")[2] not in str(refused.value)
    with pytest.raises(ValueError, match="twice"):
        parse_keys([f"a:{KEY}", f"b:{KEY}"])


def test_bulk_share_keeps_at_least_one_slot_for_annotators() -> None:
    assert bulk_share(32, 0.25) == 24
    assert bulk_share(2, 0.25) == 1
    assert bulk_share(4, 0.5) == 2
    assert bulk_share(1, 0.25) == 1  # one slot cannot be split: shared
    assert bulk_share(8, 0.0) == 8


def test_bulk_encodes_stop_at_their_share_and_tenants_at_their_limit() -> None:
    metrics = Metrics()
    limits = {"acme": 2}
    admission = Admission(
        4, metrics, interactive_share=0.25, tenant_limit=lambda t: limits.get(t, 0)
    )
    bulk = [admission.enter("globex", "bulk") for _ in range(3)]
    with pytest.raises(OverloadedError, match="ESAM_INTERACTIVE_SHARE"):
        admission.enter("globex", "bulk")
    annotator = admission.enter("globex", "interactive")  # the share kept for annotators
    with pytest.raises(OverloadedError):
        admission.enter("globex", "interactive")  # and the whole budget is used now
    for slot in bulk:
        slot.release()
    annotator.release()
    assert admission.pending == 0

    held = [admission.enter("acme", "interactive") for _ in range(2)]
    with pytest.raises(TenantLimitError, match="acme"):
        admission.enter("acme", "interactive")
    other = admission.enter("globex", "interactive")  # another tenant is not held back
    assert admission.pending_for("acme") == 2
    for slot in [*held, other]:
        slot.release()
        slot.release()  # idempotent
    assert admission.pending == 0
    assert admission.pending_for("acme") == 0
    refused = metrics.registry.get_sample_value(
        "esam_tenant_refused_total", {"tenant": "acme", "limit": "pending_encodes"}
    )
    assert refused == 1


def test_the_priority_travels_with_the_request() -> None:
    assert current_priority() == "interactive"
    with priority_scope("bulk"):
        assert current_priority() == "bulk"
        assert Admission(2, Metrics()).enter().priority == "bulk"
    assert current_priority() == "interactive"


async def test_decoder_slots_hand_a_freed_slot_to_an_annotator_first() -> None:
    slots = PrioritySlots(2, 1)
    order: list[str] = []
    release = asyncio.Event()

    async def work(name: str, priority: str) -> None:
        async with slots.hold("bulk" if priority == "bulk" else "interactive"):
            order.append(name)
            await release.wait()

    first_bulk = asyncio.create_task(work("bulk-1", "bulk"))
    await asyncio.sleep(0)
    assert slots.bulk_busy == 1
    second_bulk = asyncio.create_task(work("bulk-2", "bulk"))  # past bulk's share: waits
    await asyncio.sleep(0)
    assert order == ["bulk-1"]
    assert not slots.locked("interactive")  # the kept slot is free for an annotator
    clicks = [asyncio.create_task(work(f"click-{i}", "interactive")) for i in range(2)]
    await asyncio.sleep(0)
    assert order == ["bulk-1", "click-0"]  # click-1 waits for a slot
    release.set()
    await asyncio.gather(first_bulk, second_bulk, *clicks)
    assert order.index("click-1") < order.index("bulk-2")  # the annotator went first
    assert slots.busy == 0


async def test_a_cancelled_wait_gives_its_slot_back() -> None:
    slots = PrioritySlots(1, 1)
    gate = asyncio.Event()

    async def hold() -> None:
        async with slots.hold("interactive"):
            await gate.wait()

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0)
    waiter = asyncio.create_task(hold())
    await asyncio.sleep(0)
    waiter.cancel()
    gate.set()
    await holder
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert slots.busy == 0
    async with slots.hold("bulk"):
        assert slots.busy == 1


async def test_the_batch_queue_takes_interactive_items_before_queued_bulk_ones() -> None:
    batches: list[list[str]] = []
    started = asyncio.Event()
    go = asyncio.Event()

    async def run(items: list[str]) -> list[str]:
        batches.append(items)
        started.set()
        await go.wait()
        return items

    batcher: Batcher[str, str] = Batcher(run, max_batch=2)
    first = asyncio.create_task(batcher.submit("first", rank=2))
    await started.wait()  # the worker is busy with the first batch
    queued = [
        asyncio.create_task(batcher.submit(name, rank=rank))
        for name, rank in (("bulk-a", 2), ("bulk-b", 2), ("click", 1), ("bulk-c", 2))
    ]
    await asyncio.sleep(0)
    go.set()
    await asyncio.gather(first, *queued)
    await batcher.close()
    assert batches == [["first"], ["click", "bulk-a"], ["bulk-b", "bulk-c"]]


async def test_waiting_tenants_get_the_slots_in_turn() -> None:
    slots = PrioritySlots(1, 1)
    order: list[str] = []
    gate = asyncio.Event()

    async def work(name: str, tenant: str) -> None:
        with priority_scope("interactive", tenant):
            async with slots.hold():
                order.append(name)
                if name == "busy":
                    await gate.wait()

    holder = asyncio.create_task(work("busy", "flood"))
    await asyncio.sleep(0)
    queued = [asyncio.create_task(work(f"flood-{i}", "flood")) for i in range(4)]
    await asyncio.sleep(0)
    queued.append(asyncio.create_task(work("team-0", "team")))  # arrives behind four
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(holder, *queued)
    # the team's one request goes after one flood request, not after all four
    assert order == ["busy", "flood-0", "team-0", "flood-1", "flood-2", "flood-3"]
