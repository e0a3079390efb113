"""Restart back-off, as the kubelet does it (flowcontrol.Backoff keyed by pod and container).

The first restart after an exit is immediate; each next one waits `base` doubling up to `cap`,
counted from the latest exit. A container that ran longer than twice the cap (10 minutes with
Kubernetes' 10 s / 300 s) since its last restart starts over at no back-off. A failed start
(RunContainerError, ...) counts as an exit, so it is retried with the same back-off.
"""
from __future__ import annotations

from dataclasses import dataclass

from .podstate import ContainerRecord


@dataclass(frozen=True)
class Backoff:
    base: float = 10.0
    cap: float = 300.0

    @property
    def reset_after(self) -> float:
        return 2 * self.cap

    def _expired(self, rec: ContainerRecord) -> bool:
        return rec.backoff <= 0 or rec.exited_at - rec.backoff_at > self.reset_after

    def remaining(self, rec: ContainerRecord, now: float) -> float:
        """Seconds before the container may be started again (0: now)."""
        if self._expired(rec):
            return 0.0
        return max(0.0, rec.exited_at + rec.backoff - now)

    def step(self, rec: ContainerRecord, now: float) -> None:
        """Advance the back-off for a restart happening now."""
        rec.backoff = self.base if self._expired(rec) else min(rec.backoff * 2, self.cap)
        rec.backoff_at = now
