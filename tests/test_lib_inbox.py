"""Reading subscriptions (services/lib/inbox.py) against a real nats-server: order, timeouts, the end
of an inbox, and no task per message (what made nats-py's own readers expensive)."""
from __future__ import annotations

import asyncio
import time

import pytest

from services.lib.inbox import Inbox, subscribe


async def test_messages_come_in_order_and_a_quiet_inbox_times_out(nc) -> None:
    async with Inbox(nc) as inbox:
        for i in range(100):
            await nc.publish(inbox.subject, str(i).encode())
        await nc.flush()
        got = [int((await inbox.get(2.0)).data) for _ in range(100)]
        assert got == list(range(100))
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            await inbox.get(0.2)
        assert 0.15 < time.monotonic() - t0 < 2.0
        # A message arriving while a read waits ends that wait.
        waiting = asyncio.ensure_future(inbox.get(5.0))
        await asyncio.sleep(0.05)
        await nc.publish(inbox.subject, b"late")
        assert (await waiting).data == b"late"


async def test_an_inbox_is_unsubscribed_on_exit(nc) -> None:
    async with Inbox(nc) as inbox:
        subject = inbox.subject
        await nc.publish(subject, b"x")
        assert (await inbox.get(2.0)).data == b"x"
    await nc.flush()
    # Nobody listens any more: a request there finds no responders.
    from nats.errors import NoRespondersError
    with pytest.raises(NoRespondersError):
        await nc.request(subject, b"anyone?", timeout=1.0)


async def test_reading_starts_no_task_per_message(nc) -> None:
    """nats-py's `messages` iterator starts a task per message and `next_msg` two: thousands of
    messages a second then cost more in wake-ups than in work. Count the tasks made while 2,000
    messages are read both ways."""
    loop = asyncio.get_running_loop()
    made = 0
    previous = loop.get_task_factory()

    def counting(loop: asyncio.AbstractEventLoop, coro, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal made
        made += 1
        return asyncio.Task(coro, loop=loop, **kwargs)

    sub, queue = await subscribe(nc, "inbox.test.tasks")
    async with Inbox(nc) as inbox:
        loop.set_task_factory(counting)
        try:
            for i in range(2000):
                await nc.publish("inbox.test.tasks", b"m")
                await nc.publish(inbox.subject, b"m")
            await nc.flush()
            for _ in range(2000):
                await queue.get(5.0)
                await inbox.get(5.0)
        finally:
            loop.set_task_factory(previous)
    await sub.unsubscribe()
    assert made < 20, f"{made} tasks made to read 4,000 messages"


async def test_a_reader_too_far_behind_gets_overflow(nc) -> None:
    from services.lib.inbox import Overflow

    async with Inbox(nc, limit=10) as inbox:
        for i in range(11):
            await nc.publish(inbox.subject, str(i).encode())
        await nc.flush()
        await asyncio.sleep(0.1)  # all delivered to the queue (the 11th dropped)
        with pytest.raises(Overflow):
            await inbox.get(1.0)
    async with Inbox(nc, limit=10) as inbox:  # within the limit: nothing lost
        for i in range(10):
            await nc.publish(inbox.subject, str(i).encode())
        await nc.flush()
        await asyncio.sleep(0.1)
        assert [int((await inbox.get(1.0)).data) for _ in range(10)] == list(range(10))
