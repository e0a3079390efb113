"""Watch sessions: from a resourceVersion, filtered by namespace and selectors, streamed to the
caller's inbox with a per-watch sequence number, bookmarks, and Gone when the version is too old."""
from __future__ import annotations

import asyncio
import uuid
from collections import deque
from collections.abc import Callable

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from schemas import ApiError, Resource, WatchAck, WatchEvent, WatchRequest
from schemas.base import ObjectMeta
from services.lib.codec import encode
from services.lib.log import get_logger

from . import nodeauth
from .decoding import strict_decode
from .objects import Objects
from .watchcache import Cached, Change, WatchCache

log = get_logger("flotilla.apiserver.watch")

MAX_BACKLOG = 500_000  # a watcher further behind than this is cut off and must re-watch
# Events queued faster than they are sent go out together, as one JSON array per message: per-message
# costs (NATS routing, the client's wakeup) dominate a busy watch. Bounded well below NATS' 1 MB
# max_payload; a single larger event still goes alone.
BATCH_BYTES = 256 * 1024
BATCH_EVENTS = 512
# A watch that sent less than BUSY_SECONDS ago waits LINGER_SECONDS before the next message, so that
# changes arriving in a stream share messages (Nagle's idea); a quiet watch sends at once.
BUSY_SECONDS = 0.02
LINGER_SECONDS = 0.005


def _deleted_bytes(c: Cached, rev: int) -> bytes:
    """The last state of a deleted (or no longer matching) object, stamped with the change's version."""
    obj = msgspec.structs.replace(c.obj, metadata=msgspec.structs.replace(c.obj.metadata, resource_version=str(rev)))
    return encode(obj)


