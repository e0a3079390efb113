"""Request/reply on one wildcard inbox per connection, and JetStream publishes on top of it.

nats-py's `request` draws a NUID and `secrets.token_hex` (a getrandom system call) for every request
and waits through `asyncio.wait_for`; its JetStream `publish` then parses the ack with `json.loads`
into a dataclass. Every API call and every write of the state log is one of these, so they are done
here with a counter for the token, a timer for the timeout and msgspec for the ack. Errors are the
ones nats-py raises, so callers handle them the same way.
"""
from __future__ import annotations

import asyncio
import itertools
import weakref

import msgspec
import nats.errors
import nats.js.errors as jserr
from nats.aio.client import Client
from nats.aio.msg import Msg

from .inbox import time_out

NO_RESPONDERS = "503"


class _JsError(msgspec.Struct):
    code: int = 0
    err_code: int | None = None
    description: str | None = None


class PubAck(msgspec.Struct):
    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    domain: str | None = None
    error: _JsError | None = None


_PUB_ACK = msgspec.json.Decoder(PubAck)


class Requester:
    def __init__(self, nc: Client):
        self.nc = nc
        self._prefix = ""
        self._pending: dict[str, asyncio.Future[Msg]] = {}
        self._tokens = itertools.count(1)
        self._subscribing: asyncio.Lock | None = None

    async def _ensure_subscribed(self) -> None:
        if self._subscribing is None:
            self._subscribing = asyncio.Lock()
        async with self._subscribing:
            if self._prefix:
                return
            prefix = self.nc.new_inbox() + "."
            # The callback only resolves a future, so nats-py's queue in front of it never builds up.
            await self.nc.subscribe(prefix + "*", cb=self._on_reply, pending_msgs_limit=-1, pending_bytes_limit=-1)
            self._prefix = prefix

    async def _on_reply(self, msg: Msg) -> None:
        fut = self._pending.get(msg.subject[len(self._prefix):])
        if fut is not None and not fut.done():
            fut.set_result(msg)

    async def request(self, subject: str, payload: bytes, timeout: float,
                      headers: dict[str, str] | None = None) -> Msg:
        """Like `Client.request`: nats.errors.TimeoutError when no reply comes in time,
        NoRespondersError when nobody is subscribed to `subject`."""
        if not self._prefix:
            await self._ensure_subscribed()
        token = str(next(self._tokens))
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Msg] = loop.create_future()
        self._pending[token] = fut
        timer = loop.call_later(timeout, time_out, fut)
        try:
            await self.nc.publish(subject, payload, reply=self._prefix + token, headers=headers)
            msg = await fut
        finally:
            timer.cancel()
            del self._pending[token]
        if not msg.data and msg.headers and msg.headers.get("Status") == NO_RESPONDERS:
            raise nats.errors.NoRespondersError
        return msg

    async def js_publish(self, subject: str, payload: bytes, timeout: float,
                         headers: dict[str, str] | None = None) -> PubAck:
        """Like `JetStreamContext.publish`: the stream's ack, or the APIError (subclass) nats-py raises."""
        try:
            msg = await self.request(subject, payload, timeout, headers)
        except nats.errors.NoRespondersError:
            raise jserr.NoStreamResponseError from None
        ack = _PUB_ACK.decode(msg.data)
        if ack.error is not None:
            jserr.APIError.from_error(msgspec.structs.asdict(ack.error))  # raises
        return ack


_requesters: "weakref.WeakKeyDictionary[Client, Requester]" = weakref.WeakKeyDictionary()


def requester(nc: Client) -> Requester:
    """The one Requester of a connection (one reply subscription however many clients share it)."""
    r = _requesters.get(nc)
    if r is None:
        r = _requesters[nc] = Requester(nc)
    return r
