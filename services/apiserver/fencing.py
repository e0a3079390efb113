"""The write fence of leader-elected components (schemas/fencing.py): a write that carries a
Flotilla-Fence header is served only while the named Lease is held by that holder in that term.

The Lease is read from the state log itself (a JetStream direct get), not from the watch cache: the
cache may lag the log, and a lagging cache would still show the deposed leader as the holder.

What remains: the check and the write that follows are two operations, not one transaction, so a
write whose check passed can still land that request's own processing time later (normally well
under a millisecond). A successor only takes over after the old term's lease has gone unrenewed for
a whole lease duration, so that window matters only for an API server stalled for longer than that.
"""
from __future__ import annotations

import asyncio

import msgspec

from schemas import RESOURCES, ApiError
from schemas.fencing import FENCED_PREFIX, Fence
from services.lib.log import get_logger

from .store import StateLog

log = get_logger("flotilla.apiserver.fencing")

_LEASES = RESOURCES["leases"]


class _HolderSpec(msgspec.Struct, rename="camel"):
    holder_identity: str | None = None
    lease_transitions: int | None = None


class _LeaseHolder(msgspec.Struct):
    spec: _HolderSpec = msgspec.field(default_factory=_HolderSpec)


# Only the two fields the fence compares are decoded (the rest of the Lease is skipped).
_DECODER = msgspec.json.Decoder(_LeaseHolder)


class _Read:
    """One direct get of a Lease in flight: its number in the order reads were sent, its result."""

    def __init__(self, number: int, loop: asyncio.AbstractEventLoop):
        self.number = number
        self.result: asyncio.Future[_HolderSpec | None] = loop.create_future()
        self.finished = asyncio.Event()


class FenceChecker:
    """Each check compares with the Lease as read by a JetStream direct get (the last message of its
    subject) sent after the write arrived, never earlier: the write is judged by the lease of its own
    time or later. Checks of one Lease arriving while a read is in flight share the next read, so
    under load a busy leader costs about one read per round trip, not one per write. The get goes
    through StateLog.latest (the connection's requester, never a lagging replica)."""

    def __init__(self, log_: StateLog):
        self.state = log_
        self.refused = 0
        self._reads: dict[str, _Read] = {}
        self._sent = 0  # reads sent so far

    async def _holder(self, key: str) -> _HolderSpec | None:
        arrived = self._sent  # a read numbered above this was sent after this write arrived
        while True:
            read = self._reads.get(key)
            if read is None:
                return await self._read(key)
            if read.number > arrived:
                return await asyncio.shield(read.result)
            await read.finished.wait()  # sent before we arrived: too old to judge us; the next one

    async def _read(self, key: str) -> _HolderSpec | None:
        self._sent += 1
        read = self._reads[key] = _Read(self._sent, asyncio.get_running_loop())
        try:
            spec = await self._get(key)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                read.result.cancel()
            else:
                read.result.set_exception(exc)
                read.result.exception()  # marked retrieved: sharers, if any, get it from their await
            raise
        else:
            read.result.set_result(spec)
            return spec
        finally:
            del self._reads[key]
            read.finished.set()

    async def _get(self, key: str) -> _HolderSpec | None:
        data = await self.state.latest(self.state.main, key)
        return None if data is None else _DECODER.decode(data).spec

    async def check(self, header: str, subject: str) -> None:
        """Raise Conflict unless the fence's Lease is held by its holder in its term; BadRequest when
        the header is malformed (a client bug, never a reason to let the write through)."""
        try:
            fence = Fence.parse(header)
        except ValueError as exc:
            raise ApiError("BadRequest", str(exc)) from None
        lease = f"{fence.namespace}/{fence.lease}"
        spec = await self._holder(_LEASES.key(fence.namespace, fence.lease))
        if spec is None:
            self._refuse(fence, subject, None, None)
            raise ApiError("Conflict", f"{FENCED_PREFIX}lease {lease} does not exist")
        term = spec.lease_transitions or 0
        if spec.holder_identity != fence.holder or term != fence.term:
            self._refuse(fence, subject, spec.holder_identity, term)
            raise ApiError("Conflict", f"{FENCED_PREFIX}lease {lease} is now held by {spec.holder_identity} "
                                       f"(term {term}); this write was made by {fence.holder} in term {fence.term}")

    def _refuse(self, fence: Fence, subject: str, holder: str | None, term: int | None) -> None:
        self.refused += 1
        # One line per refused write: a deposed leader stops after its first refusal, so these are few.
        log.info("write fenced", subject=subject, lease=f"{fence.namespace}/{fence.lease}", writer=fence.holder,
                 writer_term=fence.term, holder=holder, term=term, refused=self.refused)
