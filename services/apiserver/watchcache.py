"""The watch cache: one ordered consumer on a bucket's stream feeds an in-memory copy of every object
and a window of recent changes, from which lists and watches are served (like kube-apiserver's cacher).
"""
from __future__ import annotations

import asyncio
import bisect
from collections.abc import Callable
from typing import Protocol

import msgspec
import nats.errors
import nats.js.api as jsapi
from nats.aio.client import Client
from nats.js import JetStreamContext

from schemas import RESOURCES, TopObject, decode_key
from services.lib.codec import with_resource_version
from services.lib.inbox import MessageQueue
from services.lib.log import get_logger

from .store import KV_OP, Bucket, StreamHead

log = get_logger("flotilla.apiserver.watchcache")

STALL_SECONDS = 1.0
RECONNECT_POLL_SECONDS = 0.05
RETRY_SECONDS = 0.2


_DECODERS = {name: msgspec.json.Decoder(r.type) for name, r in RESOURCES.items()}


class Cached(msgspec.Struct, gc=False):
    """One object as stored. The decoded object is not kept: every list inside a decoded object is
    tracked by Python's cyclic GC, and with thousands of pods cached its collections took 50-150 ms
    (and held most of the memory). What watches and lists filter on most (labels, a pod's node) is
    kept; anything else is decoded when asked for (`obj`). No cycles: not tracked by the GC itself."""

    key: str
    resource: str
    namespace: str | None
    name: str
    rev: int
    data: bytes
    labels: dict[str, str]  # only strings: a dict CPython does not track
    node_name: str | None = None  # pods: spec.nodeName
    _served: bytes | None = None

    @property
    def obj(self) -> TopObject:
        """The object, decoded afresh (a private copy), with its resourceVersion."""
        obj = _DECODERS[self.resource].decode(self.data)
        obj.metadata.resource_version = str(self.rev)
        return obj

    @property
    def served(self) -> bytes:
        """The object as replies carry it: the stored JSON plus its resourceVersion (encoded once)."""
        if self._served is None:
            self._served = with_resource_version(self.data, self.rev)
        return self._served


class Change(msgspec.Struct, gc=False):
    rev: int
    type: str  # ADDED, MODIFIED, DELETED
    resource: str
    new: Cached | None  # None when deleted
    old: Cached | None  # None when added


class Watcher(Protocol):
    """Hooked into the cache by the watch server; `offer` must not block."""

    resource: str
    index_value: str | None  # pods watched by spec.nodeName: only offered that node's changes

    def offer(self, change: Change) -> None: ...

    def close(self, why: str) -> None: ...


def _stream_seq(reply: str) -> int:
    """The stream sequence of a consumer's message, from its ack subject: `$JS.ACK.<stream>.<consumer>.
    <delivered>.<stream seq>.<consumer seq>.<time>.<pending>`, or with domain and account hash after
    `$JS.ACK` (12 tokens and more). `msg.metadata` decodes all of it into objects, for every change."""
    tokens = reply.split(".")
    return int(tokens[5] if len(tokens) == 9 else tokens[7])


def _pod_node(c: Cached | None) -> str | None:
    return c.node_name if c is not None else None


