"""Controller expectations (Kubernetes' ControllerExpectations): how many creates and which deletes a
controller has issued for a key and not yet seen come back through its watch. While any are
outstanding the controller does not act on its (stale) view, so a slow watch never makes it create
twice. Expectations expire, so a lost watch event cannot wedge a key forever."""
from __future__ import annotations

import time

import msgspec

EXPECTATIONS_TTL = 60.0


class _Expected(msgspec.Struct):
    adds: int = 0
    deletes: set[str] = msgspec.field(default_factory=set)
    at: float = 0.0


class Expectations:
    def __init__(self, ttl: float = EXPECTATIONS_TTL):
        self.ttl = ttl
        self._by_key: dict[str, _Expected] = {}

    def satisfied(self, key: str) -> bool:
        e = self._by_key.get(key)
        if e is None:
            return True
        if e.adds <= 0 and not e.deletes:
            return True
        return time.monotonic() - e.at > self.ttl

    def expect_creations(self, key: str, n: int) -> None:
        self._by_key[key] = _Expected(adds=n, at=time.monotonic())

    def expect_deletions(self, key: str, uids: list[str]) -> None:
        self._by_key[key] = _Expected(deletes=set(uids), at=time.monotonic())

    def creation_observed(self, key: str) -> None:
        e = self._by_key.get(key)
        if e is not None:
            e.adds -= 1

    def deletion_observed(self, key: str, uid: str) -> None:
        e = self._by_key.get(key)
        if e is not None:
            e.deletes.discard(uid)

    def forget(self, key: str) -> None:
        self._by_key.pop(key, None)

    def pending(self, key: str) -> tuple[int, int]:
        e = self._by_key.get(key)
        return (max(e.adds, 0), len(e.deletes)) if e else (0, 0)
