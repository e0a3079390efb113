"""The scheduling queue: active pods in arrival order; pods that fit nowhere wait out a back-off
(1 s doubling to 10 s) and then sit in the unschedulable set until the cluster changes."""
from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import deque


class SchedulingQueue:
    def __init__(self, initial_backoff: float = 1.0, max_backoff: float = 10.0, flush_unschedulable: float = 30.0):
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.flush_unschedulable = flush_unschedulable
        self._active: deque[str] = deque()
        self._in_active: set[str] = set()
        self._backoff: list[tuple[float, int, str]] = []
        self._in_backoff: dict[str, float] = {}
        self._unschedulable: dict[str, float] = {}  # key -> time it may be retried (back-off end)
        self._attempts: dict[str, int] = {}
        self._counter = itertools.count()
        self._wake = asyncio.Event()
        self._moved_at = 0.0

    def add(self, key: str) -> None:
        """A new or changed pod: schedule it now unless it is backing off."""
        if key in self._in_active or key in self._in_backoff:
            return
        self._unschedulable.pop(key, None)
        self._active.append(key)
        self._in_active.add(key)
        self._wake.set()

    def remove(self, key: str) -> None:
        self._in_active.discard(key)  # a stale entry in the deque is skipped by pop()
        self._in_backoff.pop(key, None)
        self._unschedulable.pop(key, None)
        self._attempts.pop(key, None)

    def done(self, key: str) -> None:
        """Scheduled: forget its attempts."""
        self._attempts.pop(key, None)

    def unschedulable(self, key: str, retry: bool = False) -> float:
        """The pod fit nowhere (or its bind failed, `retry`): back off, then wait for a cluster change."""
        n = self._attempts.get(key, 0)
        self._attempts[key] = n + 1
        delay = min(self.initial_backoff * 2**n, self.max_backoff)
        until = asyncio.get_running_loop().time() + delay
        if retry:
            self._push_backoff(key, until)
        else:
            self._unschedulable[key] = until
        return delay

    def cluster_changed(self) -> None:
        """A node appeared or changed, or a pod went away: every unschedulable pod gets another try."""
        now = asyncio.get_running_loop().time()
        for key, until in self._unschedulable.items():
            self._push_backoff(key, max(until, now))
        self._unschedulable.clear()
        self._wake.set()

    def _push_backoff(self, key: str, until: float) -> None:
        if key in self._in_active:
            return
        self._in_backoff[key] = until
        heapq.heappush(self._backoff, (until, next(self._counter), key))
        self._wake.set()

    def _promote(self, now: float) -> float | None:
        while self._backoff and self._backoff[0][0] <= now:
            until, _, key = heapq.heappop(self._backoff)
            if self._in_backoff.get(key) == until:
                del self._in_backoff[key]
                self._active.append(key)
                self._in_active.add(key)
        if now - self._moved_at > self.flush_unschedulable and self._unschedulable:
            self._moved_at = now
            self.cluster_changed()
        return self._backoff[0][0] - now if self._backoff else None

    async def pop(self) -> str:
        loop = asyncio.get_running_loop()
        while True:
            wait = self._promote(loop.time())
            while self._active:
                key = self._active.popleft()
                if key in self._in_active:
                    self._in_active.discard(key)
                    return key
            self._wake.clear()
            timeout = min(wait, self.flush_unschedulable) if wait is not None else self.flush_unschedulable
            try:  # not asyncio.wait_for, which can swallow a cancel in Python 3.11 (services/lib/workqueue.py)
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                pass

    def __len__(self) -> int:
        return len(self._in_active) + len(self._in_backoff) + len(self._unschedulable)

    @property
    def pending_unschedulable(self) -> int:
        return len(self._unschedulable)
