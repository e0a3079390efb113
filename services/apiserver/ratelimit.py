"""Per-principal request rate limits: a token bucket for each principal (as kube-apiserver's
API Priority and Fairness keeps one noisy client from starving the rest, in its simplest form).

Checked in the subscription loop before a request takes a slot, so a refused request costs a
subject split, a dict lookup and a small reply."""
from __future__ import annotations

import math
import time
from collections.abc import Callable

MAX_BUCKETS = 100_000  # principals are names on subjects: in an open NATS anyone can make up more


class TokenBucket:
    __slots__ = ("qps", "burst", "tokens", "last")

    def __init__(self, qps: float, burst: int, now: float):
        self.qps = qps
        self.burst = float(max(burst, 1))
        self.tokens = self.burst
        self.last = now

    def take(self, now: float) -> float:
        """0 when a token was taken, else the seconds until one will be there."""
        tokens = min(self.burst, self.tokens + (now - self.last) * self.qps)
        self.last = now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return 0.0
        self.tokens = tokens
        return (1.0 - tokens) / self.qps

    def full(self, now: float) -> bool:
        return self.tokens + (now - self.last) * self.qps >= self.burst


class RateLimiter:
    """`limit_of(principal)` gives a (qps, burst) override or None for the defaults; qps <= 0 means
    that principal is not limited."""

    def __init__(self, qps: float, burst: int,
                 limit_of: Callable[[str], tuple[float, int] | None] = lambda p: None,
                 clock: Callable[[], float] = time.monotonic):
        self.qps = qps
        self.burst = burst
        self.limit_of = limit_of
        self.clock = clock
        self.buckets: dict[str, TokenBucket | None] = {}
        self.rejected = 0

    def admit(self, principal: str) -> int:
        """0 when the request may go on, else the whole seconds (>= 1) to wait (retryAfterSeconds)."""
        try:
            bucket = self.buckets[principal]
        except KeyError:
            bucket = self._new(principal)
        if bucket is None:
            return 0
        wait = bucket.take(self.clock())
        if wait == 0.0:
            return 0
        self.rejected += 1
        return max(1, math.ceil(wait))

    def _new(self, principal: str) -> TokenBucket | None:
        override = self.limit_of(principal)
        qps, burst = override if override is not None else (self.qps, self.burst)
        now = self.clock()
        if len(self.buckets) >= MAX_BUCKETS:  # forget the idle ones (a full bucket is a new one)
            for p in [p for p, b in self.buckets.items() if b is None or b.full(now)]:
                del self.buckets[p]
        bucket = TokenBucket(qps, burst, now) if qps > 0 else None
        self.buckets[principal] = bucket
        return bucket
