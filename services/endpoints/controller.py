"""The endpoints reconcile, per Service key `namespace/name`: the Endpoints of the same name hold the
addresses and ports of the pods the Service selects (services/endpoints/subsets.py computes them).

- Services without a selector keep hand-written Endpoints: they are never touched.
- The Endpoints this controller writes carry an ownerReference to their Service; that reference is
  how, once the Service is gone, the controller knows the Endpoints was its own to delete (a
  hand-written one of a selector-less Service stays, as the proxy and DNS tests rely on).
- Pod changes are folded into one sync per `batch` seconds (the EndpointSlice controller's batch
  period), so a burst of pod status writes costs a handful of Endpoints writes.
- A sync writes only when the computed subsets, labels or owner differ from what is stored.
"""
from __future__ import annotations

import msgspec

from schemas import ApiError, Endpoints, LabelSelector, ObjectMeta, OwnerReference, Pod, Service
from schemas.selectors import Selector, SelectorError, selector_from_struct
from services.lib.client import Api
from services.lib.controller import Controller
from services.lib.events import EventRecorder
from services.lib.informer import Informer, by_namespace, object_key
from services.lib.log import get_logger

from .subsets import PortProblem, compute

log = get_logger("flotilla.endpoints")

BATCH_SECONDS = 0.2
_encode = msgspec.json.encode


def owner_ref(svc: Service) -> OwnerReference:
    return OwnerReference(api_version="v1", kind="Service", name=svc.metadata.name, uid=svc.metadata.uid or "",
                          controller=True)


def owned_by_service(ep: Endpoints, name: str) -> bool:
    return any(r.kind == "Service" and r.name == name and r.controller for r in ep.metadata.owner_references)


def _pod_facts(pod: Pod) -> bytes:
    """What of a pod can change its Endpoints entry; pod changes that keep it (most container status
    moves) sync nothing."""
    s = pod.status
    ready = next((c.status for c in s.conditions if c.type == "Ready"), None)
    ports = [(cp.name, cp.container_port, cp.protocol) for c in pod.spec.containers for cp in c.ports]
    return _encode((s.pod_ip, ready, s.phase, pod.metadata.deletion_timestamp is not None, pod.spec.node_name,
                    pod.metadata.uid, ports))


def _unchanged(ep: Endpoints, labels: dict[str, str], refs: list[OwnerReference], subsets: list) -> bool:
    # Encodings, not ==: subsets are sorted by compute(), so equal content encodes equally.
    return _encode(ep.subsets) == _encode(subsets) and ep.metadata.labels == labels \
        and _encode(ep.metadata.owner_references) == _encode(refs)


def _rv(obj: Endpoints | None) -> int:
    rv = obj.metadata.resource_version if obj is not None else None
    return int(rv) if rv and rv.isdigit() else -1


