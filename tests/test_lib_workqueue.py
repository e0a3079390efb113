"""The controllers' work queue: de-duplication, no key processed twice at once, delays, and the batch
period that folds a burst of status changes into one sync."""
from __future__ import annotations

import asyncio

from services.lib.workqueue import WorkQueue


async def _drain(q: WorkQueue, within: float) -> list[str]:
    """Keys handed out within `within` seconds (each marked done at once)."""
    got: list[str] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while (left := deadline - loop.time()) > 0:
        try:
            key = await asyncio.wait_for(q.get(), left)
        except TimeoutError:
            break
        got.append(key)
        q.done(key)
    return got


async def test_a_key_added_many_times_is_handed_out_once() -> None:
    q = WorkQueue()
    for _ in range(5):
        q.add("a")
    q.add("b")
    assert await _drain(q, 0.05) == ["a", "b"]


async def test_a_key_added_while_processed_comes_back_after_done() -> None:
    q = WorkQueue()
    q.add("a")
    key = await q.get()
    q.add("a")  # changed while a worker holds it: not handed to a second worker
    assert len(q) == 0
    q.done(key)
    assert await _drain(q, 0.05) == ["a"]


async def test_batched_adds_fold_into_one_after_the_period() -> None:
    q = WorkQueue()
    loop = asyncio.get_running_loop()
    async with asyncio.TaskGroup() as tg:
        delayed = tg.create_task(q.run_delayed())

        async def burst() -> None:  # a change every 20 ms for 100 ms, well inside the period
            for _ in range(5):
                q.add_batched("rs", 0.3)
                await asyncio.sleep(0.02)

        t0 = loop.time()
        tg.create_task(burst())
        got = await _drain(q, 0.45)
        assert got == ["rs"], got  # one sync for the whole burst, not one per change
        assert loop.time() - t0 >= 0.3
        q.add_batched("rs", 0.1)  # after it fired, the next change opens a new period
        assert await _drain(q, 0.3) == ["rs"]
        delayed.cancel()


async def test_a_batched_add_of_a_queued_key_changes_nothing() -> None:
    q = WorkQueue()
    async with asyncio.TaskGroup() as tg:
        delayed = tg.create_task(q.run_delayed())
        q.add("rs")
        q.add_batched("rs", 0.05)
        assert await _drain(q, 0.3) == ["rs"]
        delayed.cancel()
