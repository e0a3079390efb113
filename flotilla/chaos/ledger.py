"""The client-side ledger of acknowledged writes: the harness writes Leases in its own namespace and
remembers, for every write the API acknowledged, the version and value it got back. An acknowledged
write must never be lost or rolled back: every object is still there with a version and a value at
least the acknowledged ones, unless the harness itself deleted it (then it must stay gone).

A write whose reply never came (a timeout while NATS restarts) may or may not have happened: it is
not in the ledger, and the object is read back before it is written again.
"""
from __future__ import annotations

import random

import msgspec

from schemas import ApiError, Lease, LeaseSpec, ObjectMeta
from services.lib.client import Api

from .invariants import ACKED_WRITES_KEPT, Violation

LEDGER_NAMESPACE = "chaos-ledger"
UNSURE = ("Timeout", "ServiceUnavailable", "InternalError")


class Entry(msgspec.Struct):
    name: str
    uid: str | None
    rv: int
    value: int
    deleted: bool = False
    unsure: bool = False  # a write since the last ack may or may not have happened: read back first
    maybe_deleted: bool = False  # a delete was sent and not answered


def _value(lease: Lease) -> int:
    return lease.spec.lease_transitions or 0


class Ledger:
    def __init__(self, api: Api, rng: random.Random, *, objects: int = 8, namespace: str = LEDGER_NAMESPACE):
        self.api = api
        self.rng = rng
        self.objects = objects
        self.namespace = namespace
        self.entries: dict[str, Entry] = {}
        self.acked = 0
        self.unanswered = 0
        self.violations: list[Violation] = []
        self._next = 0

    async def step(self) -> None:
        """One write: create a new object, update one (value + 1), or now and then delete one."""
        live = [e for e in self.entries.values() if not e.deleted]
        roll = self.rng.random()
        try:
            if len(live) < self.objects and (roll < 0.3 or not live):
                await self._create()
            elif roll < 0.05:
                await self._delete(self.rng.choice(live))
            else:
                await self._update(self.rng.choice(live))
        except ApiError as exc:
            if exc.reason not in UNSURE and exc.reason != "Conflict":
                raise

    async def _create(self) -> None:
        self._next += 1
        name = f"ledger-{self._next}"
        obj = Lease(metadata=ObjectMeta(name=name, namespace=self.namespace),
                    spec=LeaseSpec(holder_identity="chaos-ledger", lease_transitions=1))
        try:
            got = await self.api.leases.create(obj)
        except ApiError as exc:
            if exc.reason in UNSURE:
                self.unanswered += 1
                # It may exist: adopt it on a later read, without a claim on its value.
                self.entries[name] = Entry(name, None, 0, 0, unsure=True)
            raise
        self._ack(got)

    async def _update(self, entry: Entry) -> None:
        try:
            current = await self.api.leases.get(entry.name, self.namespace)
        except ApiError as exc:
            if exc.reason != "NotFound":
                raise
            self._compare(entry, None)
            entry.deleted, entry.uid = True, None  # reported once; from now on it must stay gone
            return
        self._compare(entry, current)
        entry.unsure = entry.maybe_deleted = False
        current.spec.lease_transitions = _value(current) + 1
        try:
            got = await self.api.leases.update(current)  # CAS on the version just read
        except ApiError as exc:
            if exc.reason in UNSURE:
                self.unanswered += 1
                entry.unsure = True
            raise
        self._ack(got)

    async def _delete(self, entry: Entry) -> None:
        try:
            await self.api.leases.delete(entry.name, self.namespace)
        except ApiError as exc:
            if exc.reason in UNSURE:
                self.unanswered += 1
                entry.unsure = entry.maybe_deleted = True
            raise
        entry.deleted = True
        self.acked += 1

    def _ack(self, got: Lease) -> None:
        self.acked += 1
        self.entries[got.metadata.name] = Entry(got.metadata.name, got.metadata.uid,
                                                int(got.metadata.resource_version or 0), _value(got))

    def _compare(self, entry: Entry, current: Lease | None) -> list[Violation]:
        found: list[Violation] = []
        if entry.deleted:
            if current is not None and not entry.unsure and current.metadata.uid == entry.uid:
                found.append(Violation(ACKED_WRITES_KEPT, f"lease {self.namespace}/{entry.name} was deleted "
                                       f"(acknowledged) and is back"))
        elif current is None:
            # An unsure create that never happened, or an unsure delete that did, is not a loss.
            if entry.uid is not None and not entry.maybe_deleted:
                found.append(Violation(ACKED_WRITES_KEPT, f"lease {self.namespace}/{entry.name} (acknowledged at "
                                       f"version {entry.rv}, value {entry.value}) is gone"))
        else:
            rv, value = int(current.metadata.resource_version or 0), _value(current)
            if entry.uid is not None and current.metadata.uid != entry.uid:
                found.append(Violation(ACKED_WRITES_KEPT, f"lease {self.namespace}/{entry.name} was replaced "
                                       f"(uid {entry.uid} -> {current.metadata.uid})"))
            elif rv < entry.rv or value < entry.value:
                found.append(Violation(ACKED_WRITES_KEPT, f"lease {self.namespace}/{entry.name} rolled back: "
                                       f"acknowledged version {entry.rv} value {entry.value}, now version {rv} "
                                       f"value {value}"))
            elif entry.uid is None:
                entry.uid = current.metadata.uid  # an unsure create that did happen: adopt it
        self.violations += found
        return found

    async def verify(self) -> list[Violation]:
        """Read every object of the ledger back; the violations found (also kept in .violations)."""
        found: list[Violation] = []
        for entry in list(self.entries.values()):
            try:
                current: Lease | None = await self.api.leases.get(entry.name, self.namespace)
            except ApiError as exc:
                if exc.reason != "NotFound":
                    raise
                current = None
            found += self._compare(entry, current)
        return found
