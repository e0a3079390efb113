"""Zone disruption states and the per-zone eviction rate limiter (Kubernetes' node lifecycle
controller: ComputeZoneState, setLimiterInZone, ReducedQPSFunc/HealthyQPSFunc, the token bucket of
its RateLimitedTimedQueue)."""
from __future__ import annotations

from enum import Enum

ZONE_LABEL = "topology.kubernetes.io/zone"


class ZoneState(str, Enum):
    NORMAL = "Normal"
    PARTIAL = "PartialDisruption"
    FULL = "FullDisruption"


def zone_state(ready: int, not_ready: int, unhealthy_threshold: float) -> ZoneState:
    if ready == 0 and not_ready > 0:
        return ZoneState.FULL
    if not_ready > 2 and not_ready / (ready + not_ready) >= unhealthy_threshold:
        return ZoneState.PARTIAL
    return ZoneState.NORMAL


def zone_rate(state: ZoneState, zone_size: int, rate: float, secondary_rate: float,
              large_cluster_threshold: int) -> float:
    """Nodes per second that may get a NoExecute taint in one zone. A zone that is fully down while
    others answer keeps the normal rate, as in Kubernetes (enterFullDisruptionFunc = HealthyQPSFunc):
    its pods are better off in the zones that still work; only every zone down at once stops
    evictions (`master_disruption`)."""
    if state is ZoneState.PARTIAL:
        return secondary_rate if zone_size > large_cluster_threshold else 0.0
    return rate


def master_disruption(states: dict[str, ZoneState]) -> bool:
    """Every zone fully disrupted: more likely the controller (or the bus) is cut off than every node
    dead at once, so nothing is evicted."""
    return bool(states) and all(s is ZoneState.FULL for s in states.values())


class TokenBucket:
    """client-go's token bucket (burst 1): `try_take(now)` is True at most `rate` times a second;
    rate 0 never gives a token. Time comes from the caller (a monotonic clock) so it is testable."""

    def __init__(self, rate: float, burst: int = 1, now: float = 0.0):
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst) if rate > 0 else 0.0
        self.last = now

    def set_rate(self, rate: float, now: float) -> None:
        if rate == self.rate:
            return
        self._refill(now)
        self.rate = rate
        if rate <= 0:
            self.tokens = 0.0

    def _refill(self, now: float) -> None:
        if self.rate > 0:
            self.tokens = min(float(self.burst), self.tokens + (now - self.last) * self.rate)
        self.last = now

    def try_take(self, now: float) -> bool:
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False
