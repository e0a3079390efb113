"""The ReplicaSet reconcile: claim pods (adopt matching orphans, release non-matching), create or
delete to reach spec.replicas under expectations and slow start, then write status."""
from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import msgspec

from schemas import ApiError, Condition, ObjectMeta, OwnerReference, Pod, ReplicaSet, now_iso
from schemas.selectors import SelectorError, selector_from_struct
from services.lib.client import Api
from services.lib.controller import Controller
from services.lib.events import EventRecorder
from services.lib.expectations import Expectations
from services.lib.informer import Informer, by_namespace, object_key
from services.lib.log import get_logger
from services.lib.podutil import controller_of, is_active, is_available

from .podfacts import FactsCache, PodFacts
from .ranking import pods_to_delete

log = get_logger("flotilla.replicaset")

BURST_REPLICAS = 500  # Kubernetes' burstReplicas: most creates or deletes per sync
SLOW_START_INITIAL = 1
# Pod changes that only move the status (bound, running, ready) are folded into one sync per period:
# a sync counts every pod of its ReplicaSet, so a sync per event is quadratic while thousands start.
# Changes that decide creates or deletes (expectations met, a pod leaving) still sync at once.
STATUS_BATCH_SECONDS = 0.25




def owner_ref(rs: ReplicaSet) -> OwnerReference:
    return OwnerReference(api_version="apps/v1", kind="ReplicaSet", name=rs.metadata.name, uid=rs.metadata.uid or "",
                          controller=True, block_owner_deletion=True)


