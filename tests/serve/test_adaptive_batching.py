"""Adaptive batching (batcher.py): a batch waits for requests on their way, and only for them."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from eir_serve.batcher import Arrivals, Batcher

WINDOW_S = 5.0  # long, so that a wait that should not happen shows as a timeout, not as a slow test


def _batcher(arrivals: Arrivals, sizes: list[int]) -> Batcher:
    def predict(items: Sequence[Any], seeds: Sequence[int], scales: Sequence[float]) -> list[Any]:
        sizes.append(len(items))
        return list(items)

    b = Batcher(predict, 64, 0.0, 1024, arrivals=arrivals, batch_wait_s=WINDOW_S)
    b.start()
    return b


async def _submit(b: Batcher, arrivals: Arrivals, item: str) -> list[Any]:
    with arrivals.arriving():  # as the gate counts a request until its job is queued
        return await b.submit([item], [0], [1.0])


def test_a_batch_waits_for_a_request_on_its_way() -> None:
    async def main() -> list[int]:
        arrivals, sizes = Arrivals(), []
        b = _batcher(arrivals, sizes)
        late = asyncio.Event()

        async def slow_body() -> list[Any]:  # admitted now, its job queued later (its body arriving)
            with arrivals.arriving():
                await late.wait()
                return await b.submit(["b"], [0], [1.0])

        second = asyncio.create_task(slow_body())
        await asyncio.sleep(0)  # the second request is on its way before the first is queued
        first = asyncio.create_task(_submit(b, arrivals, "a"))
        await asyncio.sleep(0.2)
        assert not first.done()  # held for the request on its way
        late.set()
        assert await asyncio.wait_for(first, WINDOW_S / 2) == ["a"] and await second == ["b"]
        await asyncio.to_thread(b.stop)
        assert arrivals.on_the_way == 0
        return sizes

    assert asyncio.run(main()) == [2]


def test_nothing_on_its_way_no_wait() -> None:
    async def main() -> list[int]:
        arrivals, sizes = Arrivals(), []
        b = _batcher(arrivals, sizes)
        for item in ("a", "b", "c"):  # one client: each answer comes back before the next is sent
            assert await asyncio.wait_for(_submit(b, arrivals, item), WINDOW_S / 2) == [item]
        await asyncio.to_thread(b.stop)
        return sizes

    assert asyncio.run(main()) == [1, 1, 1]


def test_a_request_that_ends_without_queueing_is_no_longer_awaited() -> None:
    async def main() -> None:
        arrivals, sizes = Arrivals(), []
        b = _batcher(arrivals, sizes)

        async def refused() -> None:  # e.g. a 400 before its job is queued
            with arrivals.arriving():
                await asyncio.sleep(0.1)
                raise ValueError("bad input")

        task = asyncio.create_task(refused())
        await asyncio.sleep(0)
        first = asyncio.create_task(_submit(b, arrivals, "a"))
        try:
            await task
        except ValueError:
            pass
        assert await asyncio.wait_for(first, WINDOW_S / 2) == ["a"]  # not held for the whole window
        assert arrivals.on_the_way == 0 and sizes == [1]
        await asyncio.to_thread(b.stop)

    asyncio.run(main())
