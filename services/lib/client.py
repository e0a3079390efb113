"""The typed API client: `api.pods.create(pod)`, `api.nodes.get("n1")`, `api.pods.watch(...)`.

Every call is a NATS request on `flo.api.v1.<resource>.<verb>` (the admin), the user-scoped
`flo.api.v1.user.<principal>.<resource>.<verb>` (every component) or the node-scoped
`flo.api.v1.node.<node>.<resource>.<verb>` (node agents) with a JSON body; errors come back
as a `Status` and are raised as `ApiError`. A 429 TooManyRequests is waited out (its
retryAfterSeconds) and the request sent again, a bounded number of times, as client-go does.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Generic, Protocol, TypeVar

import msgspec
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from schemas import (RESOURCES, ApiError, BindRequest, DeleteRequest, GetRequest, ListRequest, ObjectList,
                     PatchRequest, Resource, ScaleRequest, TopObject, WatchAck, WatchEvent, WatchRequest)
from schemas.fencing import FENCE_HEADER, FENCED_PREFIX
from schemas.workloads import Deployment, Lease, ReplicaSet
from schemas.cluster import Endpoints, Event, Namespace, Node, Service
from schemas.pod import Pod

from .codec import encode, is_status, raise_for_status
from .inbox import Inbox, Overflow
from .requester import requester

T = TypeVar("T", bound=TopObject)


# Watch messages received but not yet read (each may hold a batch of events): a watcher further
# behind than this has its watch ended (WatchExpired) and lists again, rather than growing without bound.
WATCH_BACKLOG = 100_000

_ACK = msgspec.json.Decoder(WatchAck)
_EVENT = msgspec.json.Decoder(WatchEvent)
_BATCH = msgspec.json.Decoder(list[WatchEvent])


class WatchExpired(Exception):
    """The watch must be restarted: `gone` means relist first (the version is too old)."""

    def __init__(self, why: str, gone: bool = False):
        super().__init__(why)
        self.gone = gone


# The verbs that change the state log; only these carry a leader's fence (reads are never fenced).
WRITE_VERBS = frozenset(("create", "update", "status", "patch", "delete", "bind", "scale"))

# A throttled request was not acted on, so sending it again is safe for every verb (client-go retries
# up to 10 times). The wait is the server's retryAfterSeconds, capped: a long flood ends in the error.
THROTTLE_RETRIES = 10
MAX_THROTTLE_WAIT = 10.0


def _throttle_wait(err: ApiError) -> float:
    return min(float(err.retry_after or 1), MAX_THROTTLE_WAIT)


class NotLeader(ApiError):
    """A leader-only write not made: this process does not hold its lease (now, as far as it knows).
    A Conflict, so code that treats a conflict as "someone else changed it; look again" does so."""

    def __init__(self, message: str):
        super().__init__("Conflict", message)


class Fenced(NotLeader):
    """The API server refused a leader's write: its Lease is held by someone else, or in a later term."""


class WriteFence(Protocol):
    """What an Api with a fence asks before each write (services/lib/leader.py LeaderElector is one)."""

    def fence_header(self) -> str:
        """The Flotilla-Fence header value for a write now; raises NotLeader when not leading."""
        ...

    def fenced(self, header: str, err: ApiError) -> None:
        """The API server refused a write that carried `header` (the writer must stop acting)."""
        ...


class ListResult(msgspec.Struct, Generic[T]):
    items: list[T]
    resource_version: str
    continue_: str | None = None