class WatchCache:
    def __init__(self, nc: Client, js: JetStreamContext, bucket: Bucket, history: int = 20_000):
        self.nc = nc
        self.js = js
        self.bucket = bucket
        self.history_limit = history
        self.rev = 0
        self.oldest = 0  # watches from a version below this get Gone
        self.ready = asyncio.Event()
        self.objects: dict[str, dict[str, Cached]] = {name: {} for name in RESOURCES}
        self.pods_by_node: dict[str, set[str]] = {}
        self._history: list[Change] = []
        self._history_revs: list[int] = []
        self._watchers: dict[str, set[Watcher]] = {}
        self._indexed: dict[tuple[str, str], set[Watcher]] = {}
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._consumed = 0  # messages taken from the consumer: the watchdog's sign of progress
        self._start_head = 0
        self._subscribed = False

    # ---- feeding --------------------------------------------------------------------------------
    async def run(self, head: Callable[[], "asyncio.Future[StreamHead]"]) -> None:
        """Follow the stream forever; re-subscribe from the last applied sequence when it stalls
        (a NATS restart loses the ephemeral consumer)."""
        while True:
            # The first fill reads only each key's last revision (the bucket keeps older ones for
            # consumers that fall behind, see store.HISTORY); after that, every message from rev+1.
            first = not self._subscribed
            messages = MessageQueue()
            try:
                sub = await self.js.subscribe(
                    self.bucket.prefix + ">", ordered_consumer=True, idle_heartbeat=2.0, cb=messages.put,
                    deliver_policy=jsapi.DeliverPolicy.LAST_PER_SUBJECT if first else jsapi.DeliverPolicy.BY_START_SEQUENCE,
                    config=None if first else jsapi.ConsumerConfig(opt_start_seq=self.rev + 1),
                    pending_msgs_limit=-1, pending_bytes_limit=-1)
            except (nats.errors.Error, TimeoutError) as exc:  # NATS, or its JetStream, not back yet
                log.debug("subscribe failed; retrying", bucket=self.bucket.name, error=repr(exc))
                await asyncio.sleep(RETRY_SECONDS)
                continue
            if first:
                # Read after subscribing: everything above it reaches us message by message (the
                # last-per-subject set was fixed when the consumer was made), so it is where the
                # cache's history, and the check that it has no gaps, can begin.
                self._subscribed = True
                h = await head()
                self._start_head = self.oldest = h.last
                if h.last == 0:
                    self._mark_ready()
                self.observe_head(h)
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._watchdog(head))
                    tg.create_task(self._consume(messages))
            except* _Stalled:
                log.warning("watch cache stalled; re-subscribing", bucket=self.bucket.name, rev=self.rev)
            finally:
                try:
                    await sub.unsubscribe()
                except Exception as exc:  # connection down: the subscription is gone with it
                    log.debug("unsubscribe failed", error=repr(exc))

    async def _consume(self, messages: MessageQueue) -> None:
        """Never ends by itself: the watchdog notices a consumer that stopped (see _watchdog)."""
        async for msg in messages:
            seq = _stream_seq(msg.reply)
            if seq <= self.rev:
                continue  # a re-delivery after a consumer reset
            if self.ready.is_set() and seq > self.rev + 1:
                self._lost(seq)
            self._apply(seq, msg.subject[len(self.bucket.prefix):], msg.data,
                        msg.headers.get(KV_OP) if msg.headers else None)
            self._consumed += 1

    def _lost(self, seq: int) -> None:
        """Messages rev+1..seq-1 left the stream before we read them (superseded more than the bucket's
        history while we lagged): the changes they carried cannot be delivered, so every watch ends with
        Gone (clients relist) and no watch may start from before them."""
        log.warning("watch cache missed changes that left the stream; ending watches with Gone",
                    bucket=self.bucket.name, rev=self.rev, next=seq)
        self.oldest = max(self.oldest, seq - 1)
        for watchers in (*self._watchers.values(), *self._indexed.values()):
            for w in list(watchers):
                w.close("gone")

    async def _watchdog(self, head: Callable[[], "asyncio.Future[StreamHead]"]) -> None:
        """The consumer is stalled if the stream's head stays ahead of us without progress, or at once
        when the connection was re-established (a restarted NATS has lost our consumer). The longer we
        lag, the more versions the stream may drop before we read them: so no waiting for heartbeats.
        It polls rather than being woken per message: under load that wake-up cost more than the check."""
        reconnects = self.nc.stats["reconnects"]
        seen, quiet = self._consumed, 0.0
        while True:
            await asyncio.sleep(RECONNECT_POLL_SECONDS)
            if self.nc.stats["reconnects"] != reconnects:
                raise _Stalled()
            if self._consumed != seen:
                seen, quiet = self._consumed, 0.0
                continue
            quiet += RECONNECT_POLL_SECONDS
            if quiet < STALL_SECONDS:
                continue
            quiet = 0.0
            try:
                h = await head()
            except Exception as exc:  # NATS down: wait for it to come back
                log.debug("head check failed", error=repr(exc))
                continue
            self.observe_head(h)
            if h.last > self.rev and self._consumed == seen:
                raise _Stalled()

    def _apply(self, seq: int, key: str, data: bytes, op: str | None) -> None:
        try:
            resource, namespace, name = decode_key(key)
        except ValueError:
            log.warning("foreign key in the state log ignored", key=key)
            self._advance(seq)
            return
        table = self.objects.get(resource)
        if table is None:
            log.warning("unknown resource in the state log ignored", key=key)
            self._advance(seq)
            return
        old = table.get(key)
        if op in ("DEL", "PURGE"):
            if old is None:
                self._advance(seq)
                return
            del table[key]
            change = Change(seq, "DELETED", resource, None, old)
        else:
            try:
                obj = _DECODERS[resource].decode(data)
            except msgspec.DecodeError as exc:
                log.error("undecodable object in the state log ignored", key=key, error=str(exc))
                self._advance(seq)
                return
            new = Cached(key, resource, namespace, name, seq, data, obj.metadata.labels,
                         obj.spec.node_name if resource == "pods" else None)  # type: ignore[attr-defined]
            table[key] = new
            change = Change(seq, "MODIFIED" if old else "ADDED", resource, new, old)
        if resource == "pods":
            self._index_pod(change)
        self._record(change)
        self._advance(seq)

    def _index_pod(self, change: Change) -> None:
        old_node, new_node = _pod_node(change.old), _pod_node(change.new)
        key = (change.new or change.old).key  # type: ignore[union-attr]
        if old_node and old_node != new_node:
            self.pods_by_node.get(old_node, set()).discard(key)
        if new_node:
            self.pods_by_node.setdefault(new_node, set()).add(key)

    def _record(self, change: Change) -> None:
        self._history.append(change)
        self._history_revs.append(change.rev)
        if len(self._history) > 2 * self.history_limit:
            cut = len(self._history) - self.history_limit
            self.oldest = max(self.oldest, self._history_revs[cut - 1])
            del self._history[:cut]
            del self._history_revs[:cut]
        for w in self._watchers.get(change.resource, ()):
            w.offer(change)
        if change.resource == "pods":
            nodes = {_pod_node(change.old), _pod_node(change.new)} - {None}
            for node in nodes:
                for w in self._indexed.get(("pods", node), ()):  # type: ignore[arg-type]
                    w.offer(change)

    def _advance(self, seq: int) -> None:
        self.rev = seq
        if not self.ready.is_set() and seq >= self._start_head:
            self._mark_ready()
        while self._waiters and self._waiters[0][0] <= seq:
            _, fut = self._waiters.pop(0)
            if not fut.done():
                fut.set_result(None)

    def _mark_ready(self) -> None:
        self.ready.set()
        log.info("watch cache synced", bucket=self.bucket.name, rev=self.rev,
                 objects=sum(len(t) for t in self.objects.values()))

    def observe_head(self, head: StreamHead) -> None:
        """An empty stream will deliver nothing up to its head (its last events aged out, or it was
        purged), so waiting for the consumer would never end: what the cache holds is gone from the
        log, and the cache is current at the head."""
        if not head.empty:
            return
        gone = self.expire_below(head.last + 1)
        if head.last > self.rev:
            self._advance(head.last)
        if gone:
            log.info("stream empty; cached objects dropped", bucket=self.bucket.name, rev=self.rev, dropped=gone)

    def expire_below(self, first_seq: int) -> int:
        """Objects whose last write left the stream by age (the events bucket's max age removes
        messages without a tombstone) are deleted here too, and watchers see them go."""
        gone = 0
        for resource, table in self.objects.items():
            for key, c in [(k, c) for k, c in table.items() if c.rev < first_seq]:
                del table[key]
                change = Change(self.rev, "DELETED", resource, None, c)
                if resource == "pods":
                    self._index_pod(change)
                self._record(change)
                gone += 1
        return gone

    # ---- reading --------------------------------------------------------------------------------
    async def wait_for(self, rev: int, timeout: float = 10.0) -> None:
        """Wait until the cache has applied `rev` (read-your-writes for lists)."""
        if self.rev >= rev:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        bisect.insort(self._waiters, (rev, fut), key=lambda w: w[0])
        try:
            await asyncio.wait_for(fut, timeout)
        finally:
            if fut.cancelled():
                self._waiters = [w for w in self._waiters if w[1] is not fut]

    def since(self, rev: int) -> list[Change]:
        """Changes after `rev`, oldest first. The caller checks `rev >= oldest` first."""
        i = bisect.bisect_right(self._history_revs, rev)
        return self._history[i:]

    def add_watcher(self, w: Watcher) -> None:
        if w.index_value is not None:
            self._indexed.setdefault((w.resource, w.index_value), set()).add(w)
        else:
            self._watchers.setdefault(w.resource, set()).add(w)

    def remove_watcher(self, w: Watcher) -> None:
        if w.index_value is not None:
            self._indexed.get((w.resource, w.index_value), set()).discard(w)
        else:
            self._watchers.get(w.resource, set()).discard(w)

    @property
    def watcher_count(self) -> int:
        return sum(len(s) for s in self._watchers.values()) + sum(len(s) for s in self._indexed.values())


class _Stalled(Exception):
    pass
