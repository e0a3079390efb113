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
    period = 0.5
    async with asyncio.TaskGroup() as tg:
        delayed = tg.create_task(q.run_delayed())
        adds: list[float] = []

        async def burst() -> None:  # a change every 20 ms for 100 ms, well inside the period
            for _ in range(5):
                adds.append(loop.time())
                q.add_batched("rs", period)
                await asyncio.sleep(0.02)

        t0 = loop.time()
        tg.create_task(burst())
        # Waited for, however long a loaded machine takes; never handed out before its period.
        first = await asyncio.wait_for(q.get(), 30)
        assert first == "rs" and loop.time() - t0 >= period
        q.done(first)
        while len(adds) < 5:  # the rest of the burst, if a stalled loop let the period end first
            await asyncio.sleep(0.01)
        # Whatever is still to come is handed out by `period` after the last add; waiting past that
        # only finds a duplicate, it cannot miss a due key.
        rest = await _drain(q, adds[-1] + period + 0.3 - loop.time())
        if adds[-1] - adds[0] < period:  # the whole burst fell inside one period (all but a stalled run)
            assert rest == [], f"{1 + len(rest)} syncs for one burst: one per change, not one per period"
        else:
            assert len(rest) <= 4, f"{1 + len(rest)} syncs for a burst spread over {adds[-1] - adds[0]:.2f}s"
        q.add_batched("rs", 0.1)  # after it fired, the next change opens a new period
        assert await asyncio.wait_for(q.get(), 30) == "rs"
        delayed.cancel()


async def test_a_batched_add_of_a_queued_key_changes_nothing() -> None:
    q = WorkQueue()
    async with asyncio.TaskGroup() as tg:
        delayed = tg.create_task(q.run_delayed())
        q.add("rs")
        q.add_batched("rs", 0.05)
        assert await _drain(q, 0.3) == ["rs"]
        delayed.cancel()


async def test_run_delayed_ends_when_cancelled_as_a_delayed_add_wakes_it() -> None:
    """A leader that steps down cancels its work queue's timer task just as its workers requeue
    the writes that were refused (add_after wakes that task). Python 3.11's `asyncio.wait_for`
    returns instead of raising when the cancel meets a wake-up, and the task then ran for ever: the
    controller never led again (seen in a chaos run). Every interleaving of the two must end it."""
    for turns in range(6):
        q = WorkQueue()
        task = asyncio.create_task(q.run_delayed())
        q.add_after("k", 30)
        await asyncio.sleep(0.01)  # waiting for k's time (a wait with a timeout)
        q.add_after("j", 30)  # wakes it
        for _ in range(turns):
            await asyncio.sleep(0)
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=2)
        assert done, f"run_delayed survived a cancel {turns} loop turns after a wake-up"
        assert task.cancelled()