class ResourceClient(Generic[T]):
    def __init__(self, api: "Api", resource: Resource):
        self.api = api
        self.resource = resource
        self._type: type[T] = resource.type
        self._decoder = msgspec.json.Decoder(resource.type)
        self._list_decoder = msgspec.json.Decoder(ObjectList)

    # -- plumbing -------------------------------------------------------------------------------
    async def _call(self, verb: str, body: Any, *, retry: bool = False) -> bytes:
        data = body if isinstance(body, (bytes, bytearray)) else encode(body)
        for throttled in range(THROTTLE_RETRIES + 1):
            try:
                return await self._call_once(verb, data, retry)
            except ApiError as err:
                if err.reason != "TooManyRequests" or throttled == THROTTLE_RETRIES:
                    raise
                await asyncio.sleep(_throttle_wait(err))
        raise AssertionError("unreachable")

    async def _call_once(self, verb: str, data: bytes, retry: bool) -> bytes:
        subject = self.api.subject(self.resource, verb)
        fence = self.api.fence
        headers: dict[str, str] | None = None
        if fence is not None and verb in WRITE_VERBS:
            headers = {FENCE_HEADER: fence.fence_header()}  # NotLeader: nothing is sent
        attempts = self.api.retries if retry else 1
        for attempt in range(attempts):
            try:
                msg = await self.api.requester.request(subject, data, self.api.timeout, headers)
            except NoRespondersError:
                if attempt + 1 >= attempts:
                    raise ApiError("ServiceUnavailable", f"no API server answers on {subject}") from None
            except NatsTimeout:
                if attempt + 1 >= attempts:
                    raise ApiError("Timeout", f"no reply on {subject} within {self.api.timeout}s") from None
            else:
                if headers is not None and is_status(msg.data):
                    self._raise_fenced(msg.data, headers[FENCE_HEADER])
                raise_for_status(msg.data)
                return msg.data
            await asyncio.sleep(min(0.2 * 2**attempt, 2.0))
        raise AssertionError("unreachable")

    def _raise_fenced(self, data: bytes, header: str) -> None:
        try:
            raise_for_status(data)
        except ApiError as err:
            if err.reason == "Conflict" and err.message.startswith(FENCED_PREFIX):
                assert self.api.fence is not None
                self.api.fence.fenced(header, err)
                raise Fenced(err.message) from None

    def _obj(self, data: bytes) -> T:
        return self._decoder.decode(data)

    def _ns(self, namespace: str | None) -> str | None:
        return (namespace or "default") if self.resource.namespaced else None

    # -- verbs ----------------------------------------------------------------------------------
    async def create(self, obj: T | dict) -> T:
        return self._obj(await self._call("create", obj))

    async def get(self, name: str, namespace: str | None = None) -> T:
        return self._obj(await self._call("get", GetRequest(name=name, namespace=self._ns(namespace)), retry=True))

    async def list(self, namespace: str | None = None, label_selector: str | None = None,
                   field_selector: str | None = None, limit: int | None = None,
                   continue_: str | None = None) -> ListResult[T]:
        req = ListRequest(namespace=namespace if self.resource.namespaced else None, label_selector=label_selector,
                          field_selector=field_selector, limit=limit, continue_=continue_)
        reply = self._list_decoder.decode(await self._call("list", req, retry=True))
        items = [self._decoder.decode(raw) for raw in reply.items]
        return ListResult(items=items, resource_version=reply.metadata.resource_version,
                          continue_=reply.metadata.continue_)

    async def list_all(self, namespace: str | None = None, label_selector: str | None = None,
                       field_selector: str | None = None, page: int = 1000) -> ListResult[T]:
        """Every matching object, page by page; the version is the first page's (a consistent snapshot)."""
        first = await self.list(namespace, label_selector, field_selector, limit=page)
        items, token = list(first.items), first.continue_
        while token:
            nxt = await self.list(namespace, label_selector, field_selector, limit=page, continue_=token)
            items.extend(nxt.items)
            token = nxt.continue_
        return ListResult(items=items, resource_version=first.resource_version)

    async def update(self, obj: T) -> T:
        return self._obj(await self._call("update", obj))

    async def update_status(self, obj: T) -> T:
        return self._obj(await self._call("status", obj))

    async def put_status(self, obj: T, status: Any) -> T | None:
        """A controller's status write, judged from its informer's copy `obj`. That copy may predate
        the controller's own previous write (the informer lags), so on a conflict the same status is
        written once more onto the current object, as Kubernetes' controllers do, instead of failing
        the sync (which would judge everything again a few milliseconds later, and again, until the
        informer caught up). None when the object is gone, or was deleted and made again meanwhile
        (its own sync follows)."""
        try:
            return await self.update_status(msgspec.structs.replace(obj, status=status))
        except NotLeader:
            raise  # a conflict with the lease, not with the object: writing again cannot help
        except ApiError as exc:
            if exc.reason == "NotFound":
                return None
            if exc.reason != "Conflict":
                raise
        try:
            current = await self.get(obj.metadata.name, obj.metadata.namespace)
        except ApiError as exc:
            if exc.reason == "NotFound":
                return None
            raise
        if current.metadata.uid != obj.metadata.uid:
            return None
        return await self.update_status(msgspec.structs.replace(current, status=status))

    async def patch(self, name: str, patch: dict[str, Any], namespace: str | None = None) -> T:
        return self._obj(await self._call("patch", PatchRequest(name=name, namespace=self._ns(namespace), patch=patch)))

    async def delete(self, name: str, namespace: str | None = None, *, grace_period_seconds: int | None = None,
                     propagation_policy: str | None = None, resource_version: str | None = None,
                     uid: str | None = None) -> T:
        """Returns the object as it is after the call (with deletionTimestamp set when deletion is graceful)."""
        req = DeleteRequest(name=name, namespace=self._ns(namespace), grace_period_seconds=grace_period_seconds,
                            propagation_policy=propagation_policy, resource_version=resource_version, uid=uid)
        return self._obj(await self._call("delete", req))

    async def bind(self, name: str, node_name: str, namespace: str | None = None,
                   resource_version: str | None = None) -> T:
        req = BindRequest(name=name, namespace=self._ns(namespace), node_name=node_name,
                          resource_version=resource_version)
        return self._obj(await self._call("bind", req))

    async def scale(self, name: str, replicas: int, namespace: str | None = None) -> T:
        return self._obj(await self._call("scale", ScaleRequest(name=name, namespace=self._ns(namespace),
                                                                replicas=replicas)))

    async def watch(self, namespace: str | None = None, label_selector: str | None = None,
                    field_selector: str | None = None, resource_version: str | None = None,
                    bookmarks: bool = False) -> AsyncIterator[tuple[str, T]]:
        """Yield (type, object) from `resource_version` on; raises WatchExpired when it must restart.

        Types: ADDED, MODIFIED, DELETED, and BOOKMARK (only when `bookmarks`; the object then carries
        just metadata.resourceVersion). Every message has a per-watch sequence number; a gap, a silent
        server (no bookmark within 3 intervals) or an ERROR ends the watch with WatchExpired.
        """
        nc = self.api.nc
        subject = self.api.subject(self.resource, "watch")
        async with Inbox(nc, limit=WATCH_BACKLOG) as inbox:
            req = WatchRequest(namespace=namespace if self.resource.namespaced else None,
                               label_selector=label_selector, field_selector=field_selector,
                               resource_version=resource_version)
            for throttled in range(THROTTLE_RETRIES + 1):
                await nc.publish(subject, encode(req), reply=inbox.subject)
                try:
                    first = await inbox.get(self.api.timeout)
                except TimeoutError:
                    raise WatchExpired("no API server accepted the watch") from None
                if not first.data and first.headers and first.headers.get("Status") == "503":
                    # NATS itself answers "no responders" when no API server is subscribed: an error the
                    # caller retries with back-off, as for any other verb (it is not a watch event).
                    raise ApiError("ServiceUnavailable", f"no API server answers on {subject}")
                if not is_status(first.data):
                    break
                try:
                    raise_for_status(first.data)
                except ApiError as err:
                    if err.reason == "Gone":
                        raise WatchExpired(err.message, gone=True) from None
                    if err.reason != "TooManyRequests" or throttled == THROTTLE_RETRIES:
                        raise
                    await asyncio.sleep(_throttle_wait(err))
            try:
                ack = _ACK.decode(first.data)
            except msgspec.DecodeError:
                # Events before any ACK: the ACK was lost (published while NATS restarted, before
                # this inbox was subscribed again), and with it the start of the stream.
                raise WatchExpired("the watch began without its ACK; watching again") from None
            idle = max(3.0 * ack.bookmark_seconds, 1.0)
            expected = 1
            while True:
                try:
                    msg = await inbox.get(idle)
                except TimeoutError:
                    raise WatchExpired(f"watch silent for {idle:.0f}s (API server gone?)") from None
                except Overflow as exc:
                    raise WatchExpired(f"watch fell behind: {exc}") from None
                if not msg.data:  # a no-responders status or an empty keepalive
                    continue
                # A busy watch sends queued events together, as a JSON array (docs/api.md).
                try:
                    events = _BATCH.decode(msg.data) if msg.data[:1] == b"[" else (_EVENT.decode(msg.data),)
                except msgspec.DecodeError as exc:  # not from an API server: the stream is not trustworthy
                    raise WatchExpired(f"undecodable watch message: {exc}") from None
                for ev in events:
                    if ev.seq != expected:
                        raise WatchExpired(f"watch sequence gap: expected {expected}, got {ev.seq}")
                    expected += 1
                    if ev.type == "ERROR":
                        try:
                            raise_for_status(bytes(ev.object))
                        except ApiError as err:
                            raise WatchExpired(err.message, gone=err.reason == "Gone") from None
                        raise WatchExpired("watch ended by the server")
                    if ev.type == "BOOKMARK" and not bookmarks:
                        continue
                    yield ev.type, self._decoder.decode(ev.object)


