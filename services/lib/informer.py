"""Informer: a local cache of one resource kept current by list + watch, like client-go's.

It lists, then watches from the list's version; when the watch ends (API server died, NATS
restarted, sequence gap) it re-watches from the last version it saw, and relists only on Gone.
Handlers are plain functions called in order for each change; they must not block (put keys on a
work queue and return).
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

import nats.errors

from schemas import ApiError, TopObject

from .client import ResourceClient, WatchExpired
from .log import get_logger
from .lograte import LogRate

T = TypeVar("T", bound=TopObject)
log = get_logger("flotilla.informer")


def by_namespace(obj: TopObject) -> list[str]:
    """Index function: the object's namespace."""
    return [obj.metadata.namespace or ""]


def object_key(obj: TopObject) -> str:
    """`namespace/name`, or `name` for cluster-scoped objects (client-go's MetaNamespaceKey)."""
    ns = obj.metadata.namespace
    return f"{ns}/{obj.metadata.name}" if ns else obj.metadata.name


class Handlers(Generic[T]):
    def __init__(self, on_add: Callable[[T], None] | None, on_update: Callable[[T, T], None] | None,
                 on_delete: Callable[[T], None] | None):
        self.on_add, self.on_update, self.on_delete = on_add, on_update, on_delete


class Informer(Generic[T]):
    def __init__(self, client: ResourceClient[T], namespace: str | None = None, label_selector: str | None = None,
                 field_selector: str | None = None, resync_backoff: float = 0.5):
        self.client = client
        self.namespace = namespace
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.store: dict[str, T] = {}
        self.synced = asyncio.Event()
        self.resource_version: str | None = None
        self._handlers: list[Handlers[T]] = []
        self._index_fns: dict[str, Callable[[T], list[str]]] = {}
        self._indexes: dict[str, dict[str, set[str]]] = {}
        self._backoff = resync_backoff
        self.relists = 0
        self.rewatches = 0
        self.log = log.bind(resource=client.resource.name)
        # While the bus or the API servers are gone, every retry fails the same way: say so at a
        # falling rate, and once when list/watch works again.
        self._rate = LogRate(self.log)

    def add_handlers(self, on_add: Callable[[T], None] | None = None,
                     on_update: Callable[[T, T], None] | None = None,
                     on_delete: Callable[[T], None] | None = None) -> None:
        self._handlers.append(Handlers(on_add, on_update, on_delete))

    def add_index(self, name: str, fn: Callable[[T], list[str]]) -> None:
        """Maintain `by_index(name, value)`: the objects for which `fn(obj)` contains `value`."""
        self._index_fns[name] = fn
        index: dict[str, set[str]] = {}
        for key, obj in self.store.items():
            for v in fn(obj):
                index.setdefault(v, set()).add(key)
        self._indexes[name] = index

    def by_index(self, name: str, value: str) -> list[T]:
        return [self.store[k] for k in self._indexes[name].get(value, ()) if k in self.store]

    def _index_put(self, key: str, old: T | None, new: T | None) -> None:
        for name, fn in self._index_fns.items():
            index = self._indexes[name]
            for v in fn(old) if old is not None else ():
                keys = index.get(v)
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del index[v]
            for v in fn(new) if new is not None else ():
                index.setdefault(v, set()).add(key)

    def get(self, key: str) -> T | None:
        return self.store.get(key)

    def list(self) -> list[T]:
        return list(self.store.values())

    async def wait_synced(self) -> None:
        await self.synced.wait()

    # ---- the loop ---------------------------------------------------------------------------------
    async def run(self) -> None:
        need_list = True
        failures = 0
        while True:
            try:
                if need_list:
                    await self._relist()
                    need_list = False
                await self._watch()
            except WatchExpired as exc:
                if exc.gone:
                    need_list = True
                    self.log.info("watch version gone; relisting", reason=str(exc))
                else:
                    self.rewatches += 1
                    self._rate.info("watch ended", "watch ended; resuming", rv=self.resource_version, reason=str(exc))
                failures = 0
                continue
            except nats.errors.ConnectionClosedError:
                # Closed on purpose (shutdown): with unlimited reconnects it never closes otherwise.
                self.log.info("connection closed; informer stops")
                return
            except ApiError as exc:
                failures += 1
                self._rate.warning(f"failed:{exc.reason}", "list/watch failed; retrying", error=exc.message,
                                   reason=exc.reason)
                if exc.reason == "Gone":
                    need_list = True
            delay = min(self._backoff * 2 ** min(failures, 6), 10.0)
            await asyncio.sleep(delay)

    async def _relist(self) -> None:
        result = await self.client.list_all(self.namespace, self.label_selector, self.field_selector)
        self.relists += 1
        fresh = {object_key(o): o for o in result.items}
        old = self.store
        self.store = fresh
        self.resource_version = result.resource_version
        for name, fn in self._index_fns.items():
            index: dict[str, set[str]] = {}
            for key, obj in fresh.items():
                for v in fn(obj):
                    index.setdefault(v, set()).add(key)
            self._indexes[name] = index
        for key, obj in fresh.items():
            prev = old.get(key)
            if prev is None:
                self._fire_add(obj)
            elif prev.metadata.resource_version != obj.metadata.resource_version:
                self._fire_update(prev, obj)
        for key, obj in old.items():
            if key not in fresh:
                self._fire_delete(obj)
        self.synced.set()
        self._recovered()

    def _recovered(self) -> None:
        bursts = self._rate.clear_all()
        if any(b.count > 1 for b in bursts.values()):
            self.log.info("list/watch works again", retries=sum(b.count for b in bursts.values()),
                          suppressed=sum(b.total_suppressed for b in bursts.values()),
                          down_for=f"{max(b.duration for b in bursts.values()):.1f}s")

    async def _watch(self) -> None:
        async for type_, obj in self.client.watch(self.namespace, self.label_selector, self.field_selector,
                                                  self.resource_version, bookmarks=True):
            rv = obj.metadata.resource_version
            if self._rate.active_keys:
                self._recovered()
            if type_ == "BOOKMARK":
                self.resource_version = rv
                continue
            key = object_key(obj)
            prev = self.store.get(key)
            if type_ == "DELETED":
                self.store.pop(key, None)
                self._index_put(key, prev, None)
                if prev is not None:
                    self._fire_delete(obj)
            else:
                self.store[key] = obj
                self._index_put(key, prev, obj)
                if prev is None:
                    self._fire_add(obj)
                else:
                    self._fire_update(prev, obj)
            self.resource_version = rv

    def _fire_add(self, obj: T) -> None:
        for h in self._handlers:
            if h.on_add:
                h.on_add(obj)

    def _fire_update(self, old: T, new: T) -> None:
        for h in self._handlers:
            if h.on_update:
                h.on_update(old, new)

    def _fire_delete(self, obj: T) -> None:
        for h in self._handlers:
            if h.on_delete:
                h.on_delete(obj)


