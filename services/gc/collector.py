"""The garbage collector's reconcile, per object key "<resource>/<namespace>/<name>":

- a dependent whose owners are all gone (verified with a live read, not just the cache) is deleted;
  owners that are gone are dropped from its ownerReferences when some remain;
- an owner being deleted with the `orphan` finalizer: its dependents lose their reference to it,
  then the finalizer is removed (the API server then completes the deletion);
- an owner being deleted with `foregroundDeletion`: its dependents are deleted (foreground too),
  and once none remain the finalizer is removed.
"""
from __future__ import annotations

from typing import Any

import msgspec

from schemas import RESOURCES, ApiError, TopObject
from services.lib.client import Api
from services.lib.controller import Controller
from services.lib.informer import Informer, object_key
from services.lib.log import get_logger

log = get_logger("flotilla.gc")

# Kinds that own or are owned here. (Events and Endpoints are not garbage-collected by owner.)
KINDS = ("deployments", "replicasets", "pods", "services")
ORPHAN = "orphan"
FOREGROUND = "foregroundDeletion"


def _key(resource: str, obj: TopObject) -> str:
    return f"{resource}/{obj.metadata.namespace or ''}/{obj.metadata.name}"


class GarbageCollector:
    def __init__(self, api: Api, workers: int = 4):
        self.api = api
        self.informers: dict[str, Informer[Any]] = {r: Informer(api.resource(r)) for r in KINDS}
        self.by_uid: dict[str, tuple[str, TopObject]] = {}
        self.controller = Controller("gc", self.sync, workers=workers)
        for resource, inf in self.informers.items():
            inf.add_index("owner", lambda o: [r.uid for r in o.metadata.owner_references])
            inf.add_handlers(self._on(resource), lambda old, new, r=resource: self._on(r)(new), self._gone(resource))

    def resync(self) -> None:
        for resource, inf in self.informers.items():
            for obj in inf.store.values():
                self.controller.enqueue(_key(resource, obj))

    def _on(self, resource: str):
        def handler(obj: TopObject) -> None:
            if obj.metadata.uid:
                self.by_uid[obj.metadata.uid] = (resource, obj)
            self.controller.enqueue(_key(resource, obj))
        return handler

    def _gone(self, resource: str):
        def handler(obj: TopObject) -> None:
            uid = obj.metadata.uid or ""
            self.by_uid.pop(uid, None)
            for dep_resource, dep in self.dependents(uid):  # their owner is gone: look at them
                self.controller.enqueue(_key(dep_resource, dep))
            # An owner waiting in the foreground for this dependent can finish now, not at its next requeue.
            for ref in obj.metadata.owner_references:
                owner = self.by_uid.get(ref.uid)
                if owner is not None:
                    self.controller.enqueue(_key(*owner))
        return handler

    def dependents(self, uid: str) -> list[tuple[str, TopObject]]:
        return [(r, o) for r, inf in self.informers.items() for o in inf.by_index("owner", uid)]

    async def sync(self, key: str) -> float | None:
        resource, ns, name = key.split("/", 2)
        obj = self.informers[resource].get(f"{ns}/{name}" if ns else name)
        if obj is None:
            return None
        meta = obj.metadata
        if meta.deletion_timestamp and ORPHAN in meta.finalizers:
            await self._orphan_dependents(resource, obj)
            return None
        if meta.deletion_timestamp and FOREGROUND in meta.finalizers:
            return await self._delete_dependents_first(resource, obj)
        if meta.owner_references:
            await self._check_owners(resource, obj)
        return None

    async def _owner_exists(self, ref: Any, namespace: str | None) -> bool:
        """The cache may lag behind a just-created owner: absent owners are confirmed with a live get."""
        cached = self.by_uid.get(ref.uid)
        if cached is not None and not cached[1].metadata.deletion_timestamp:
            return True
        resource = next((r for r in RESOURCES.values() if r.kind == ref.kind), None)
        if resource is None:
            return True  # a kind we do not know: never delete on its account
        try:
            owner = await self.api.resource(resource.name).get(ref.name, namespace if resource.namespaced else None)
        except ApiError as exc:
            if exc.reason == "NotFound":
                return False
            raise
        if owner.metadata.uid != ref.uid:
            return False
        # An owner being deleted in the foreground still exists; one being deleted otherwise is going.
        return not owner.metadata.deletion_timestamp or FOREGROUND in owner.metadata.finalizers \
            or ORPHAN in owner.metadata.finalizers

    async def _check_owners(self, resource: str, obj: TopObject) -> None:
        meta = obj.metadata
        alive = [r for r in meta.owner_references if await self._owner_exists(r, meta.namespace)]
        if len(alive) == len(meta.owner_references):
            return
        client = self.api.resource(resource)
        if not alive:
            if meta.deletion_timestamp:
                return
            # Our parent went in the foreground: so do we (its finalizer waits for us).
            policy = "Foreground" if any(self._parent_foreground(r) for r in meta.owner_references) else "Background"
            try:
                # Preconditioned on the version we judged: our copy may predate a change that released
                # the object (an Orphan deletion of its owner strips the reference just before the owner
                # goes). Then the delete conflicts and the change, when it arrives, is judged afresh.
                await client.delete(meta.name, meta.namespace, propagation_policy=policy, uid=meta.uid,
                                    resource_version=meta.resource_version)
                log.info("deleted dependent of a gone owner", object=f"{resource}/{object_key(obj)}", policy=policy)
            except ApiError as exc:
                if exc.reason not in ("NotFound", "Conflict"):
                    raise
            return
        try:
            await client.patch(meta.name, {"metadata": {"ownerReferences": [msgspec.to_builtins(r) for r in alive],
                                                       "resourceVersion": meta.resource_version}}, meta.namespace)
        except ApiError as exc:
            if exc.reason not in ("NotFound", "Conflict"):
                raise

    def _parent_foreground(self, ref: Any) -> bool:
        cached = self.by_uid.get(ref.uid)
        return cached is not None and FOREGROUND in cached[1].metadata.finalizers

    async def _orphan_dependents(self, resource: str, owner: TopObject) -> None:
        uid = owner.metadata.uid or ""
        for dep_resource, dep in self.dependents(uid):
            refs = [msgspec.to_builtins(r) for r in dep.metadata.owner_references if r.uid != uid]
            try:
                await self.api.resource(dep_resource).patch(dep.metadata.name, {"metadata": {
                    "ownerReferences": refs or None, "resourceVersion": dep.metadata.resource_version}},
                    dep.metadata.namespace)
            except ApiError as exc:
                if exc.reason == "Conflict":
                    raise  # retried with back-off: the dependent must lose the reference first
                if exc.reason != "NotFound":
                    raise
        await self._remove_finalizer(resource, owner, ORPHAN)
        log.info("orphaned dependents", owner=f"{resource}/{object_key(owner)}")

    async def _delete_dependents_first(self, resource: str, owner: TopObject) -> float | None:
        uid = owner.metadata.uid or ""
        deps = self.dependents(uid)
        for dep_resource, dep in deps:
            if dep.metadata.deletion_timestamp:
                continue
            try:
                await self.api.resource(dep_resource).delete(dep.metadata.name, dep.metadata.namespace,
                                                             propagation_policy="Foreground", uid=dep.metadata.uid)
            except ApiError as exc:
                if exc.reason not in ("NotFound", "Conflict"):
                    raise
        if deps:
            return 1.0  # look again; dependents going away also wake us
        await self._remove_finalizer(resource, owner, FOREGROUND)
        log.info("foreground deletion complete", owner=f"{resource}/{object_key(owner)}")
        return None

    async def _remove_finalizer(self, resource: str, obj: TopObject, finalizer: str) -> None:
        rest = [f for f in obj.metadata.finalizers if f != finalizer]
        try:
            await self.api.resource(resource).patch(obj.metadata.name, {"metadata": {
                "finalizers": rest or None, "resourceVersion": obj.metadata.resource_version}}, obj.metadata.namespace)
        except ApiError as exc:
            if exc.reason != "NotFound":
                raise
