"""What a sync needs to know of each pod, remembered per pod object.

Every sync counts all the pods of its ReplicaSet (claim, active, ready, fully labelled), and while
thousands of pods start a busy ReplicaSet syncs several times a second: judging every pod afresh each
time made the replica controller's CPU grow with the square of the scale. A pod's facts only change
when the informer hands over a new object for it, or when the ReplicaSet's spec (selector, template
labels) changes, which bumps its generation: so they are judged once per (pod object, spec).
"""
from __future__ import annotations

import msgspec

from schemas import Pod, ReplicaSet
from schemas.selectors import Selector
from services.lib.podutil import is_ready


class PodFacts(msgspec.Struct, gc=False):
    pod: Pod
    spec: tuple[str, int]  # (ReplicaSet uid, generation) the judgement was made against
    terminating: bool  # being deleted
    matches: bool  # the ReplicaSet's selector matches the pod's labels
    active: bool  # counts toward replicas: not being deleted, not finished
    ready: bool
    labelled: bool  # carries every label of the ReplicaSet's template


class FactsCache:
    def __init__(self) -> None:
        self._by_uid: dict[str, PodFacts] = {}

    def of(self, pod: Pod, rs: ReplicaSet, selector: Selector) -> PodFacts:
        uid = pod.metadata.uid or ""
        spec = (rs.metadata.uid or "", rs.metadata.generation or 0)
        f = self._by_uid.get(uid)
        if f is not None and f.pod is pod and f.spec == spec:
            return f
        meta = pod.metadata
        terminating = bool(meta.deletion_timestamp)
        f = PodFacts(
            pod=pod, spec=spec, terminating=terminating,
            matches=selector.matches(meta.labels),
            active=not terminating and pod.status.phase not in ("Succeeded", "Failed"),
            ready=is_ready(pod),
            labelled=rs.spec.template.metadata.labels.items() <= meta.labels.items())
        self._by_uid[uid] = f
        return f

    def forget(self, uid: str | None) -> None:
        self._by_uid.pop(uid or "", None)

    def prune(self, live: int) -> None:
        """Pods that left without a delete event (a relist) would otherwise be remembered forever."""
        if len(self._by_uid) > 2 * live + 1000:
            self._by_uid.clear()

    def __len__(self) -> int:
        return len(self._by_uid)