class Api:
    """All resources of the API over one NATS connection. `node` selects the node-scoped subjects,
    `user` the user-scoped ones of that principal (neither: the admin's plain subjects).
    With a `fence`, every write carries the leader's Flotilla-Fence header and is not sent at all
    while the fence says this process does not lead (schemas/fencing.py)."""

    def __init__(self, nc: Client, node: str | None = None, timeout: float = 10.0, retries: int = 5,
                 fence: WriteFence | None = None, user: str | None = None):
        self.nc = nc
        self.node = node
        self.user = None if node else user
        self.fence = fence
        self.timeout = timeout
        self.retries = retries
        self.requester = requester(nc)
        self._clients: dict[str, ResourceClient[Any]] = {}

    def subject(self, resource: Resource, verb: str) -> str:
        return resource.subject(verb, self.node, self.user)

    def resource(self, name: str) -> ResourceClient[Any]:
        if name not in self._clients:
            self._clients[name] = ResourceClient(self, RESOURCES[name])
        return self._clients[name]

    @property
    def pods(self) -> ResourceClient[Pod]:
        return self.resource("pods")

    @property
    def nodes(self) -> ResourceClient[Node]:
        return self.resource("nodes")

    @property
    def namespaces(self) -> ResourceClient[Namespace]:
        return self.resource("namespaces")

    @property
    def services(self) -> ResourceClient[Service]:
        return self.resource("services")

    @property
    def endpoints(self) -> ResourceClient[Endpoints]:
        return self.resource("endpoints")

    @property
    def replicasets(self) -> ResourceClient[ReplicaSet]:
        return self.resource("replicasets")

    @property
    def deployments(self) -> ResourceClient[Deployment]:
        return self.resource("deployments")

    @property
    def leases(self) -> ResourceClient[Lease]:
        return self.resource("leases")

    @property
    def events(self) -> ResourceClient[Event]:
        return self.resource("events")
