"""The write and read verbs on objects: create, get, list, update, status, patch, delete, bind, scale."""
from __future__ import annotations

import base64
import json
import os
import random
from datetime import datetime, timedelta, timezone
from typing import Any

import msgspec

from schemas import (DEFAULT_NAMESPACES, ApiError, BindRequest, DeleteRequest, GetRequest, ListRequest, ObjectList, PatchRequest,
                     Resource, ScaleRequest, TopObject, now_iso)
from schemas.base import Condition, ListMeta, ManagedFieldsEntry, ObjectMeta
from schemas.cluster import Namespace
from schemas.names import dns1123_label_error, dns1123_subdomain_error
from schemas.pod import Pod
from schemas.selectors import SelectorError, parse_field_selector, parse_label_selector
from schemas.status import not_found
from services.lib.codec import encode, with_resource_version

from . import nodeauth
from .allocator import ServiceAllocator
from .decoding import MAX_OBJECT_BYTES, strict_decode
from .defaults import PodDefaults, apply_defaults, qos_class
from .store import Bucket, StateLog
from .validation import validate
from .watchcache import Cached, WatchCache
from services.lib.mergepatch import merge_patch

_GEN_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
_SERVER_FIELDS = ("uid", "resource_version", "creation_timestamp", "generation", "deletion_timestamp",
                  "deletion_grace_period_seconds", "self_link", "managed_fields")
STATUS_KINDS = ("pods", "nodes", "replicasets", "deployments", "services", "namespaces")
_CAS_RETRIES = 8
_MAX_GRACE_DEADLINE = 100 * 365 * 24 * 3600


_UID_POOL: list[bytes] = []


