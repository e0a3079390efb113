"""Node health from its Lease, judged on this process's own clock (as client-go's node lifecycle
controller does): a lease counts as renewed when this controller sees its renewTime or
resourceVersion change, never by comparing the renewTime with our clock, as hosts' clocks differ."""
from __future__ import annotations

import msgspec


class Probe(msgspec.Struct):
    seen: tuple[str | None, str | None]  # (resourceVersion, renewTime) of the lease last seen; (None, None): none yet
    at: float  # monotonic time it was first seen so


class LeaseTracker:
    def __init__(self) -> None:
        self._probes: dict[str, Probe] = {}

    def observe(self, node: str, lease_rv: str | None, renew_time: str | None, now: float) -> float:
        """Record what is seen of `node`'s lease now; returns when it was last renewed (a node never
        seen with a lease counts from when it was first seen at all)."""
        seen = (lease_rv, renew_time)
        probe = self._probes.get(node)
        if probe is None:
            probe = self._probes[node] = Probe(seen, now)
        elif probe.seen != seen and lease_rv is not None:
            probe.seen, probe.at = seen, now
        return probe.at

    def forget(self, node: str) -> None:
        self._probes.pop(node, None)

    def retain(self, nodes: set[str]) -> None:
        """Forget nodes that are gone: one made again under the same name starts a fresh grace period."""
        for name in set(self._probes) - nodes:
            del self._probes[name]
