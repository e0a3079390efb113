"""Leader election on a Lease object through the API, with fenced writes.

A candidate takes the lease when its holder has not renewed it for `lease_duration` as observed on
our own clock (no cross-host clock comparison, like client-go). The leader renews every
`retry_period`; if it cannot renew within `renew_deadline` (< lease_duration) it steps down and its
work is cancelled, so a standby can only take over after the old leader has stopped.

Fencing, twice: `check()` refuses locally once the renew deadline has passed (a process frozen past
it may run work before the renew loop notices), and every write of the leader's work carries its
term (`fence_header()`, given to an `Api(nc, fence=elector)`) which the API server compares with the
Lease in the state log, refusing writes of a term that is over: a write that passed `check()` just
before the process froze, or sat in a socket buffer while the bus was cut, cannot land on the
successor's work. A term is (holder, leaseTransitions), and every acquire starts a new one (also a
re-acquire by the same identity after a step-down), so a term is one uninterrupted leadership.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from schemas import SYSTEM_NAMESPACE, ApiError, Lease, LeaseSpec, ObjectMeta, now_micro
from schemas.fencing import Fence

from .client import Api, Fenced, NotLeader
from .log import get_logger
from .lograte import LogRate

log = get_logger("flotilla.leader")

__all__ = ["Fenced", "LeaderElector", "NotLeader"]


class LeaderElector:
    def __init__(self, api: Api, name: str, identity: str, namespace: str = SYSTEM_NAMESPACE,
                 lease_duration: float = 5.0, renew_deadline: float = 3.5, retry_period: float = 1.0):
        assert renew_deadline < lease_duration
        self.api = api
        self.name = name
        self.identity = identity
        self.namespace = namespace
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.lease: Lease | None = None
        self._observed_rv: str | None = None
        self._observed_at = 0.0
        # Loop time at which the request behind our last successful acquire/renew was sent: the lease
        # is ours for `renew_deadline` from then, whatever happened to the process since (a freeze).
        self._renewed_at = 0.0
        self.leading = asyncio.Event()
        self._term = 0  # leaseTransitions as of our last acquire
        self._header: str | None = None  # the fence of the current term, while leading
        # Set when the API server refused a write of the current term: the renew loop ends at once.
        self._lost = asyncio.Event()
        self.log = log.bind(lease=f"{namespace}/{name}", identity=identity)
        # A standby, or a leader whose bus is gone, fails every acquire attempt the same way.
        self._rate = LogRate(self.log)

    @property
    def is_leader(self) -> bool:
        return self.leading.is_set()

    @property
    def fencing_token(self) -> str | None:
        """The lease version this leader last wrote; changes whenever leadership could have moved."""
        return self.lease.metadata.resource_version if self.lease and self.is_leader else None

    @property
    def term(self) -> int:
        return self._term

    def fence_header(self) -> str:
        """The Flotilla-Fence header value of the current term (schemas/fencing.py); NotLeader when
        this process does not lead or is past its renew deadline (the write is then not sent)."""
        self.check()
        assert self._header is not None
        return self._header

    def fenced(self, header: str, err: ApiError) -> None:
        """The API server refused a write of ours: someone else leads now. Stop at once (the renew
        loop would notice within `retry_period`; until then every write would be refused too)."""
        if header != self._header or not self.is_leader:
            return  # a late refusal of an older term, or already stepping down: said once already
        self.log.warning("write fenced by the API server; stepping down", term=self._term, error=err.message)
        self.leading.clear()
        self._lost.set()

    def check(self) -> None:
        """Call before a write that only the leader may make."""
        if not self.is_leader:
            raise NotLeader(f"{self.identity} is not the leader of {self.name}")
        # The flag alone lags: a process frozen (SIGSTOP, a VM pause) past its lease wakes with it
        # still set, and its work may run before the renew loop notices. Our own clock fences that.
        if asyncio.get_running_loop().time() - self._renewed_at > self.renew_deadline:
            # Step down for good, even if a renew in flight succeeds after all: the write refused here
            # is dropped by callers that take it for a conflict, and only a new term's resync (every
            # key queued again) is sure to bring it back.
            self.log.warning("renew deadline passed before a write; stepping down", deadline=f"{self.renew_deadline}s")
            self.leading.clear()
            self._lost.set()
            raise NotLeader(f"{self.identity} has not renewed the lease {self.name} within {self.renew_deadline}s")

    async def run(self, lead: Callable[[], Awaitable[None]]) -> None:
        """Forever: wait to acquire, run `lead()` while leading, cancel it when leadership is lost."""
        while True:
            await self._acquire()
            self.log.info("became leader", term=self._term)
            try:
                async with asyncio.TaskGroup() as tg:
                    work = tg.create_task(lead())
                    await self._renew_until_lost()
                    self.leading.clear()  # before the work is cancelled: check() fences what is in flight
                    work.cancel()
            except* ApiError as eg:
                self.log.warning("leader work failed", error=repr(eg.exceptions[0]))
            finally:
                self.leading.clear()
            self.log.warning("lost leadership")
            await asyncio.sleep(self.retry_period)

    async def _acquire(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sent = loop.time()
                if await self._try_acquire_or_renew(sent):
                    self._renewed_at = sent
                    assert self.lease is not None
                    self._term = self.lease.spec.lease_transitions or 0
                    self._header = Fence(self.namespace, self.name, self.identity, self._term).header()
                    self._lost.clear()
                    self._rate.clear("acquire")
                    self.leading.set()
                    return
            except ApiError as exc:
                self._rate.debug("acquire", "acquire attempt failed", reason=exc.reason, error=exc.message)
            await asyncio.sleep(self.retry_period)

    async def _renew_until_lost(self) -> None:
        """Returns when leadership is lost: someone else holds the lease, or `renew_deadline` passed
        since the last successful renew. The deadline bounds each attempt too: a renew stuck in a
        request (an API server that accepts and never answers; the client retries for far longer
        than a lease) must not keep us leading after the standby may have taken over."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                async with asyncio.timeout(self.retry_period):
                    await self._lost.wait()
            except TimeoutError:
                pass
            else:
                return  # a write of ours was fenced: someone else holds the lease
            sent = loop.time()
            left = self.renew_deadline - (sent - self._renewed_at)
            if left <= 0:
                self.log.warning("renew deadline passed", since_renew=f"{sent - self._renewed_at:.1f}s")
                return
            try:
                async with asyncio.timeout(left):
                    renewed = await self._try_acquire_or_renew(sent)
            except TimeoutError:
                self.log.warning("renew deadline passed during a renew", deadline=f"{self.renew_deadline}s")
                return
            except ApiError as exc:
                if exc.reason == "Conflict":
                    return
                self.log.warning("renew failed", reason=exc.reason, error=exc.message)
                continue
            if not renewed:
                return  # someone else holds it
            self._renewed_at = sent

    async def _try_acquire_or_renew(self, now: float) -> bool:
        leases = self.api.leases
        try:
            current = await leases.get(self.name, self.namespace)
        except ApiError as exc:
            if exc.reason != "NotFound":
                raise
            stamp = now_micro()
            lease = Lease(metadata=ObjectMeta(name=self.name, namespace=self.namespace),
                          spec=LeaseSpec(holder_identity=self.identity,
                                         lease_duration_seconds=max(1, round(self.lease_duration)),
                                         acquire_time=stamp, renew_time=stamp, lease_transitions=0))
            try:
                self.lease = await leases.create(lease)
            except ApiError as exc2:
                if exc2.reason == "AlreadyExists":
                    return False
                raise
            return True
        rv = current.metadata.resource_version
        if rv != self._observed_rv:
            self._observed_rv, self._observed_at = rv, now
        holder = current.spec.holder_identity
        ours = holder == self.identity
        expired = not holder or now - self._observed_at > self.lease_duration
        if not ours and not expired:
            return False
        if ours and not self.is_leader and self.lease is None:
            # Our own lease from a previous life: take it over only once it has expired too, so two
            # processes with one identity never lead at once.
            if not expired:
                return False
        spec = current.spec
        stamp = now_micro()
        if not ours or not self.is_leader:  # an acquire (not a renew) begins a new term
            spec.acquire_time = stamp
            spec.lease_transitions = (spec.lease_transitions or 0) + 1
        spec.holder_identity = self.identity
        spec.renew_time = stamp
        spec.lease_duration_seconds = max(1, round(self.lease_duration))
        self.lease = await leases.update(current)  # CAS on the version we read: the fence
        self._observed_rv, self._observed_at = self.lease.metadata.resource_version, now
        return True