def new_uid() -> str:
    """A random (version 4) UUID as Kubernetes gives every object. `uuid.uuid4()` makes a system call
    and two objects per UID; here the randomness is drawn 256 UIDs at a time."""
    if not _UID_POOL:
        pool = os.urandom(16 * 256)
        _UID_POOL.extend(pool[i:i + 16] for i in range(0, len(pool), 16))
    b = bytearray(_UID_POOL.pop())
    b[6] = (b[6] & 0x0F) | 0x40  # version 4
    b[8] = (b[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _decode_stored(resource: Resource, data: bytes, rev: int) -> TopObject:
    obj = msgspec.json.decode(data, type=resource.type)
    obj.metadata.resource_version = str(rev)
    return obj


def _spec_of(obj: TopObject) -> bytes:
    spec = getattr(obj, "spec", None)
    if spec is None:  # kinds without a spec: everything but metadata counts
        return encode({k: v for k, v in msgspec.structs.asdict(obj).items() if k != "metadata"})
    return encode(spec)


# schemas/base.py's ManagedFieldsEntry may not have Kubernetes' `subresource` yet: without it, the
# entries of one manager and operation are one entry whatever the subresource.
_HAS_SUBRESOURCE = "subresource" in ManagedFieldsEntry.__struct_fields__


def record_manager(meta: ObjectMeta, manager: str | None, operation: str, api_version: str,
                   subresource: str | None = None) -> None:
    """Who wrote: one managedFields entry per (manager, operation, subresource), its time refreshed, as
    Kubernetes keeps them. Set on the object before its one write, so it costs no extra round trip."""
    if not manager:
        return
    now = now_iso()
    entries = list(meta.managed_fields or ())
    for i, e in enumerate(entries):
        if e.manager == manager and e.operation == operation and \
                (not _HAS_SUBRESOURCE or getattr(e, "subresource", None) == subresource):
            entries[i] = msgspec.structs.replace(e, time=now, api_version=api_version)
            break
    else:
        extra = {"subresource": subresource} if _HAS_SUBRESOURCE and subresource else {}
        entries.append(ManagedFieldsEntry(manager=manager, operation=operation, api_version=api_version,
                                          time=now, **extra))
    meta.managed_fields = entries


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


class Objects:
    """Verb handlers. `node` is set when the caller came in on a node-scoped subject."""

    def __init__(self, log: StateLog, cache: WatchCache, events_cache: WatchCache,
                 allocator: ServiceAllocator | None = None, pod_defaults: PodDefaults = PodDefaults()):
        self.log = log
        self.pod_defaults = pod_defaults
        self.cache = cache
        self.events_cache = events_cache
        self.allocator = allocator or ServiceAllocator(log, cache)

    # ---- helpers ----------------------------------------------------------------------------------
    def bucket(self, r: Resource) -> Bucket:
        return self.log.events if r.events_bucket else self.log.main

    def cache_for(self, r: Resource) -> WatchCache:
        return self.events_cache if r.events_bucket else self.cache

    def _ns(self, r: Resource, namespace: str | None) -> str | None:
        return (namespace or "default") if r.namespaced else None

    async def _load(self, r: Resource, namespace: str | None, name: str, cached: bool = False,
                    at_least: str | None = None) -> tuple[TopObject, int]:
        """The stored object and its revision. With `cached`, the watch cache may answer (saving a
        round trip to JetStream) when it holds the key at `at_least` or newer: a stale answer can
        only make the following compare-and-set fail, and the retry then reads the store."""
        if not name:
            raise ApiError("BadRequest", "name is required", field="name")
        # Name and namespace become tokens of the key's subject: `*` or `>` would match (and then be
        # updated or deleted in place of) another object. No stored object has an invalid name anyway.
        name_error = dns1123_label_error if r.name == "namespaces" else dns1123_subdomain_error
        if name_error(name) or (namespace is not None and dns1123_label_error(namespace)):
            raise not_found(r.name, name)
        key = r.key(namespace, name)
        if cached:
            hit = self.cache_for(r).objects[r.name].get(key)
            if hit is not None and (not at_least or not at_least.isdigit() or hit.rev >= int(at_least)):
                return _decode_stored(r, hit.data, hit.rev), hit.rev  # a private copy: callers mutate it
        entry = await self.log.get(self.bucket(r), key)
        if entry is None:
            raise not_found(r.name, name)
        return _decode_stored(r, entry.data, entry.revision), entry.revision

    async def _load_as(self, node: str | None, verb: str, r: Resource, namespace: str | None, name: str,
                       cached: bool = False, at_least: str | None = None) -> tuple[TopObject, int]:
        """`_load`, then the node restriction: a node agent reaches only the pods bound to it. A cached
        copy that says "not bound here" may just be behind a bind another replica wrote, so only the
        store's copy can refuse."""
        obj, rev = await self._load(r, namespace, name, cached=cached, at_least=at_least)
        if not node or r.name != "pods":
            return obj, rev
        if cached and obj.spec.node_name != node:  # type: ignore[attr-defined]
            obj, rev = await self._load(r, namespace, name)
        nodeauth.check_pod(node, verb, r, obj.spec.node_name)  # type: ignore[attr-defined]
        return obj, rev

    async def _write(self, r: Resource, obj: TopObject, rev: int | None) -> bytes:
        """Store `obj` (create when rev is None, else CAS on rev) and return the reply bytes."""
        meta = obj.metadata
        meta.resource_version = None
        data = encode(obj)
        if len(data) > MAX_OBJECT_BYTES:
            raise ApiError("TooLarge", f"object is too large: {len(data)} bytes, the limit is {MAX_OBJECT_BYTES}")
        key = r.key(meta.namespace, meta.name)
        if rev is None:
            try:
                new_rev = await self.log.create(self.bucket(r), key, data)
            except ApiError as err:
                if err.reason == "AlreadyExists":
                    raise ApiError("AlreadyExists", f'{r.name} "{meta.name}" already exists') from None
                raise
        else:
            new_rev = await self.log.update(self.bucket(r), key, data, rev)
        meta.resource_version = str(new_rev)
        return with_resource_version(data, new_rev)

    async def _namespace_usable(self, namespace: str) -> None:
        cached = self.cache.objects["namespaces"].get(f"namespaces._.{namespace}")
        ns_obj: Namespace | None = cached.obj if cached else None  # type: ignore[assignment]
        if ns_obj is None:
            entry = await self.log.get(self.log.main, f"namespaces._.{namespace}")
            if entry is None:
                raise ApiError("NotFound", f'namespaces "{namespace}" not found')
            ns_obj = msgspec.json.decode(entry.data, type=Namespace)
        if ns_obj.metadata.deletion_timestamp:
            raise ApiError("Forbidden", f'unable to create new content in namespace {namespace} because it is being terminated')

    # ---- create -----------------------------------------------------------------------------------
    async def create(self, r: Resource, body: bytes, node: str | None, who: str | None = None) -> bytes:
        obj = strict_decode(body, r.type, f"{r.kind} body")
        meta = obj.metadata
        if meta.resource_version:
            raise ApiError("Invalid", "metadata.resourceVersion: resourceVersion should not be set on objects to be created",
                           field="metadata.resourceVersion")
        meta.namespace = self._ns(r, meta.namespace)
        if node:
            nodeauth.check_request(node, r, "create", meta.namespace, meta.name)
        for f in _SERVER_FIELDS:
            setattr(meta, f, None)
        apply_defaults(obj, self.pod_defaults, creating=True)
        validate(obj, r)
        if r.namespaced:
            await self._namespace_usable(meta.namespace or "default")
        meta.uid = new_uid()
        meta.creation_timestamp = now_iso()
        meta.generation = 1
        record_manager(meta, who, "Create", r.api_version)
        self._reset_status_on_create(r, obj)
        if meta.name:
            return await self._create_write(r, obj)
        for _ in range(8):  # generateName: retry on the rare collision
            meta.name = meta.generate_name + "".join(random.choices(_GEN_ALPHABET, k=5))  # type: ignore[operator]
            try:
                return await self._create_write(r, obj)
            except ApiError as err:
                if err.reason != "AlreadyExists":
                    raise
        raise ApiError("AlreadyExists", f"could not generate a unique name from {meta.generate_name!r}")

    async def _create_write(self, r: Resource, obj: Any) -> bytes:
        """`_write` as a create; a Service's ClusterIP and NodePorts are allocated (records written) first,
        under its final name, and freed at once if the store refuses the Service. After an ambiguous
        failure (a timeout: the Service may be stored) they stay for the allocator's repair pass."""
        if r.name != "services":
            return await self._write(r, obj, None)
        # A name in use is refused before allocating: a refused request leaves the state log untouched.
        if await self.log.get(self.bucket(r), r.key(obj.metadata.namespace, obj.metadata.name)) is not None:
            raise ApiError("AlreadyExists", f'{r.name} "{obj.metadata.name}" already exists')
        plan = await self.allocator.on_create(obj)
        try:
            return await self._write(r, obj, None)
        except ApiError:
            await self.allocator.abort(plan)
            raise

    def _reset_status_on_create(self, r: Resource, obj: Any) -> None:
        if r.name == "pods":
            obj.status = type(obj.status)(phase="Pending", qos_class=qos_class(obj.spec))
            if obj.spec.node_name:
                obj.status.conditions = [Condition(type="PodScheduled", status="True", last_transition_time=now_iso())]
        elif r.name in ("replicasets", "deployments", "services"):
            obj.status = type(obj.status)()
        elif r.name == "namespaces":
            obj.status = type(obj.status)(phase="Active")

    # ---- get / list -------------------------------------------------------------------------------
    async def get(self, r: Resource, body: bytes, node: str | None, who: str | None = None) -> bytes:
        req = strict_decode(body, GetRequest, "get request")
        ns = self._ns(r, req.namespace)
        if node:
            nodeauth.check_request(node, r, "get", ns, req.name)
        obj, _ = await self._load_as(node, "get", r, ns, req.name)
        return encode(obj)

    def matcher(self, r: Resource, namespace: str | None, label_selector: str | None, field_selector: str | None):
        try:
            labels = parse_label_selector(label_selector)
        except SelectorError as exc:
            raise ApiError("BadRequest", f"unable to parse labelSelector: {exc}", field="labelSelector") from None
        try:
            fields = parse_field_selector(field_selector, set(r.field_getters))
        except SelectorError as exc:
            raise ApiError("BadRequest", f"unable to parse fieldSelector: {exc}", field="fieldSelector") from None
        getters = r.field_getters

        def match(c: Cached) -> bool:
            if namespace is not None and c.namespace != namespace:
                return False
            if labels.requirements and not labels.matches(c.labels):
                return False
            return not fields.requirements or fields.matches(c.obj, getters)

        return match, fields

    async def list(self, r: Resource, body: bytes, node: str | None, who: str | None = None) -> bytes:
        req = strict_decode(body, ListRequest, "list request")
        ns = req.namespace if r.namespaced and req.namespace else None
        if node:
            nodeauth.check_request(node, r, "list", ns, None, req.field_selector)
        if req.limit is not None and req.limit < 0:
            raise ApiError("BadRequest", "limit must not be negative", field="limit")
        match, fields = self.matcher(r, ns, req.label_selector, req.field_selector)
        cache = self.cache_for(r)
        await cache.ready.wait()
        after = ""
        list_rv = 0
        if req.continue_:
            try:
                token = json.loads(base64.urlsafe_b64decode(req.continue_.encode()))
                list_rv, after = int(token["rv"]), str(token["after"])
            except (ValueError, KeyError, TypeError):
                raise ApiError("BadRequest", "invalid continue token", field="continue") from None
        elif req.resource_version in (None, ""):
            head = await self.log.head(self.bucket(r))  # consistent read
            cache.observe_head(head)
            await cache.wait_for(head.last)
        table = cache.objects[r.name]
        # The node index holds bound pods only: `spec.nodeName=` (unscheduled) scans like any filter.
        node_name = fields.value_of("spec.nodeName") if r.name == "pods" else None
        if node_name:
            keys = cache.pods_by_node.get(node_name, set())
            candidates = [table[k] for k in keys if k in table]
        elif ns is not None:
            prefix = r.key_prefix(ns)
            candidates = [c for k, c in table.items() if k.startswith(prefix)]
        else:
            candidates = list(table.values())
        items = sorted((c for c in candidates if match(c) and c.key > after), key=lambda c: c.key)
        list_rv = list_rv or cache.rev
        cont = None
        if req.limit and len(items) > req.limit:
            items = items[: req.limit]
            cont = base64.urlsafe_b64encode(json.dumps({"rv": list_rv, "after": items[-1].key}).encode()).decode()
        reply = ObjectList(kind=r.list_kind, api_version=r.api_version,
                           metadata=ListMeta(resource_version=str(list_rv), continue_=cont),
                           items=[msgspec.Raw(c.served) for c in items])
        return encode(reply)

    # ---- update / status / patch ------------------------------------------------------------------
    async def update(self, r: Resource, body: bytes, node: str | None, who: str | None = None,
                     status_only: bool = False) -> bytes:
        verb = "status" if status_only else "update"
        if status_only and r.name not in STATUS_KINDS:
            raise ApiError("BadRequest", f"{r.name} have no status subresource")
        obj = strict_decode(body, r.type, f"{r.kind} body")
        return await self._update_obj(r, obj, node, verb, retry_on_conflict=True, who=who)

    async def _update_obj(self, r: Resource, obj: TopObject, node: str | None, verb: str,
                          retry_on_conflict: bool = False, who: str | None = None) -> bytes:
        meta = obj.metadata
        ns = self._ns(r, meta.namespace)
        if node:
            nodeauth.check_request(node, r, verb, ns, meta.name)
        for attempt in range(_CAS_RETRIES):
            current, rev = await self._load_as(node, verb, r, ns, meta.name, cached=attempt == 0,
                                               at_least=meta.resource_version)
            if meta.resource_version and meta.resource_version != str(rev):
                raise ApiError("Conflict", f'Operation cannot be fulfilled on {r.name} "{meta.name}": the object has been '
                                           "modified; please apply your changes to the latest version and try again")
            if meta.uid and meta.uid != current.metadata.uid:
                raise ApiError("Conflict", f'Precondition failed: UID in precondition: {meta.uid}, UID in object meta: '
                                           f"{current.metadata.uid}")
            new = self._merge(r, current, obj, verb, who)
            try:
                return await self._store_update(r, current, new, rev)
            except ApiError as err:
                if err.reason != "Conflict" or meta.resource_version or not retry_on_conflict \
                        or attempt + 1 == _CAS_RETRIES:
                    raise
        raise AssertionError("unreachable")

    def _merge(self, r: Resource, current: Any, incoming: Any, verb: str, who: str | None = None) -> Any:
        if verb == "status":
            status = incoming.status
            if r.name == "pods" and status.qos_class is None:
                status.qos_class = current.status.qos_class  # set at creation; writers need not echo it
            new = msgspec.structs.replace(current, status=status)
            new.metadata = msgspec.structs.replace(current.metadata)
        else:
            new = msgspec.structs.replace(incoming)
            meta = msgspec.structs.replace(incoming.metadata)
            for f in ("uid", "creation_timestamp", "deletion_timestamp", "deletion_grace_period_seconds",
                      "generation", "name", "namespace", "generate_name", "self_link", "managed_fields"):
                setattr(meta, f, getattr(current.metadata, f))
            new.metadata = meta
            if r.name in STATUS_KINDS:
                new.status = current.status
            apply_defaults(new, self.pod_defaults, creating=False)
            if r.name == "pods":
                self._check_pod_update(current, new)
        validate(new, r)
        if verb != "status" and _spec_of(new) != _spec_of(current):
            new.metadata.generation = (current.metadata.generation or 1) + 1
        record_manager(new.metadata, who, "Update", r.api_version, "status" if verb == "status" else None)
        return new

    def _check_pod_update(self, current: Pod, new: Pod) -> None:
        """Pods are immutable but for images, activeDeadlineSeconds and added tolerations (as in Kubernetes);
        the node is set only through `bind`."""
        probe = msgspec.structs.replace(new.spec)
        probe.containers = [msgspec.structs.replace(nc, image=cc.image)
                            for nc, cc in zip(new.spec.containers, current.spec.containers)] \
            if len(new.spec.containers) == len(current.spec.containers) else new.spec.containers
        probe.active_deadline_seconds = current.spec.active_deadline_seconds
        if all(t in new.spec.tolerations for t in current.spec.tolerations):
            probe.tolerations = current.spec.tolerations
        if encode(probe) != encode(current.spec):
            raise ApiError("Invalid", f'Pod "{current.metadata.name}" is invalid: spec: Forbidden: pod updates may not '
                                      "change fields other than `spec.containers[*].image`, "
                                      "`spec.activeDeadlineSeconds` or `spec.tolerations` (only additions to existing tolerations)",
                           field="spec")

    async def _store_update(self, r: Resource, current: TopObject, new: TopObject, rev: int) -> bytes:
        if new.metadata.deletion_timestamp and not new.metadata.finalizers and current.metadata.finalizers:
            # This write removed the last finalizer: the deletion completes now. (A pod in its grace
            # period has no finalizers and must stay until its node agent confirms.)
            await self.log.delete(self.bucket(r), r.key(new.metadata.namespace, new.metadata.name), rev)
            if r.name == "services":
                await self.allocator.release_all(current)  # type: ignore[arg-type]
            return encode(new)
        if r.name != "services":
            return await self._write(r, new, rev)
        plan = await self.allocator.on_update(current, new)  # type: ignore[arg-type]
        if _spec_of(new) == _spec_of(current):
            # an update that omitted the ClusterIP (now carried over) changed nothing after all
            new.metadata.generation = current.metadata.generation
        try:
            out = await self._write(r, new, rev)
        except ApiError:  # refused (a Conflict retries with a fresh plan): nothing it claimed stays
            await self.allocator.abort(plan)
            raise
        await self.allocator.commit(plan, new)  # type: ignore[arg-type]
        return out

    async def patch(self, r: Resource, body: bytes, node: str | None, who: str | None = None) -> bytes:
        req = strict_decode(body, PatchRequest, "patch request")
        ns = self._ns(r, req.namespace)
        if node:
            nodeauth.check_request(node, r, "patch", ns, req.name)
        if not isinstance(req.patch, dict):
            raise ApiError("BadRequest", "patch must be a JSON object (RFC 7386 merge patch)", field="patch")
        if not isinstance(req.patch.get("metadata", {}), dict):  # the merge below writes into it
            raise ApiError("BadRequest", "patch.metadata must be a JSON object", field="patch.metadata")
        precondition = req.patch.get("metadata", {}).get("resourceVersion")
        if precondition is not None and not isinstance(precondition, str):
            raise ApiError("BadRequest", "patch.metadata.resourceVersion must be a string", field="patch.metadata.resourceVersion")
        for attempt in range(_CAS_RETRIES):
            current, rev = await self._load_as(node, "patch", r, ns, req.name, cached=attempt == 0)
            if precondition and precondition != str(rev):  # the CAS below is on `rev`, so check it here
                raise ApiError("Conflict", f'Operation cannot be fulfilled on {r.name} "{req.name}": the object has been '
                                           "modified; please apply your changes to the latest version and try again")
            doc = msgspec.to_builtins(current)
            try:
                merged = merge_patch(doc, req.patch)
            except RecursionError:  # a patch nested about as deep as the decoder allows
                raise ApiError("BadRequest", "patch: JSON nested too deeply", field="patch") from None
            if not isinstance(merged, dict):
                raise ApiError("BadRequest", "the patch must leave a JSON object", field="patch")
            merged.setdefault("metadata", {})
            merged["metadata"]["resourceVersion"] = precondition or str(rev)
            merged["metadata"]["name"] = req.name
            if r.namespaced:
                merged["metadata"]["namespace"] = ns
            obj = strict_decode(encode(merged), r.type, f"{r.kind} after patch")
            try:
                new = self._merge(r, current, obj, "update", who)
                return await self._store_update(r, current, new, rev)
            except ApiError as err:
                if err.reason != "Conflict" or precondition or attempt + 1 == _CAS_RETRIES:
                    raise
        raise AssertionError("unreachable")

    # ---- delete -----------------------------------------------------------------------------------
    async def delete(self, r: Resource, body: bytes, node: str | None, who: str | None = None) -> bytes:
        req = strict_decode(body, DeleteRequest, "delete request")
        ns = self._ns(r, req.namespace)
        if node:
            nodeauth.check_request(node, r, "delete", ns, req.name)
        if req.grace_period_seconds is not None and req.grace_period_seconds < 0:
            raise ApiError("Invalid", "gracePeriodSeconds: must be greater than or equal to 0", field="gracePeriodSeconds")
        if r.name == "namespaces" and req.name in DEFAULT_NAMESPACES:
            raise ApiError("Forbidden", f'namespace "{req.name}" may not be deleted: the system needs it')
        if req.propagation_policy not in (None, "Background", "Foreground", "Orphan"):
            raise ApiError("BadRequest", f'propagationPolicy: Unsupported value: "{req.propagation_policy}": supported '
                                         "values: Background, Foreground, Orphan", field="propagationPolicy")
        for attempt in range(_CAS_RETRIES):
            obj, rev = await self._load_as(node, "delete", r, ns, req.name, cached=attempt == 0,
                                           at_least=req.resource_version)
            if req.resource_version and req.resource_version != str(rev):
                raise ApiError("Conflict", f'Operation cannot be fulfilled on {r.name} "{req.name}": the object has been modified')
            if req.uid and req.uid != obj.metadata.uid:
                raise ApiError("Conflict", f"Precondition failed: UID in precondition: {req.uid}, UID in object meta: {obj.metadata.uid}")
            try:
                return await self._delete_obj(r, obj, rev, req, who)
            except ApiError as err:
                if err.reason != "Conflict" or req.resource_version or attempt + 1 == _CAS_RETRIES:
                    raise
        raise AssertionError("unreachable")

    async def _delete_obj(self, r: Resource, obj: Any, rev: int, req: DeleteRequest, who: str | None = None) -> bytes:
        meta = obj.metadata
        key = r.key(meta.namespace, meta.name)
        changed = False
        finalizer = {"Foreground": "foregroundDeletion", "Orphan": "orphan"}.get(req.propagation_policy or "")
        if finalizer and finalizer not in meta.finalizers and not meta.deletion_timestamp:
            meta.finalizers = [*meta.finalizers, finalizer]
            changed = True
        # Only pods are deleted gracefully; `r.name == "pods" and ...` gave False (not None) for others.
        graceful = self._pod_grace(obj, req) if r.name == "pods" else None
        if graceful is not None:
            grace = graceful
            # Any int64 grace is valid, but datetime ends in year 9999: a century is as good as forever.
            deadline = (datetime.now(timezone.utc) + timedelta(seconds=min(grace, _MAX_GRACE_DEADLINE))
                        ).strftime("%Y-%m-%dT%H:%M:%SZ")
            if meta.deletion_timestamp is None or (meta.deletion_grace_period_seconds or 0) > grace:
                meta.deletion_timestamp = deadline
                meta.deletion_grace_period_seconds = grace
                changed = True
            return await self._marked(r, obj, rev, who) if changed else encode(obj)
        if meta.finalizers:
            if meta.deletion_timestamp is None:
                meta.deletion_timestamp = now_iso()
                meta.deletion_grace_period_seconds = 0
                changed = True
            if r.name == "namespaces" and obj.status.phase != "Terminating":
                obj.status.phase = "Terminating"
                changed = True
            return await self._marked(r, obj, rev, who) if changed else encode(obj)
        if r.name == "namespaces":
            # Namespaces drain first: mark Terminating; the sweep deletes the content, then the namespace.
            if meta.deletion_timestamp is None or obj.status.phase != "Terminating":
                meta.deletion_timestamp = meta.deletion_timestamp or now_iso()
                obj.status.phase = "Terminating"
                return await self._marked(r, obj, rev, who)
            return encode(obj)
        await self.log.delete(self.bucket(r), key, rev)
        if r.name == "services":
            await self.allocator.release_all(obj)
        return encode(obj)

    async def _marked(self, r: Resource, obj: Any, rev: int, who: str | None) -> bytes:
        """A delete that only marks the object (deletionTimestamp, finalizers) is a write like any other."""
        record_manager(obj.metadata, who, "Update", r.api_version)
        return await self._write(r, obj, rev)

    def _pod_grace(self, pod: Pod, req: DeleteRequest) -> int | None:
        """Seconds of graceful termination, or None when the pod goes at once (never ran, or grace 0)."""
        grace = req.grace_period_seconds
        if grace is None:
            grace = pod.spec.termination_grace_period_seconds if pod.spec.termination_grace_period_seconds is not None else 30
        if grace == 0 or not pod.spec.node_name or pod.status.phase in ("Succeeded", "Failed"):
            return None
        return grace

    # ---- bind / scale -----------------------------------------------------------------------------
    async def bind(self, r: Resource, body: bytes, node: str | None, who: str | None = None) -> bytes:
        req = strict_decode(body, BindRequest, "bind request")
        if node:
            raise nodeauth.forbidden(node, "bind", r, "node agents may not bind pods")
        ns = self._ns(r, req.namespace)
        if not req.node_name:
            raise ApiError("Invalid", "nodeName: Required value", field="nodeName")
        bad_node = dns1123_subdomain_error(req.node_name)
        if bad_node:
            raise ApiError("Invalid", f"nodeName: Invalid value {req.node_name!r}: {bad_node}", field="nodeName")
        for attempt in range(_CAS_RETRIES):
            pod, rev = await self._load(r, ns, req.name, cached=attempt == 0, at_least=req.resource_version)
            if req.resource_version and req.resource_version != str(rev):
                raise ApiError("Conflict", f'Operation cannot be fulfilled on pods "{req.name}": the object has been modified')
            if pod.spec.node_name:  # type: ignore[attr-defined]
                if pod.spec.node_name == req.node_name:  # type: ignore[attr-defined]
                    return encode(pod)  # a retried bind is not an error
                raise ApiError("Conflict", f'Operation cannot be fulfilled on pods/binding "{req.name}": pod {req.name} '
                                           f"is already assigned to node \"{pod.spec.node_name}\"")  # type: ignore[attr-defined]
            if pod.metadata.deletion_timestamp:
                raise ApiError("Conflict", f'pod "{req.name}" is being deleted, cannot be assigned to a host')
            pod.spec.node_name = req.node_name  # type: ignore[attr-defined]
            conds = [c for c in pod.status.conditions if c.type != "PodScheduled"]  # type: ignore[attr-defined]
            conds.append(Condition(type="PodScheduled", status="True", last_transition_time=now_iso()))
            pod.status.conditions = conds  # type: ignore[attr-defined]
            record_manager(pod.metadata, who, "Update", r.api_version, "binding")
            try:
                return await self._write(r, pod, rev)
            except ApiError as err:
                if err.reason != "Conflict" or req.resource_version or attempt + 1 == _CAS_RETRIES:
                    raise
        raise AssertionError("unreachable")

    async def scale(self, r: Resource, body: bytes, node: str | None, who: str | None = None) -> bytes:
        req = strict_decode(body, ScaleRequest, "scale request")
        if node:
            raise nodeauth.forbidden(node, "scale", r, "not allowed for node agents")
        if req.replicas < 0:
            raise ApiError("Invalid", "spec.replicas: must be greater than or equal to 0", field="spec.replicas")
        ns = self._ns(r, req.namespace)
        for attempt in range(_CAS_RETRIES):
            obj, rev = await self._load(r, ns, req.name, cached=attempt == 0, at_least=req.resource_version)
            if req.resource_version and req.resource_version != str(rev):
                raise ApiError("Conflict", f'Operation cannot be fulfilled on {r.name} "{req.name}": the object has been modified')
            if obj.spec.replicas == req.replicas:  # type: ignore[attr-defined]
                return encode(obj)
            obj.spec.replicas = req.replicas  # type: ignore[attr-defined]
            obj.metadata.generation = (obj.metadata.generation or 1) + 1
            record_manager(obj.metadata, who, "Update", r.api_version, "scale")
            try:
                return await self._write(r, obj, rev)
            except ApiError as err:
                if err.reason != "Conflict" or req.resource_version or attempt + 1 == _CAS_RETRIES:
                    raise
        raise AssertionError("unreachable")
