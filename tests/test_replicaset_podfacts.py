"""The replica controller's per-pod facts: judged once per (pod object, ReplicaSet spec), judged again
when either changes, so that remembering them never hides a change."""
from __future__ import annotations

import msgspec

from schemas import Pod, ReplicaSet
from schemas.selectors import selector_from_struct
from services.replicaset.podfacts import FactsCache


def _rs(generation: int, selector: dict[str, str], template_labels: dict[str, str]) -> ReplicaSet:
    return msgspec.convert({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": "rs", "namespace": "default", "uid": "rs-uid", "generation": generation},
        "spec": {"replicas": 1, "selector": {"matchLabels": selector},
                 "template": {"metadata": {"labels": template_labels}, "spec": {"containers": [{"name": "c", "image": "i"}]}}},
    }, ReplicaSet)


def _pod(labels: dict[str, str], ready: str | None = None, phase: str = "Running", deleting: bool = False) -> Pod:
    status: dict = {"phase": phase}
    if ready is not None:
        status["conditions"] = [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": ready}]
    meta: dict = {"name": "p", "namespace": "default", "uid": "pod-uid", "labels": labels}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return msgspec.convert({"apiVersion": "v1", "kind": "Pod", "metadata": meta,
                            "spec": {"containers": [{"name": "c", "image": "i"}]}, "status": status}, Pod)


def test_facts_are_judged_once_per_pod_object_and_spec() -> None:
    cache = FactsCache()
    rs = _rs(1, {"app": "a"}, {"app": "a", "tier": "web"})
    sel = selector_from_struct(rs.spec.selector)
    pod = _pod({"app": "a"}, ready="False")
    first = cache.of(pod, rs, sel)
    assert (first.matches, first.active, first.ready, first.labelled, first.terminating) == (True, True, False, False, False)
    assert cache.of(pod, rs, sel) is first  # the same object: remembered

    # The informer hands over a new object for the pod (it became ready, gained the label): judged again.
    newer = _pod({"app": "a", "tier": "web"}, ready="True")
    f = cache.of(newer, rs, sel)
    assert (f.ready, f.labelled) == (True, True)

    # A new spec (generation) with another selector: the same pod object is judged again.
    rs2 = _rs(2, {"app": "b"}, {"app": "b"})
    f2 = cache.of(newer, rs2, selector_from_struct(rs2.spec.selector))
    assert (f2.matches, f2.labelled) == (False, False)


def test_terminating_and_finished_pods_are_not_active() -> None:
    cache = FactsCache()
    rs = _rs(1, {"app": "a"}, {"app": "a"})
    sel = selector_from_struct(rs.spec.selector)
    assert not cache.of(_pod({"app": "a"}, deleting=True), rs, sel).active
    assert cache.of(_pod({"app": "a"}, deleting=True), rs, sel).terminating
    assert not cache.of(_pod({"app": "a"}, phase="Succeeded"), rs, sel).active
    assert not cache.of(_pod({"app": "a"}, phase="Failed"), rs, sel).active
    assert cache.of(_pod({"app": "a"}, phase="Pending"), rs, sel).active


def test_forgotten_and_pruned() -> None:
    cache = FactsCache()
    rs = _rs(1, {"app": "a"}, {"app": "a"})
    sel = selector_from_struct(rs.spec.selector)
    pod = _pod({"app": "a"})
    first = cache.of(pod, rs, sel)
    cache.forget("pod-uid")
    assert len(cache) == 0
    assert cache.of(pod, rs, sel) is not first
    cache.prune(live=0)  # well within bounds: kept
    assert len(cache) == 1
