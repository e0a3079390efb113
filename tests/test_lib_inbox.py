"""Reading subscriptions (services/lib/inbox.py) against a real nats-server: order, timeouts, the end
of an inbox, and no task per message (what made nats-py's own readers expensive)."""
from __future__ import annotations

import asyncio

import pytest

from services.lib.inbox import Inbox, subscribe


async def test_messages_come_in_order_and_a_quiet_inbox_times_out(nc) -> None:
    async with Inbox(nc) as inbox:
        for i in range(100):
            await nc.publish(inbox.subject, str(i).encode())
        await nc.flush()
        got = [int((await inbox.get(2.0)).data) for _ in range(100)]
        assert got == list(range(100))
        # A quiet inbox times out: the read ends with TimeoutError (within a bound generous enough
        # for a loaded machine; a read that ignored its timeout would still be waiting), and not
        # before its time (a lower bound: load only makes it later).
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        quiet = asyncio.ensure_future(inbox.get(0.2))
        done, _ = await asyncio.wait({quiet}, timeout=30)
        if not done:
            quiet.cancel()
        assert quiet in done, "get(0.2) on a quiet inbox was still waiting after 30 s"
        assert isinstance(quiet.exception(), TimeoutError), quiet.exception()
        assert loop.time() - t0 >= 0.19
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
        await all_handed_to(inbox)  # the 11th dropped
        with pytest.raises(Overflow):
            await inbox.get(1.0)
    async with Inbox(nc, limit=10) as inbox:  # within the limit: nothing lost
        for i in range(10):
            await nc.publish(inbox.subject, str(i).encode())
        await nc.flush()
        await all_handed_to(inbox)
        assert [int((await inbox.get(1.0)).data) for _ in range(10)] == list(range(10))


async def all_handed_to(inbox: Inbox, timeout: float = 30.0) -> None:
    """Wait until nats-py's callback task has handed every message it received to our queue (after
    `flush` they are all received; the callback runs in a task of its own, so not necessarily yet)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    assert inbox._sub is not None
    while inbox._sub.pending_msgs:
        assert loop.time() < deadline, f"{inbox._sub.pending_msgs} messages still not handed over"
        await asyncio.sleep(0.01)
