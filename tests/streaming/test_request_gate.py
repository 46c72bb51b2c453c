"""``RequestGate``: live REST requests first, trade repairs only in the gaps and within their
weight budget (pure logic; the loop's own clock, no HTTP)."""

from __future__ import annotations

import asyncio

from data_collector.venues.binance.rest import RequestGate


async def test_a_background_request_waits_while_a_live_one_runs() -> None:
    gate = RequestGate(background_weight_per_min=1000)
    order: list[str] = []
    release = asyncio.Event()

    async def live() -> None:
        async with gate.live():
            order.append("live started")
            await release.wait()
            order.append("live done")

    async def background() -> None:
        await gate.background(25)
        order.append("background admitted")

    live_task = asyncio.create_task(live())
    await asyncio.sleep(0)
    background_task = asyncio.create_task(background())
    for _ in range(20):  # the background request has every chance to jump the queue
        await asyncio.sleep(0)
    assert order == ["live started"]
    release.set()
    await asyncio.gather(live_task, background_task)
    assert order == ["live started", "live done", "background admitted"]


async def test_a_live_request_never_waits_for_background_ones() -> None:
    gate = RequestGate(background_weight_per_min=25)
    await gate.background(25)
    blocked = asyncio.create_task(gate.background(25))  # over the budget: waits up to 60 s
    await asyncio.sleep(0)
    async with asyncio.timeout(1):
        async with gate.live():
            pass
    assert not blocked.done()
    blocked.cancel()


async def test_background_weight_stays_within_the_budget() -> None:
    gate = RequestGate(background_weight_per_min=100)
    for _ in range(4):
        await gate.background(25)
    assert gate.background_requests == 4
    fifth = asyncio.create_task(gate.background(25))
    await asyncio.sleep(0.05)
    assert not fifth.done(), "a fifth 25-weight request went out within the minute"
    fifth.cancel()