def _time_out(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


class WatchSession:
    def __init__(self, server: "WatchServer", resource: Resource, inbox: str,
                 match: Callable[[Cached], bool], index_value: str | None, timeout: float | None):
        self.id = uuid.uuid4().hex
        self.server = server
        self.resource = resource.name
        self.kind = resource.kind
        self.rtype = resource.type
        self.inbox = inbox
        self.match = match
        self.index_value = index_value
        self.timeout = timeout
        self.queue: deque[tuple[str, bytes]] = deque()
        self._waiter: asyncio.Future[bool] | None = None  # set while run() waits for news
        self.seq = 0
        self.closed: str | None = None
        self.last_send = 0.0

    def offer(self, change: Change) -> None:
        new_ok = change.new is not None and self.match(change.new)
        old_ok = change.old is not None and self.match(change.old)
        if new_ok:
            self.queue.append(("MODIFIED" if old_ok else "ADDED", change.new.served))  # type: ignore[union-attr]
        elif old_ok:
            self.queue.append(("DELETED", _deleted_bytes(change.old, change.rev)))  # type: ignore[arg-type]
        else:
            return
        if len(self.queue) > MAX_BACKLOG:
            self.close("watcher too slow")
        self._wake()

    def close(self, why: str) -> None:
        if self.closed is None:
            self.closed = why
            self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(True)

    async def _woken_within(self, timeout: float) -> bool:
        """Wait for an offer or a close (True) or the timeout (False). Not `wait_for(event.wait())`:
        that starts a task per wake-up, and a node's watch wakes for nearly every event it gets."""
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(timeout, _time_out, waiter)
        try:
            return await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def _event(self, type_: str, obj: bytes) -> bytes:
        self.seq += 1
        return encode(WatchEvent(type=type_, seq=self.seq, object=msgspec.Raw(obj)))

    async def _send(self, type_: str, obj: bytes, reply: str | None = None) -> None:
        await self.server.nc.publish(self.inbox, self._event(type_, obj), reply=reply or "")

    async def _send_queued(self) -> None:
        """One message: the next event alone, or a JSON array of the next events in order."""
        if len(self.queue) == 1:
            await self._send(*self.queue.popleft())
            return
        batch, size = [], 0
        while self.queue and len(batch) < BATCH_EVENTS and (not batch or size + len(self.queue[0][1]) < BATCH_BYTES):
            event = self._event(*self.queue.popleft())
            batch.append(event)
            size += len(event) + 1
        await self.server.nc.publish(self.inbox, b"[" + b",".join(batch) + b"]" if len(batch) > 1 else batch[0])

    async def run(self, cache: WatchCache, bookmark_seconds: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout if self.timeout else None
        try:
            while self.closed is None:
                while self.queue and self.closed is None:
                    if len(self.queue) < BATCH_EVENTS and loop.time() - self.last_send < BUSY_SECONDS:
                        await asyncio.sleep(LINGER_SECONDS)
                    await self._send_queued()
                    self.last_send = loop.time()
                if self.closed is not None:
                    break
                wait = bookmark_seconds
                if deadline is not None:
                    wait = min(wait, deadline - loop.time())
                    if wait <= 0:
                        self.close("timeout")
                        break
                if not await self._woken_within(wait):
                    if not self.queue and self.closed is None:
                        # Bookmarks double as liveness checks: with a reply subject, NATS answers
                        # "no responders" when the watcher's inbox is gone, and the session ends.
                        mark = self.rtype(metadata=ObjectMeta(resource_version=str(cache.rev)))
                        await self._send("BOOKMARK", encode(mark), reply=f"{self.server.ack_prefix}.{self.id}")
            if self.closed not in ("gone-client", "server stopping"):
                status = ApiError("Timeout" if self.closed == "timeout" else "Gone" if self.closed == "gone" else "InternalError",
                                  f"watch closed: {self.closed}").to_status()
                await self._send("ERROR", encode(status))
        finally:
            cache.remove_watcher(self)
            self.server.sessions.pop(self.id, None)


class WatchServer:
    def __init__(self, nc: Client, objects: Objects, identity: str, bookmark_seconds: float = 2.0):
        self.nc = nc
        self.objects = objects
        self.bookmark_seconds = bookmark_seconds
        self.ack_prefix = f"_FLO.watchack.{uuid.uuid4().hex}"
        self.sessions: dict[str, WatchSession] = {}
        self.identity = identity

    async def on_ack(self, msg: Msg) -> None:
        """Replies to bookmarks: a 503 status means nobody listens on the watch inbox any more."""
        if msg.headers and msg.headers.get("Status") == "503":
            session = self.sessions.get(msg.subject.rsplit(".", 1)[-1])
            if session is not None:
                session.close("gone-client")

    async def open(self, r: Resource, body: bytes, reply: str, node: str | None) -> WatchSession | None:
        """Set up a session (or raise ApiError). Returns None if the caller gave nowhere to send to."""
        req = strict_decode(body, WatchRequest, "watch request")
        inbox = req.inbox or reply
        if not inbox:
            raise ApiError("BadRequest", "a watch needs a reply subject (or `inbox`) to stream events to")
        ns = req.namespace if r.namespaced and req.namespace else None
        if node:
            nodeauth.check_request(node, r, "watch", ns, None, req.field_selector)
        match, fields = self.objects.matcher(r, ns, req.label_selector, req.field_selector)
        # Unscheduled pods (`spec.nodeName=`) are not in the node index: watch those unindexed.
        index_value = (fields.value_of("spec.nodeName") or None) if r.name == "pods" else None
        cache = self.objects.cache_for(r)
        await cache.ready.wait()
        timeout = float(req.timeout_seconds) if req.timeout_seconds else None
        session = WatchSession(self, r, inbox, match, index_value, timeout)
        rv = req.resource_version
        # No await between reading the cache and registering the session: nothing can slip between.
        if rv in (None, "", "0"):
            table = cache.objects[r.name]
            if index_value is not None:
                current = [table[k] for k in cache.pods_by_node.get(index_value, ()) if k in table]
            else:
                current = list(table.values())
            for c in sorted(current, key=lambda c: c.rev):
                if match(c):
                    session.queue.append(("ADDED", c.served))
        else:
            try:
                since = int(rv)
            except ValueError:
                raise ApiError("BadRequest", f"resourceVersion: invalid value {rv!r}", field="resourceVersion") from None
            if since < cache.oldest:
                raise ApiError("Gone", f"too old resource version: {since} ({cache.oldest})")
            if since > cache.rev:
                await cache.wait_for(since, timeout=5.0)
                return await self.open(r, body, reply, node)
            for change in cache.since(since):
                if change.resource == r.name:
                    session.offer(change)
        cache.add_watcher(session)
        self.sessions[session.id] = session
        ack = WatchAck(type="ACK", seq=0, resource_version=str(cache.rev), watch_id=session.id,
                       bookmark_seconds=self.bookmark_seconds)
        await self.nc.publish(inbox, encode(ack))
        return session

    def stop_all(self) -> None:
        for s in list(self.sessions.values()):
            s.close("server stopping")