class EndpointsController:
    def __init__(self, api: Api, recorder: EventRecorder, workers: int = 4, batch: float = BATCH_SECONDS):
        self.api = api
        self.recorder = recorder
        self.batch = batch
        self.services: Informer[Service] = Informer(api.services)
        self.pods: Informer[Pod] = Informer(api.pods)
        self.endpoints: Informer[Endpoints] = Informer(api.endpoints)
        self.services.add_index("namespace", by_namespace)
        self.pods.add_index("namespace", by_namespace)
        self.controller = Controller("endpoints", self.sync, workers=workers)
        self.services.add_handlers(self._svc_changed, lambda old, new: self._svc_changed(new), self._svc_changed)
        self.pods.add_handlers(self._pod_added, self._pod_updated, self._pod_added)
        self.endpoints.add_handlers(self._ep_changed, self._ep_updated, self._ep_deleted)
        self._selectors: dict[str, tuple[str | None, Selector | None]] = {}
        # The reply to this replica's own last write per key: the informer may not have seen it yet,
        # and judging from the older copy would write again (and conflict).
        self._written: dict[str, Endpoints] = {}
        # The port problems last reported per Service, so each distinct one is an Event once.
        self._reported: dict[str, set[PortProblem]] = {}

    @property
    def informers(self) -> list[Informer]:
        return [self.services, self.pods, self.endpoints]

    def resync(self) -> None:
        for key in self.services.store:
            self.controller.enqueue(key)
        for key in self.endpoints.store:  # Endpoints whose Service went while nobody led
            if key not in self.services.store:
                self.controller.enqueue(key)

    # ---- event handlers ---------------------------------------------------------------------------
    def _svc_changed(self, svc: Service) -> None:
        self.controller.enqueue(object_key(svc))

    def _selector(self, svc: Service) -> Selector | None:
        """The Service's selector, parsed once per Service version; None when it has none."""
        key = object_key(svc)
        rv = svc.metadata.resource_version
        hit = self._selectors.get(key)
        if hit is not None and hit[0] == rv:
            return hit[1]
        sel: Selector | None = None
        if svc.spec.selector:
            try:
                sel = selector_from_struct(LabelSelector(match_labels=svc.spec.selector), "spec.selector")
            except SelectorError as exc:  # the API server validates it: only an old object could
                log.warning("bad selector; ignoring the service", service=key, error=str(exc))
        self._selectors[key] = (rv, sel)
        return sel

    def _services_for(self, pod: Pod, labels: list[dict[str, str]]) -> list[str]:
        keys = []
        for svc in self.services.by_index("namespace", pod.metadata.namespace or ""):
            sel = self._selector(svc)
            if sel is not None and any(sel.matches(lb) for lb in labels):
                keys.append(object_key(svc))
        return keys

    def _pod_added(self, pod: Pod) -> None:
        for key in self._services_for(pod, [pod.metadata.labels]):
            self.controller.enqueue_batched(key, self.batch)

    def _pod_updated(self, old: Pod, new: Pod) -> None:
        if old.metadata.labels == new.metadata.labels:
            if _pod_facts(old) == _pod_facts(new):
                return
            labels = [new.metadata.labels]
        else:
            labels = [old.metadata.labels, new.metadata.labels]
        for key in self._services_for(new, labels):
            self.controller.enqueue_batched(key, self.batch)

    def _ep_changed(self, ep: Endpoints) -> None:
        # Someone else wrote or deleted an Endpoints of a Service with a selector: put it right.
        # (Mostly this is our own write coming back, which the sync finds unchanged.)
        self.controller.enqueue_batched(object_key(ep), self.batch)

    def _ep_deleted(self, ep: Endpoints) -> None:
        self._written.pop(object_key(ep), None)  # our last write is gone with it
        self._ep_changed(ep)

    def _ep_updated(self, old: Endpoints, new: Endpoints) -> None:
        key = object_key(new)
        mine = self._written.get(key)
        if mine is not None and mine.metadata.resource_version == new.metadata.resource_version:
            return  # our own write, seen by the informer
        self._ep_changed(new)

    # ---- the reconcile ----------------------------------------------------------------------------
    def _current(self, key: str) -> Endpoints | None:
        """The newest copy known: the informer's, or the reply to our own later write."""
        seen = self.endpoints.get(key)
        mine = self._written.get(key)
        if mine is not None and _rv(mine) > _rv(seen):
            return mine
        if mine is not None:
            del self._written[key]  # the informer caught up
        return seen

    async def sync(self, key: str) -> float | None:
        namespace, _, name = key.partition("/")
        svc = self.services.get(key)
        if svc is None:
            await self._service_gone(key, namespace, name)
            return None
        sel = self._selector(svc)
        if sel is None:
            self._written.pop(key, None)
            self._reported.pop(key, None)
            return None  # no selector: its Endpoints are somebody else's
        pods = [p for p in self.pods.by_index("namespace", namespace) if sel.matches(p.metadata.labels)]
        result = compute(svc, pods)
        await self._report(svc, key, result.problems)
        current = self._current(key)
        log.debug("sync", service=key, pods=len(pods), subsets=len(result.subsets), problems=len(result.problems),
                  current=current.metadata.resource_version if current is not None else None)
        labels = dict(svc.metadata.labels)
        refs = [owner_ref(svc)]
        if current is not None and _unchanged(current, labels, refs, result.subsets):
            return None
        if current is None:
            ep = Endpoints(metadata=ObjectMeta(name=name, namespace=namespace, labels=labels, owner_references=refs),
                           subsets=result.subsets)
            try:
                written = await self.api.endpoints.create(ep)
            except ApiError as exc:
                if exc.reason != "AlreadyExists":
                    raise
                # Made meanwhile (a hand-written one, or ours before a restart): take the stored copy.
                stored = await self.api.endpoints.get(name, namespace)
                written = await self._relabel(stored, labels, refs, result.subsets)
        else:
            written = await self._relabel(current, labels, refs, result.subsets)
        self._written[key] = written
        log.info("endpoints written", service=key, rv=written.metadata.resource_version,
                 ready=sum(len(s.addresses) for s in result.subsets),
                 not_ready=sum(len(s.not_ready_addresses) for s in result.subsets), subsets=len(result.subsets))
        return None

    async def _relabel(self, current: Endpoints, labels: dict[str, str], refs: list[OwnerReference],
                       subsets: list) -> Endpoints:
        """Update `current` (CAS on its version) to the computed content, unless it already is."""
        if _unchanged(current, labels, refs, subsets):
            return current
        meta = msgspec.structs.replace(current.metadata, labels=labels, owner_references=refs)
        return await self.api.endpoints.update(msgspec.structs.replace(current, metadata=meta, subsets=subsets))

    async def _service_gone(self, key: str, namespace: str, name: str) -> None:
        self._selectors.pop(key, None)
        self._reported.pop(key, None)
        current = self._current(key)
        self._written.pop(key, None)
        if current is None or not owned_by_service(current, name):
            return
        try:
            await self.api.endpoints.delete(name, namespace, resource_version=current.metadata.resource_version)
        except ApiError as exc:
            if exc.reason != "NotFound":
                raise  # a Conflict: it changed meanwhile, the retry judges it again
            return
        log.info("endpoints deleted with their service", service=key)

    async def _report(self, svc: Service, key: str, problems: list[PortProblem]) -> None:
        """A Warning Event per distinct missing named port, once while the problem lasts."""
        before = self._reported.get(key, set())
        now = set(problems)
        for p in problems:
            if p not in before:
                await self.recorder.record(svc, "Warning", "FailedToResolvePort", p.message())
        if now:
            self._reported[key] = now
        else:
            self._reported.pop(key, None)
