"""Reading a subscription's messages in order, without nats-py's per-message tasks.

nats-py's `Subscription.next_msg(timeout)` starts two tasks and draws a uuid4 for every message, and
its `messages` iterator starts a task and an `asyncio.wait` for every message: in the API server,
which reads every request and every change of the state log that way, that was a tenth of its CPU.
Here the subscription's callback queues the message, a message that has already arrived is handed
over at once, and only a read that has to wait creates a future (and a timer when it has a timeout).

A `MessageQueue` does not end by itself: when its subscription goes (unsubscribed, or the connection
closed) a reader waits on, so every reader here has a timeout or a watchdog of its own.
"""
from __future__ import annotations

import asyncio
from collections import deque

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import ConnectionClosedError


class Overflow(Exception):
    """The reader fell more than the queue's limit behind: messages were dropped."""


class MessageQueue:
    """A subscription's messages for one reader (a second concurrent reader would steal its wake-up)."""

    def __init__(self, limit: int | None = None) -> None:
        self._messages: deque[Msg] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._limit = limit
        self._overflowed = False

    async def put(self, msg: Msg) -> None:
        """The subscription's callback (`subscribe(..., cb=queue.put)`)."""
        if self._limit is not None and len(self._messages) >= self._limit:
            self._overflowed = True  # dropped: the reader learns it at its next read
        else:
            self._messages.append(msg)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def __len__(self) -> int:
        return len(self._messages)

    async def get(self, timeout: float | None = None) -> Msg:
        """The next message; TimeoutError if none comes within `timeout` seconds, Overflow once a
        message had to be dropped (what came before it is not handed over either: the stream is broken)."""
        if self._overflowed:
            raise Overflow(f"more than {self._limit} messages unread")
        if self._messages:
            return self._messages.popleft()
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(timeout, time_out, waiter) if timeout is not None else None
        try:
            await waiter
        finally:
            if timer is not None:
                timer.cancel()
            self._waiter = None
        if self._overflowed:
            raise Overflow(f"more than {self._limit} messages unread")
        return self._messages.popleft()

    def __aiter__(self) -> "MessageQueue":
        return self

    async def __anext__(self) -> Msg:
        return await self.get()


def time_out(waiter: asyncio.Future) -> None:
    """A timer's end for a waiter: nats-py's TimeoutError, which is also the built-in TimeoutError."""
    if not waiter.done():
        waiter.set_exception(nats.errors.TimeoutError())


async def subscribe(nc: Client, subject: str, queue: str = "",
                    limit: int | None = None) -> tuple[Subscription, MessageQueue]:
    """A core NATS subscription read through a MessageQueue (nats-py's own queue in front of it is
    drained as messages come, so no limit is set there; `limit` bounds ours)."""
    messages = MessageQueue(limit)
    sub = await nc.subscribe(subject, queue=queue, cb=messages.put, pending_msgs_limit=-1, pending_bytes_limit=-1)
    return sub, messages


class Inbox:
    """A fresh inbox subject for a stream of replies (a watch, a log stream), read with a timeout per
    message; unsubscribed on exit. A reader more than `limit` messages behind gets Overflow."""

    def __init__(self, nc: Client, limit: int | None = None):
        self.nc = nc
        self.subject = nc.new_inbox()
        self.limit = limit
        self._sub: Subscription | None = None
        self._messages = MessageQueue(limit)

    async def __aenter__(self) -> "Inbox":
        self._sub, self._messages = await subscribe(self.nc, self.subject, limit=self.limit)
        return self

    async def __aexit__(self, *exc: object) -> None:
        # Closed or draining (shutdown): the subscription goes with the connection.
        if self._sub is not None and not self.nc.is_closed and not self.nc.is_draining:
            await self._sub.unsubscribe()

    async def get(self, timeout: float) -> Msg:
        """The next message; TimeoutError if none comes within `timeout` seconds."""
        if not len(self._messages) and self.nc.is_closed:
            raise ConnectionClosedError
        return await self._messages.get(timeout)
