"""Leader election on a Lease object through the API, with fencing by the lease's resourceVersion.

A candidate takes the lease when its holder has not renewed it for `lease_duration` as observed on
our own clock (no cross-host clock comparison, like client-go). The leader renews every
`retry_period`; if it cannot renew within `renew_deadline` (< lease_duration) it steps down and its
work is cancelled, so a standby can only take over after the old leader has stopped.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from schemas import SYSTEM_NAMESPACE, ApiError, Lease, LeaseSpec, ObjectMeta, now_micro

from .client import Api
from .log import get_logger

log = get_logger("flotilla.leader")


class NotLeader(Exception):
    pass


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
        self.log = log.bind(lease=f"{namespace}/{name}", identity=identity)

    @property
    def is_leader(self) -> bool:
        return self.leading.is_set()

    @property
    def fencing_token(self) -> str | None:
        """The lease version this leader last wrote; changes whenever leadership could have moved."""
        return self.lease.metadata.resource_version if self.lease and self.is_leader else None

    def check(self) -> None:
        """Call before a write that only the leader may make."""
        if not self.is_leader:
            raise NotLeader(f"{self.identity} is not the leader of {self.name}")
        # The flag alone lags: a process frozen (SIGSTOP, a VM pause) past its lease wakes with it
        # still set, and its work may run before the renew loop notices. Our own clock fences that.
        if asyncio.get_running_loop().time() - self._renewed_at > self.renew_deadline:
            raise NotLeader(f"{self.identity} has not renewed the lease {self.name} within {self.renew_deadline}s")

    async def run(self, lead: Callable[[], Awaitable[None]]) -> None:
        """Forever: wait to acquire, run `lead()` while leading, cancel it when leadership is lost."""
        while True:
            await self._acquire()
            self.log.info("became leader")
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
                    self.leading.set()
                    return
            except ApiError as exc:
                self.log.debug("acquire attempt failed", reason=exc.reason, error=exc.message)
            await asyncio.sleep(self.retry_period)

    async def _renew_until_lost(self) -> None:
        """Returns when leadership is lost: someone else holds the lease, or `renew_deadline` passed
        since the last successful renew. The deadline bounds each attempt too: a renew stuck in a
        request (an API server that accepts and never answers; the client retries for far longer
        than a lease) must not keep us leading after the standby may have taken over."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.retry_period)
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
        if not ours:
            spec.acquire_time = stamp
            spec.lease_transitions = (spec.lease_transitions or 0) + 1
        spec.holder_identity = self.identity
        spec.renew_time = stamp
        spec.lease_duration_seconds = max(1, round(self.lease_duration))
        self.lease = await leases.update(current)  # CAS on the version we read: the fence
        self._observed_rv, self._observed_at = self.lease.metadata.resource_version, now
        return True
