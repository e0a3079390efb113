"""Each invariant fires against a deliberately broken state (a checker that cannot fail proves
nothing), and stays quiet on a healthy one. The pure checks get hand-made snapshots; the snapshot
itself, the ledger and the lease tracker work against a real API server."""
from __future__ import annotations

import random
from typing import Any

import msgspec
import pytest

from flotilla.chaos import invariants as inv
from flotilla.chaos.invariants import LeaseTracker, Snapshot
from flotilla.chaos.ledger import LEDGER_NAMESPACE, Ledger
from flotilla.chaos.run import take_snapshot
from schemas import Deployment, Endpoints, Lease, Node, Pod, ReplicaSet, Service

NS = "chaos"


def node(name: str, cpu: str = "2", memory: str = "4Gi", pods: str = "110") -> Node:
    alloc = {"cpu": cpu, "memory": memory, "pods": pods}
    return msgspec.convert({"metadata": {"name": name}, "status": {"allocatable": alloc, "capacity": alloc}}, Node)


def pod(name: str, node_name: str, ip: str, *, ready: bool = True, cpu: str = "100m", rs_uid: str = "rs-1") -> Pod:
    return msgspec.convert({
        "metadata": {"name": name, "namespace": NS, "labels": {"app": "web"},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-1",
                                          "uid": rs_uid, "controller": True}]},
        "spec": {"nodeName": node_name, "containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}]},
        "status": {"phase": "Running", "podIP": ip,
                   "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}, Pod)


def healthy(**changes: Any) -> Snapshot:
    rs = msgspec.convert({"metadata": {"name": "web-1", "namespace": NS, "uid": "rs-1",
                                       "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                                                            "name": "web", "uid": "d-1", "controller": True}]},
                          "spec": {"replicas": 2}, "status": {"replicas": 2, "readyReplicas": 2}}, ReplicaSet)
    dep = msgspec.convert({"metadata": {"name": "web", "namespace": NS, "uid": "d-1", "generation": 3},
                           "spec": {"replicas": 2},
                           "status": {"observedGeneration": 3, "replicas": 2, "updatedReplicas": 2,
                                      "readyReplicas": 2, "availableReplicas": 2}}, Deployment)
    svc = msgspec.convert({"metadata": {"name": "web", "namespace": NS},
                           "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}, Service)
    ep = msgspec.convert({"metadata": {"name": "web", "namespace": NS},
                          "subsets": [{"addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}],
                                       "ports": [{"port": 8080}]}]}, Endpoints)
    fields = dict(namespace=NS, nodes=[node("n1"), node("n2")],
                  pods=[pod("web-a", "n1", "10.0.0.1"), pod("web-b", "n2", "10.0.0.2")],
                  deployments=[dep], replicasets=[rs], services=[svc], endpoints=[ep])
    fields.update(changes)
    return Snapshot(**fields)


def kinds(found: list[inv.Violation]) -> set[str]:
    return {v.invariant for v in found}


def test_a_healthy_snapshot_has_no_violations() -> None:
    snap = healthy()
    assert inv.safety(snap) == [] and inv.liveness(snap) == []


def test_a_pod_on_a_missing_node_fires() -> None:
    snap = healthy(nodes=[node("n1")])
    found = inv.pods_on_missing_nodes(snap)
    assert kinds(found) == {inv.NODE_EXISTS} and "web-b" in found[0].detail


@pytest.mark.parametrize("resource,limits", [("cpu", {"cpu": "150m"}), ("memory", {"memory": "1Ki"}),
                                             ("pods", {"pods": "0"})])
def test_an_overcommitted_node_fires(resource: str, limits: dict[str, str]) -> None:
    small = node("n1", **limits)
    found = inv.overcommitted_nodes(healthy(nodes=[small, node("n2")],
                                            pods=[pod("web-a", "n1", "10.0.0.1", cpu="200m")]))
    if resource == "memory":  # the pod asks for no memory: give it some
        p = pod("web-a", "n1", "10.0.0.1")
        p.spec.containers[0].resources.requests["memory"] = "1Mi"
        found = inv.overcommitted_nodes(healthy(nodes=[small, node("n2")], pods=[p]))
    assert kinds(found) == {inv.NOT_OVERCOMMITTED} and resource in found[0].detail


@pytest.mark.parametrize("broken,says", [("pod-not-ready", "1 ready of 2 pods"), ("pod-missing", "1 ready of 1 pods"),
                                         ("extra-pod", "3 ready of 3 pods"), ("status-behind", "not observed yet"),
                                         ("two-live-rs", "2 ReplicaSets with replicas")])
def test_an_unconverged_workload_fires(broken: str, says: str) -> None:
    snap = healthy()
    if broken == "pod-not-ready":
        snap.pods[1] = pod("web-b", "n2", "10.0.0.2", ready=False)
    elif broken == "pod-missing":
        snap.pods.pop()
    elif broken == "extra-pod":
        snap.pods.append(pod("web-c", "n2", "10.0.0.3"))
    elif broken == "status-behind":
        snap.deployments[0].status.observed_generation = 2
    elif broken == "two-live-rs":
        old = msgspec.structs.replace(snap.replicasets[0], metadata=msgspec.structs.replace(
            snap.replicasets[0].metadata, name="web-0", uid="rs-0"))
        snap.replicasets.append(old)
    found = inv.unconverged_workloads(snap)
    assert kinds(found) == {inv.WORKLOAD_CONVERGED}
    assert any(says in v.detail for v in found), found


def test_endpoints_that_differ_from_the_ready_pods_fire() -> None:
    stale = healthy()
    stale.endpoints[0].subsets[0].addresses.pop()
    assert kinds(inv.endpoints_mismatches(stale)) == {inv.ENDPOINTS_MATCH}
    not_ready = healthy()
    not_ready.pods[0] = pod("web-a", "n1", "10.0.0.1", ready=False)
    assert kinds(inv.endpoints_mismatches(not_ready)) == {inv.ENDPOINTS_MATCH}
    missing = healthy(endpoints=[])
    assert kinds(inv.endpoints_mismatches(missing)) == {inv.ENDPOINTS_MATCH}


def lease(holder: str | None, transitions: int, rv: int, name: str = "flotilla-scheduler") -> Lease:
    return msgspec.convert({"metadata": {"name": name, "namespace": "flotilla-system", "resourceVersion": str(rv)},
                            "spec": {"holderIdentity": holder, "leaseTransitions": transitions}}, Lease)


def test_leader_changes_must_come_with_a_new_term() -> None:
    ok = LeaseTracker()
    for state in (lease("a", 0, 1), lease("a", 0, 2), lease("b", 1, 3), lease("a", 2, 4)):
        assert ok.observe([state]) == []
    assert ok.holder("flotilla-system/flotilla-scheduler") == "a"

    silent = LeaseTracker()
    silent.observe([lease("a", 0, 1)])
    found = silent.observe([lease("b", 0, 2)])
    assert kinds(found) == {inv.ONE_LEADER_PER_TERM} and "without a leaseTransitions increase" in found[0].detail

    back = LeaseTracker()
    back.observe([lease("a", 0, 5)])
    assert kinds(back.observe([lease("a", 0, 4)])) == {inv.ONE_LEADER_PER_TERM}

    older = LeaseTracker()  # a holder change that takes an older term than the one seen before
    older.observe([lease("a", 2, 1)])
    assert kinds(older.observe([lease("b", 1, 2)])) == {inv.ONE_LEADER_PER_TERM}


async def test_a_snapshot_of_a_real_api_shows_a_pod_bound_to_a_missing_node(api) -> None:
    await api.namespaces.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    await api.nodes.create(node("n1"))
    await api.pods.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "lost", "namespace": NS},
                           "spec": {"nodeName": "ghost", "containers": [{"name": "c", "image": "x"}]}})
    await api.pods.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "fine", "namespace": "default"},
                           "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "x"}]}})
    snap, _leases = await take_snapshot(api, NS)
    found = inv.safety(snap)
    assert [(v.invariant, "chaos/lost" in v.detail) for v in found] == [(inv.NODE_EXISTS, True)]


async def test_the_ledger_sees_a_write_lost_behind_its_back(api, connect_api) -> None:
    await api.namespaces.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": LEDGER_NAMESPACE}})
    ledger = Ledger(api, random.Random(1), objects=4)
    for _ in range(40):
        await ledger.step()
    assert ledger.acked == 40 and ledger.violations == []
    assert await ledger.verify() == []
    live = sorted(e.name for e in ledger.entries.values() if not e.deleted)
    assert len(live) >= 2

    other = await connect_api()  # another client, as a bug in the store would be
    await other.leases.delete(live[0], LEDGER_NAMESPACE)
    # An acknowledged value the store no longer has: a rollback.
    ledger.entries[live[1]].value += 5
    found = await ledger.verify()
    assert {(v.invariant, v.detail.split()[1]) for v in found} == {
        (inv.ACKED_WRITES_KEPT, f"{LEDGER_NAMESPACE}/{live[0]}"), (inv.ACKED_WRITES_KEPT, f"{LEDGER_NAMESPACE}/{live[1]}")}
    assert "gone" in next(v.detail for v in found if live[0] in v.detail)
    assert "rolled back" in next(v.detail for v in found if live[1] in v.detail)
