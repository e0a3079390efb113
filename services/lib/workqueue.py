"""A work queue of keys, de-duplicated, with per-key exponential back-off (client-go's rate-limited queue).

A key is never processed by two workers at once: if it is re-added while being processed, it is
queued again once `done` is called.
"""
from __future__ import annotations

import asyncio
import heapq
import itertools


class WorkQueue:
    def __init__(self, base_delay: float = 0.005, max_delay: float = 60.0):
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self._processing: set[str] = set()
        self._dirty: set[str] = set()
        self._failures: dict[str, int] = {}
        self._delayed: list[tuple[float, int, str]] = []
        self._counter = itertools.count()
        self._delayed_changed = asyncio.Event()
        self._batching: set[str] = set()  # keys with an add_batched pending
        self.base_delay = base_delay
        self.max_delay = max_delay

    def add(self, key: str) -> None:
        if key in self._processing:
            self._dirty.add(key)
            return
        if key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    def add_after(self, key: str, delay: float) -> None:
        if delay <= 0:
            self.add(key)
            return
        heapq.heappush(self._delayed, (asyncio.get_running_loop().time() + delay, next(self._counter), key))
        self._delayed_changed.set()

    def add_batched(self, key: str, period: float) -> None:
        """Add within `period`: every call until then is folded into that one add (the batch period
        of Kubernetes' Job and EndpointSlice controllers). A key already waiting in the queue needs
        nothing more."""
        if key in self._queued or key in self._batching:
            return
        self._batching.add(key)
        self.add_after(key, period)

    def add_rate_limited(self, key: str) -> None:
        n = self._failures.get(key, 0)
        self._failures[key] = n + 1
        self.add_after(key, min(self.base_delay * 2**n, self.max_delay))

    def forget(self, key: str) -> None:
        self._failures.pop(key, None)

    def failures(self, key: str) -> int:
        return self._failures.get(key, 0)

    async def get(self) -> str:
        key = await self._queue.get()
        self._queued.discard(key)
        self._processing.add(key)
        return key

    def done(self, key: str) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._dirty.discard(key)
            self.add(key)

    def __len__(self) -> int:
        return self._queue.qsize()

    async def run_delayed(self) -> None:
        """Moves delayed keys onto the queue when their time comes; run it in the owner's task group."""
        loop = asyncio.get_running_loop()
        while True:
            self._delayed_changed.clear()
            timeout = None
            while self._delayed and self._delayed[0][0] <= loop.time():
                _, _, key = heapq.heappop(self._delayed)
                self._batching.discard(key)
                self.add(key)
            if self._delayed:
                timeout = self._delayed[0][0] - loop.time()
            # Not asyncio.wait_for: in Python 3.11 a cancel that meets a wake-up is swallowed there
            # (it returns instead of raising), and this task then outlived its leader's term.
            try:
                async with asyncio.timeout(timeout):
                    await self._delayed_changed.wait()
            except TimeoutError:
                pass
