"""The Deployment reconcile, after Kubernetes' deployment controller: find or create the ReplicaSet of
the current template, then roll (RollingUpdate within maxSurge/maxUnavailable, or Recreate), keep
`revisionHistoryLimit` old ReplicaSets, and report status with Available/Progressing conditions."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import msgspec

from schemas import (ApiError, Condition, Deployment, ObjectMeta, OwnerReference, Pod, ReplicaSet, ReplicaSetSpec,
                     now_iso, parse_time)
from schemas.base import LabelSelector
from schemas.selectors import SelectorError, selector_from_struct
from services.lib.client import Api
from services.lib.controller import Controller
from services.lib.events import EventRecorder
from services.lib.informer import Informer, by_namespace, object_key
from services.lib.log import get_logger
from services.lib.podutil import controller_of

from .revisions import (DESIRED, HASH_LABEL, MAX_REPLICAS, REVISION, resolve_fenceposts, revision, same_template,
                        template_hash)

log = get_logger("flotilla.deployment")


def _owner(d: Deployment) -> OwnerReference:
    return OwnerReference(api_version="apps/v1", kind="Deployment", name=d.metadata.name, uid=d.metadata.uid or "",
                          controller=True, block_owner_deletion=True)


def _spec_replicas(rss: list[ReplicaSet]) -> int:
    return sum(rs.spec.replicas or 0 for rs in rss)


def _available(rss: list[ReplicaSet]) -> int:
    return sum(rs.status.available_replicas or 0 for rs in rss)


def _oldest_first(rss: list[ReplicaSet]) -> list[ReplicaSet]:
    return sorted(rss, key=lambda rs: (rs.metadata.creation_timestamp or "", rs.metadata.name))


class DeploymentController:
    def __init__(self, api: Api, recorder: EventRecorder, workers: int = 4):
        self.api = api
        self.recorder = recorder
        self.deployments: Informer[Deployment] = Informer(api.deployments)
        self.replicasets: Informer[ReplicaSet] = Informer(api.replicasets)
        self.pods: Informer[Pod] = Informer(api.pods)
        self.deployments.add_index("namespace", by_namespace)
        self.replicasets.add_index("owner", lambda rs: [r.uid for r in rs.metadata.owner_references if r.controller])
        self.replicasets.add_index("namespace", by_namespace)
        self.pods.add_index("owner", lambda p: [r.uid for r in p.metadata.owner_references if r.controller])
        self.controller = Controller("deployment", self.sync, workers=workers)
        self.deployments.add_handlers(self._enqueue, lambda old, new: self._enqueue(new), self._enqueue)
        self.replicasets.add_handlers(self._rs_changed, lambda old, new: self._rs_changed(new), self._rs_changed)
        self.pods.add_handlers(None, None, self._pod_deleted)

    @property
    def informers(self) -> list[Informer]:
        return [self.deployments, self.replicasets, self.pods]

    def resync(self) -> None:
        for key in self.deployments.store:
            self.controller.enqueue(key)

    def _enqueue(self, d: Deployment) -> None:
        self.controller.enqueue(object_key(d))

    def _rs_changed(self, rs: ReplicaSet) -> None:
        ref = controller_of(rs)
        if ref is not None and ref.kind == "Deployment":
            self.controller.enqueue(f"{rs.metadata.namespace}/{ref.name}")
        elif ref is None:
            for d in self.deployments.by_index("namespace", rs.metadata.namespace or ""):
                self._enqueue(d)

    def _pod_deleted(self, pod: Pod) -> None:
        """Recreate waits for the old pods to be gone: their deletion wakes the Deployment."""
        ref = controller_of(pod)
        if ref is not None and ref.kind == "ReplicaSet":
            rs = self.replicasets.get(f"{pod.metadata.namespace}/{ref.name}")
            if rs is not None:
                self._rs_changed(rs)

    # ---- the reconcile ----------------------------------------------------------------------------
    async def sync(self, key: str) -> float | None:
        d = self.deployments.get(key)
        if d is None or d.metadata.deletion_timestamp:
            return None
        try:
            selector = selector_from_struct(d.spec.selector)
        except SelectorError as exc:
            log.warning("bad selector; skipping", deployment=key, error=str(exc))
            return None
        rss = await self._claim(d, selector)
        new_rs = next((rs for rs in rss if same_template(rs, d)), None)
        olds = [rs for rs in rss if rs is not new_rs]
        if d.spec.paused:
            return await self._sync_status(d, new_rs, olds, progressed=False)
        if new_rs is None:
            new_rs = await self._create_new_rs(d, olds)
            return await self._sync_status(d, new_rs, olds, progressed=True, reason="NewReplicaSetCreated")
        new_rs = await self._sync_revision(d, new_rs, olds)
        if (d.spec.strategy.type if d.spec.strategy else "RollingUpdate") == "Recreate":
            progressed = await self._recreate(d, new_rs, olds)
        else:
            progressed = await self._roll(d, new_rs, olds)
        if not progressed and self._complete(d, new_rs, olds):
            await self._cleanup(d, olds)
        return await self._sync_status(d, new_rs, olds, progressed=progressed)

    async def _claim(self, d: Deployment, selector) -> list[ReplicaSet]:
        owned = list(self.replicasets.by_index("owner", d.metadata.uid or ""))
        for rs in self.replicasets.by_index("namespace", d.metadata.namespace or ""):
            if controller_of(rs) is None and selector.matches(rs.metadata.labels) and not rs.metadata.deletion_timestamp:
                refs = [msgspec.to_builtins(r) for r in rs.metadata.owner_references] + [msgspec.to_builtins(_owner(d))]
                try:
                    owned.append(await self.api.replicasets.patch(rs.metadata.name, {"metadata": {
                        "ownerReferences": refs, "resourceVersion": rs.metadata.resource_version}},
                        rs.metadata.namespace))
                    log.info("adopted replicaset", deployment=object_key(d), replicaset=object_key(rs))
                except ApiError as exc:
                    if exc.reason not in ("Conflict", "NotFound"):
                        raise
        return [rs for rs in owned if not rs.metadata.deletion_timestamp]

    async def _create_new_rs(self, d: Deployment, olds: list[ReplicaSet]) -> ReplicaSet:
        collisions = d.status.collision_count or 0
        while True:
            h = template_hash(d.spec.template, collisions)
            template = msgspec.structs.replace(d.spec.template, metadata=msgspec.structs.replace(
                d.spec.template.metadata, labels={**d.spec.template.metadata.labels, HASH_LABEL: h}))
            selector = LabelSelector(match_labels={**d.spec.selector.match_labels, HASH_LABEL: h},
                                     match_expressions=d.spec.selector.match_expressions)
            rev = max((revision(rs) for rs in olds), default=0) + 1
            surge, _ = resolve_fenceposts(d)
            replicas = self._new_replicas(d, None, olds) if self._strategy(d) == "RollingUpdate" else 0
            rs = ReplicaSet(
                metadata=ObjectMeta(name=f"{d.metadata.name}-{h}", namespace=d.metadata.namespace,
                                    labels={**template.metadata.labels},
                                    annotations={REVISION: str(rev), DESIRED: str(d.spec.replicas or 0),
                                                 MAX_REPLICAS: str((d.spec.replicas or 0) + surge),
                                                 **{k: v for k, v in d.metadata.annotations.items()
                                                    if k.startswith("kubernetes.io/change-cause")}},
                                    owner_references=[_owner(d)]),
                spec=ReplicaSetSpec(replicas=replicas, min_ready_seconds=d.spec.min_ready_seconds,
                                    selector=selector, template=template))
            try:
                created = await self.api.replicasets.create(rs)
            except ApiError as exc:
                if exc.reason != "AlreadyExists":
                    raise
                existing = await self.api.replicasets.get(rs.metadata.name, d.metadata.namespace)
                if same_template(existing, d):
                    return existing  # ours from an earlier sync whose watch event is still on the way
                collisions += 1  # a different template hashed the same: Kubernetes bumps collisionCount
                d.status.collision_count = collisions
                continue
            log.info("created replicaset", deployment=object_key(d), replicaset=rs.metadata.name, revision=rev)
            await self.recorder.record(d, "Normal", "ScalingReplicaSet",
                                       f"Scaled up replica set {rs.metadata.name} from 0 to {replicas}")
            await self._set_deployment_revision(d, rev)
            return created

    async def _sync_revision(self, d: Deployment, new_rs: ReplicaSet, olds: list[ReplicaSet]) -> ReplicaSet:
        """A rollback makes an old ReplicaSet new again: it gets the next revision number."""
        top = max((revision(rs) for rs in olds), default=0)
        if revision(new_rs) <= top:
            new_rs = await self.api.replicasets.patch(new_rs.metadata.name, {"metadata": {"annotations": {
                REVISION: str(top + 1)}}}, new_rs.metadata.namespace)
        if d.metadata.annotations.get(REVISION) != str(revision(new_rs)):
            await self._set_deployment_revision(d, revision(new_rs))
        return new_rs

    async def _set_deployment_revision(self, d: Deployment, rev: int) -> None:
        try:
            await self.api.deployments.patch(d.metadata.name, {"metadata": {"annotations": {REVISION: str(rev)}}},
                                             d.metadata.namespace)
        except ApiError as exc:
            if exc.reason != "NotFound":
                raise

    def _strategy(self, d: Deployment) -> str:
        return d.spec.strategy.type if d.spec.strategy and d.spec.strategy.type else "RollingUpdate"

    # ---- rolling update ---------------------------------------------------------------------------
    def _new_replicas(self, d: Deployment, new_rs: ReplicaSet | None, olds: list[ReplicaSet]) -> int:
        want = d.spec.replicas or 0
        current_new = new_rs.spec.replicas or 0 if new_rs else 0
        if current_new >= want:
            return want
        surge, _ = resolve_fenceposts(d)
        total = _spec_replicas(olds) + current_new
        room = want + surge - total
        if room <= 0:
            return current_new
        return current_new + min(room, want - current_new)

    async def _scale(self, d: Deployment, rs: ReplicaSet, n: int) -> bool:
        if (rs.spec.replicas or 0) == n:
            return False
        await self.api.replicasets.scale(rs.metadata.name, n, rs.metadata.namespace)
        verb = "up" if n > (rs.spec.replicas or 0) else "down"
        await self.recorder.record(d, "Normal", "ScalingReplicaSet",
                                   f"Scaled {verb} replica set {rs.metadata.name} from {rs.spec.replicas or 0} to {n}")
        rs.spec.replicas = n  # what the rest of this sync must assume
        return True

    async def _roll(self, d: Deployment, new_rs: ReplicaSet, olds: list[ReplicaSet]) -> bool:
        if await self._scale(d, new_rs, self._new_replicas(d, new_rs, olds)):
            return True
        return await self._scale_down_olds(d, new_rs, olds)

    async def _scale_down_olds(self, d: Deployment, new_rs: ReplicaSet, olds: list[ReplicaSet]) -> bool:
        # Spec counts gate how far we may go; status counts (possibly stale) only ever hold us back.
        if _spec_replicas(olds) == 0:
            return False
        _, max_unavailable = resolve_fenceposts(d)
        min_available = (d.spec.replicas or 0) - max_unavailable
        all_rss = olds + [new_rs]
        new_unavailable = (new_rs.spec.replicas or 0) - (new_rs.status.available_replicas or 0)
        budget = _spec_replicas(all_rss) - min_available - new_unavailable
        if budget <= 0:
            return False
        scaled = False
        for rs in _oldest_first(olds):  # first the old pods that are not available anyway
            if budget <= 0:
                break
            unhealthy = (rs.spec.replicas or 0) - (rs.status.available_replicas or 0)
            if unhealthy <= 0:
                continue
            cut = min(unhealthy, budget)
            budget -= cut
            scaled |= await self._scale(d, rs, (rs.spec.replicas or 0) - cut)
        available = _available(all_rss)
        if available > min_available:
            left = available - min_available
            for rs in _oldest_first(olds):
                if left <= 0:
                    break
                if not rs.spec.replicas:
                    continue
                cut = min(rs.spec.replicas, left)
                left -= cut
                scaled |= await self._scale(d, rs, rs.spec.replicas - cut)
        return scaled

    # ---- recreate ---------------------------------------------------------------------------------
    async def _recreate(self, d: Deployment, new_rs: ReplicaSet, olds: list[ReplicaSet]) -> bool:
        scaled = False
        for rs in olds:
            scaled |= await self._scale(d, rs, 0)
        if scaled:
            return True
        old_pods = [p for rs in olds for p in self.pods.by_index("owner", rs.metadata.uid or "")]
        if any(not p.status.phase in ("Succeeded", "Failed") for p in old_pods):
            return False  # wait until every old pod is gone
        return await self._scale(d, new_rs, d.spec.replicas or 0)

    # ---- history and status -----------------------------------------------------------------------
    def _complete(self, d: Deployment, new_rs: ReplicaSet, olds: list[ReplicaSet]) -> bool:
        want = d.spec.replicas or 0
        return ((new_rs.status.replicas or 0) == want and (new_rs.status.available_replicas or 0) >= want
                and (new_rs.spec.replicas or 0) == want and all((rs.status.replicas or 0) == 0 for rs in olds)
                and _spec_replicas(olds) == 0)

    async def _cleanup(self, d: Deployment, olds: list[ReplicaSet]) -> None:
        limit = d.spec.revision_history_limit if d.spec.revision_history_limit is not None else 10
        idle = sorted((rs for rs in olds if not rs.spec.replicas and not rs.status.replicas), key=revision)
        for rs in idle[: max(0, len(idle) - limit)]:
            try:
                await self.api.replicasets.delete(rs.metadata.name, rs.metadata.namespace)
                log.info("deleted old replicaset", deployment=object_key(d), replicaset=rs.metadata.name)
            except ApiError as exc:
                if exc.reason != "NotFound":
                    raise

    async def _sync_status(self, d: Deployment, new_rs: ReplicaSet | None, olds: list[ReplicaSet], progressed: bool,
                           reason: str = "ReplicaSetUpdated") -> float | None:
        all_rss = olds + ([new_rs] if new_rs else [])
        want = d.spec.replicas or 0
        _, max_unavailable = resolve_fenceposts(d)
        old = d.status
        status = msgspec.structs.replace(old)
        status.observed_generation = d.metadata.generation
        status.replicas = sum(rs.status.replicas or 0 for rs in all_rss)
        status.updated_replicas = (new_rs.status.replicas or 0) if new_rs else 0
        status.ready_replicas = sum(rs.status.ready_replicas or 0 for rs in all_rss)
        status.available_replicas = _available(all_rss)
        status.unavailable_replicas = max(_spec_replicas(all_rss) - status.available_replicas, 0)
        now = datetime.now(timezone.utc)
        stamp = now_iso()
        conds = {c.type: c for c in old.conditions}

        def put(type_: str, value: str, why: str, message: str, touch: bool) -> None:
            prev = conds.get(type_)
            changed = prev is None or prev.status != value or prev.reason != why
            conds[type_] = Condition(
                type=type_, status=value, reason=why, message=message,
                last_transition_time=stamp if changed or prev is None else prev.last_transition_time,
                last_update_time=stamp if changed or touch or prev is None else prev.last_update_time)

        if status.available_replicas >= want - max_unavailable:
            put("Available", "True", "MinimumReplicasAvailable", "Deployment has minimum availability.", False)
        else:
            put("Available", "False", "MinimumReplicasUnavailable", "Deployment does not have minimum availability.", False)
        requeue: float | None = None
        name = new_rs.metadata.name if new_rs else ""
        deadline = d.spec.progress_deadline_seconds
        if d.spec.paused:
            put("Progressing", "Unknown", "DeploymentPaused", "Deployment is paused", False)
        elif new_rs is not None and self._complete(d, new_rs, olds):
            put("Progressing", "True", "NewReplicaSetAvailable", f'ReplicaSet "{name}" has successfully progressed.', False)
        else:
            more = progressed or (status.updated_replicas or 0) > (old.updated_replicas or 0) or \
                (status.available_replicas or 0) > (old.available_replicas or 0) or \
                (status.ready_replicas or 0) > (old.ready_replicas or 0)
            prev = conds.get("Progressing")
            if more or prev is None or prev.reason in ("NewReplicaSetAvailable", "DeploymentPaused", "DeploymentResumed"):
                put("Progressing", "True", reason if progressed else "ReplicaSetUpdated",
                    f'ReplicaSet "{name}" is progressing.', True)
            elif prev.reason != "ProgressDeadlineExceeded" and deadline:
                last = parse_time(prev.last_update_time or stamp)
                if now - last > timedelta(seconds=deadline):
                    put("Progressing", "False", "ProgressDeadlineExceeded",
                        f'ReplicaSet "{name}" has timed out progressing.', False)
                    await self.recorder.record(d, "Warning", "ProgressDeadlineExceeded",
                                               f'ReplicaSet "{name}" has timed out progressing.')
            cur = conds["Progressing"]
            if deadline and cur.reason != "ProgressDeadlineExceeded":
                last = parse_time(cur.last_update_time or stamp)
                requeue = max(0.5, deadline - (now - last).total_seconds() + 0.5)
        status.conditions = [conds[t] for t in ("Available", "Progressing") if t in conds] + \
            [c for c in old.conditions if c.type not in ("Available", "Progressing")]
        if msgspec.json.encode(status) != msgspec.json.encode(old):
            await self.api.deployments.put_status(d, status)
        return requeue