class ReplicaSetController:
    def __init__(self, api: Api, recorder: EventRecorder, workers: int = 4, burst: int = BURST_REPLICAS,
                 status_batch: float = STATUS_BATCH_SECONDS):
        self.api = api
        self.recorder = recorder
        self.burst = burst
        self.status_batch = status_batch
        self.expectations = Expectations()
        self.facts = FactsCache()
        self.replicasets: Informer[ReplicaSet] = Informer(api.replicasets)
        self.pods: Informer[Pod] = Informer(api.pods)
        # A sync looks only at the pods it owns and at orphans it might adopt, not at the namespace.
        self.pods.add_index("owner", lambda p: [r.uid for r in p.metadata.owner_references if r.controller])
        self.pods.add_index("orphans", lambda p: [] if controller_of(p) else [p.metadata.namespace or ""])
        self.replicasets.add_index("namespace", by_namespace)
        self.controller = Controller("replicaset", self.sync, workers=workers)
        self.replicasets.add_handlers(self._rs_changed, self._rs_updated, self._rs_deleted)
        self.pods.add_handlers(self._pod_added, self._pod_updated, self._pod_deleted)

    @property
    def informers(self) -> list[Informer]:
        return [self.replicasets, self.pods]

    def resync(self) -> None:
        for key in self.replicasets.store:
            self.controller.enqueue(key)

    # ---- event handlers: find the ReplicaSet(s) a change concerns ---------------------------------
    def _rs_changed(self, rs: ReplicaSet) -> None:
        self.controller.enqueue(object_key(rs))

    def _rs_updated(self, old: ReplicaSet, new: ReplicaSet) -> None:
        if old.spec == new.spec and old.metadata.deletion_timestamp == new.metadata.deletion_timestamp:
            # Only the status moved, which is mostly this controller's own write coming back.
            self.controller.enqueue_batched(object_key(new), self.status_batch)
        else:
            self.controller.enqueue(object_key(new))

    def _rs_deleted(self, rs: ReplicaSet) -> None:
        key = object_key(rs)
        self.expectations.forget(key)
        self.controller.enqueue(key)

    def _owner_key(self, pod: Pod) -> str | None:
        ref = controller_of(pod)
        if ref is None or ref.kind != "ReplicaSet":
            return None
        key = f"{pod.metadata.namespace}/{ref.name}"
        rs = self.replicasets.get(key)
        return key if rs is not None and rs.metadata.uid == ref.uid else None

    def _matching_sets(self, pod: Pod) -> list[str]:
        keys = []
        for rs in self.replicasets.by_index("namespace", pod.metadata.namespace or ""):
            try:
                if selector_from_struct(rs.spec.selector).matches(pod.metadata.labels):
                    keys.append(object_key(rs))
            except SelectorError:
                continue
        return keys

    def _pod_added(self, pod: Pod) -> None:
        owner = self._owner_key(pod)
        if owner is not None:
            self.expectations.creation_observed(owner)
            if self.expectations.satisfied(owner) or not is_active(pod):
                self.controller.enqueue(owner)
            else:  # more of this batch of creates to come: only the status could change now
                self.controller.enqueue_batched(owner, self.status_batch)
        elif controller_of(pod) is None:
            for key in self._matching_sets(pod):  # an orphan: whoever matches may adopt it
                self.controller.enqueue(key)

    def _pod_updated(self, old: Pod, new: Pod) -> None:
        if new.metadata.deletion_timestamp and not old.metadata.deletion_timestamp:
            owner = self._owner_key(new)
            if owner is not None:
                self.expectations.deletion_observed(owner, new.metadata.uid or "")
        status_only = (is_active(old) and is_active(new) and old.metadata.labels == new.metadata.labels
                       and old.metadata.owner_references == new.metadata.owner_references)
        for pod in (old, new):
            owner = self._owner_key(pod)
            if owner is None:
                continue
            if status_only:
                self.controller.enqueue_batched(owner, self.status_batch)
            else:
                self.controller.enqueue(owner)
        if old.metadata.labels != new.metadata.labels and controller_of(new) is None:
            for key in self._matching_sets(new):
                self.controller.enqueue(key)

    def _pod_deleted(self, pod: Pod) -> None:
        self.facts.forget(pod.metadata.uid)
        owner = self._owner_key(pod)
        if owner is not None:
            self.expectations.deletion_observed(owner, pod.metadata.uid or "")
            self.controller.enqueue(owner)

    # ---- the reconcile ----------------------------------------------------------------------------
    async def sync(self, key: str) -> float | None:
        rs = self.replicasets.get(key)
        if rs is None:
            self.expectations.forget(key)
            return None
        try:
            selector = selector_from_struct(rs.spec.selector)
        except SelectorError as exc:
            log.warning("bad selector; skipping", replicaset=key, error=str(exc))
            return None
        self.facts.prune(len(self.pods.store))
        pods = await self._claim(rs, selector)
        active = [f for f in pods if f.active]
        want = rs.spec.replicas if rs.spec.replicas is not None else 1
        failure: str | None = None
        attempted = self.expectations.satisfied(key) and not rs.metadata.deletion_timestamp
        if attempted:
            failure = await self._manage(key, rs, active, want)
        return await self._update_status(rs, pods, active, failure, attempted)

    async def _claim(self, rs: ReplicaSet, selector) -> list[PodFacts]:
        """The pods this ReplicaSet owns after adopting matching orphans and releasing non-matching ones."""
        owned: list[PodFacts] = []
        facts = self.facts
        for pod in self.pods.by_index("owner", rs.metadata.uid or ""):
            f = facts.of(pod, rs, selector)
            if f.terminating or f.matches:
                owned.append(f)
            else:
                await self._release(rs, pod)
        if rs.metadata.deletion_timestamp:
            return owned
        for pod in self.pods.by_index("orphans", rs.metadata.namespace or ""):
            if not pod.metadata.deletion_timestamp and selector.matches(pod.metadata.labels):
                adopted = await self._adopt(rs, pod)
                if adopted is not None:
                    owned.append(facts.of(adopted, rs, selector))
        return owned

    async def _adopt(self, rs: ReplicaSet, pod: Pod) -> Pod | None:
        refs = [msgspec.to_builtins(r) for r in pod.metadata.owner_references] + [msgspec.to_builtins(owner_ref(rs))]
        try:
            adopted = await self.api.pods.patch(pod.metadata.name, {"metadata": {
                "ownerReferences": refs, "resourceVersion": pod.metadata.resource_version}}, pod.metadata.namespace)
        except ApiError as exc:
            if exc.reason in ("Conflict", "NotFound"):
                return None  # changed meanwhile: the next sync sees it as it is
            raise
        log.info("adopted pod", replicaset=object_key(rs), pod=object_key(pod))
        return adopted

    async def _release(self, rs: ReplicaSet, pod: Pod) -> None:
        refs = [msgspec.to_builtins(r) for r in pod.metadata.owner_references if r.uid != rs.metadata.uid]
        try:
            await self.api.pods.patch(pod.metadata.name, {"metadata": {
                "ownerReferences": refs or None, "resourceVersion": pod.metadata.resource_version}},
                pod.metadata.namespace)
            log.info("released pod", replicaset=object_key(rs), pod=object_key(pod))
        except ApiError as exc:
            if exc.reason not in ("Conflict", "NotFound"):
                raise

    async def _manage(self, key: str, rs: ReplicaSet, active: list[PodFacts], want: int) -> str | None:
        diff = len(active) - want
        if diff < 0:
            n = min(-diff, self.burst)
            self.expectations.expect_creations(key, n)
            created, failure = await self._slow_start_create(key, rs, n)
            if created:
                log.info("created pods", replicaset=key, count=created, want=want)
            return failure
        if diff > 0:
            victims = pods_to_delete([f.pod for f in active], min(diff, self.burst))
            self.expectations.expect_deletions(key, [p.metadata.uid or "" for p in victims])
            async with asyncio.TaskGroup() as tg:
                for p in victims:
                    tg.create_task(self._delete(key, p))
            log.info("deleted pods", replicaset=key, count=len(victims), want=want)
        return None

    async def _slow_start_create(self, key: str, rs: ReplicaSet, n: int) -> tuple[int, str | None]:
        """Create in batches 1, 2, 4, …: a template that always fails costs one call, not n."""
        created, batch, failure = 0, SLOW_START_INITIAL, None
        while created < n:
            size = min(batch, n - created)
            results = await asyncio.gather(*(self._create(rs) for _ in range(size)))
            errors = [r for r in results if r is not None]
            created += size - len(errors)
            if errors:
                failure = errors[0]
                for _ in range(n - created):  # neither failed nor skipped creates will be observed
                    self.expectations.creation_observed(key)
                await self.recorder.record(rs, "Warning", "FailedCreate", f"Error creating: {failure}")
                break
            batch *= 2
        return created, failure

    async def _create(self, rs: ReplicaSet) -> str | None:
        template = rs.spec.template
        meta = ObjectMeta(generate_name=f"{rs.metadata.name}-", namespace=rs.metadata.namespace,
                          labels=dict(template.metadata.labels), annotations=dict(template.metadata.annotations),
                          owner_references=[owner_ref(rs)])
        try:
            await self.api.pods.create(Pod(metadata=meta, spec=template.spec))
        except ApiError as exc:
            return exc.message
        return None

    async def _delete(self, key: str, pod: Pod) -> None:
        try:
            await self.api.pods.delete(pod.metadata.name, pod.metadata.namespace)
        except ApiError as exc:
            self.expectations.deletion_observed(key, pod.metadata.uid or "")
            if exc.reason != "NotFound":
                raise

    async def _update_status(self, rs: ReplicaSet, pods: list[PodFacts], active: list[PodFacts],
                             failure: str | None, attempted: bool) -> float | None:
        now = datetime.now(timezone.utc)
        min_ready = rs.spec.min_ready_seconds or 0
        ready = [f for f in active if f.ready]
        available = len(ready) if not min_ready else sum(1 for f in ready if is_available(f.pod, min_ready, now))
        status = msgspec.structs.replace(rs.status)
        status.replicas = len(active)
        status.fully_labeled_replicas = sum(1 for f in active if f.labelled)
        status.ready_replicas = len(ready)
        status.available_replicas = available
        status.terminating_replicas = sum(1 for f in pods if f.terminating)
        status.observed_generation = rs.metadata.generation
        conditions = [c for c in rs.status.conditions if c.type != "ReplicaFailure"]
        old = next((c for c in rs.status.conditions if c.type == "ReplicaFailure"), None)
        if failure:
            conditions.append(Condition(type="ReplicaFailure", status="True", reason="FailedCreate", message=failure,
                                        last_transition_time=old.last_transition_time if old else now_iso()))
        elif old is not None and not attempted:
            conditions.append(old)  # no create was tried this time: the last verdict stands
        status.conditions = conditions
        if msgspec.json.encode(status) != msgspec.json.encode(rs.status):
            await self.api.replicasets.put_status(rs, status)
        # Pods that are ready but not yet available become available with time, not with an event.
        if min_ready and available < len(ready):
            return float(min_ready)
        return None
