"""The invariants, as pure functions of one snapshot of the cluster (so that each can be shown to fire
against a broken state without breaking a cluster), and the lease tracker that watches terms.

Safety invariants must hold at every instant: a pod bound to a node that does not exist, an
overcommitted node, a pod on a node its nodeSelector does not match, two leaders in one term.
Liveness invariants (workload converged, Endpoints equal the ready pods) may be red while a fault
is being healed; the harness measures how long until they are green again, and reports one that
stays red past its deadline.
"""
from __future__ import annotations

import msgspec

from schemas import Deployment, Endpoints, Lease, Node, Pod, ReplicaSet, Service
from schemas.quantity import amount_of
from services.lib.podutil import controller_of, is_active, is_ready

NODE_EXISTS = "pod-on-existing-node"
NOT_OVERCOMMITTED = "node-not-overcommitted"
NODE_SELECTOR_HELD = "pod-on-a-node-it-selects"
WORKLOAD_CONVERGED = "workload-converged"
ENDPOINTS_MATCH = "endpoints-equal-ready-pods"
ACKED_WRITES_KEPT = "acknowledged-writes-kept"
ONE_LEADER_PER_TERM = "one-leader-per-term"
NO_ERROR_LOOP = "no-error-loop-in-logs"
FAULT_CONVERGED = "fault-converged"
SERVICES_RUNNING = "services-running"
SERVICE_ANSWERS = "service-answers"


class Violation(msgspec.Struct, frozen=True):
    invariant: str
    detail: str


class Snapshot(msgspec.Struct, kw_only=True):
    """What the checks look at. `namespace` is the workload's: Deployments, ReplicaSets, Services and
    Endpoints are judged there only (another tenant's half-made objects are not ours to judge), while
    pods and nodes are cluster-wide (overcommit counts every pod on a node)."""
    namespace: str
    nodes: list[Node]
    pods: list[Pod]
    deployments: list[Deployment]
    replicasets: list[ReplicaSet]
    services: list[Service]
    endpoints: list[Endpoints]


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _key(obj: Pod | Deployment | ReplicaSet | Service) -> str:
    return f"{obj.metadata.namespace}/{obj.metadata.name}"


def pods_on_missing_nodes(snap: Snapshot) -> list[Violation]:
    names = {n.metadata.name for n in snap.nodes}
    return [Violation(NODE_EXISTS, f"pod {_key(p)} is bound to node {p.spec.node_name!r}, which does not exist")
            for p in snap.pods if p.spec.node_name and p.spec.node_name not in names]


def overcommitted_nodes(snap: Snapshot) -> list[Violation]:
    """Requests of the pods bound to each node (those still holding resources: not finished; a pod
    being deleted still runs until its agent stops it) against the node's allocatable."""
    used: dict[str, list[int]] = {}
    for p in snap.pods:
        if not p.spec.node_name or p.status.phase in ("Succeeded", "Failed"):
            continue
        cpu = sum(amount_of(c.resources.requests, "cpu", True) for c in p.spec.containers)
        mem = sum(amount_of(c.resources.requests, "memory", False) for c in p.spec.containers)
        acc = used.setdefault(p.spec.node_name, [0, 0, 0])
        acc[0] += cpu
        acc[1] += mem
        acc[2] += 1
    out = []
    for n in snap.nodes:
        if n.metadata.name not in used:
            continue
        alloc = n.status.allocatable or n.status.capacity
        cpu, mem, count = used[n.metadata.name]
        limits = {"cpu": (cpu, amount_of(alloc, "cpu", True)), "memory": (mem, amount_of(alloc, "memory", False)),
                  "pods": (count, amount_of(alloc, "pods", False))}
        for resource, (want, have) in limits.items():
            if resource in alloc and want > have:
                out.append(Violation(NOT_OVERCOMMITTED,
                                     f"node {n.metadata.name}: pods request {want} {resource}, allocatable {have}"))
    return out


def pods_off_their_selector(snap: Snapshot) -> list[Violation]:
    """A bound pod's nodeSelector matches its node's labels: the large case keeps `bulk` on hollow
    nodes and `web` on the real agents by selectors alone, so a scheduler that ignored them (or a node
    that lost its label) would put real processes on a node that runs none, or the reverse."""
    labels = {n.metadata.name: n.metadata.labels for n in snap.nodes}
    out = []
    for p in snap.pods:
        have = labels.get(p.spec.node_name or "")
        if have is None or not p.spec.node_selector:
            continue  # unbound, or on a missing node (pods_on_missing_nodes says so)
        wrong = {k: v for k, v in p.spec.node_selector.items() if have.get(k) != v}
        if wrong:
            out.append(Violation(NODE_SELECTOR_HELD, f"pod {_key(p)} selects {wrong} but is bound to node "
                                 f"{p.spec.node_name}, labelled {({k: have.get(k) for k in wrong})}"))
    return out


def unconverged_workloads(snap: Snapshot) -> list[Violation]:
    """Every Deployment has its desired number of ready pods, all of its newest template, and every
    ReplicaSet its desired number of ready pods (no more: a surplus or a leftover old pod is red too)."""
    pods = [p for p in snap.pods if p.metadata.namespace == snap.namespace and is_active(p)]
    out = []
    for rs in snap.replicasets:
        if rs.metadata.namespace != snap.namespace or rs.metadata.deletion_timestamp:
            continue
        want = rs.spec.replicas if rs.spec.replicas is not None else 1
        owned = [p for p in pods if (ref := controller_of(p)) is not None and ref.uid == rs.metadata.uid]
        ready = sum(1 for p in owned if is_ready(p))
        if len(owned) != want or ready != want:
            out.append(Violation(WORKLOAD_CONVERGED,
                                 f"replicaset {_key(rs)}: {ready} ready of {len(owned)} pods, {want} desired"))
    for d in snap.deployments:
        if d.metadata.namespace != snap.namespace or d.metadata.deletion_timestamp:
            continue
        want = d.spec.replicas if d.spec.replicas is not None else 1
        st = d.status
        if (st.observed_generation or 0) < (d.metadata.generation or 0):
            out.append(Violation(WORKLOAD_CONVERGED, f"deployment {_key(d)}: generation "
                                 f"{d.metadata.generation} not observed yet ({st.observed_generation})"))
            continue
        counts = (st.replicas or 0, st.updated_replicas or 0, st.ready_replicas or 0, st.available_replicas or 0)
        if counts != (want,) * 4:
            out.append(Violation(WORKLOAD_CONVERGED, f"deployment {_key(d)}: replicas/updated/ready/available "
                                 f"{'/'.join(map(str, counts))}, {want} desired"))
        owners = [rs for rs in snap.replicasets if any(r.uid == d.metadata.uid and r.controller
                                                       for r in rs.metadata.owner_references)]
        live = [rs for rs in owners if (rs.spec.replicas or 0) > 0]
        if want and len(live) != 1:
            out.append(Violation(WORKLOAD_CONVERGED, f"deployment {_key(d)}: {len(live)} ReplicaSets with replicas "
                                 f"({', '.join(sorted(rs.metadata.name for rs in live))})"))
    return out


def endpoints_mismatches(snap: Snapshot) -> list[Violation]:
    pods = [p for p in snap.pods if p.metadata.namespace == snap.namespace and is_active(p)]
    by_name = {e.metadata.name: e for e in snap.endpoints if e.metadata.namespace == snap.namespace}
    out = []
    for svc in snap.services:
        if svc.metadata.namespace != snap.namespace or not svc.spec.selector:
            continue
        want = {p.status.pod_ip for p in pods
                if _matches(svc.spec.selector, p.metadata.labels) and is_ready(p) and p.status.pod_ip}
        ep = by_name.get(svc.metadata.name)
        have = {a.ip for s in ep.subsets for a in s.addresses} if ep else set()
        if want != have:
            out.append(Violation(ENDPOINTS_MATCH, f"service {_key(svc)}: endpoints {sorted(have)}, "
                                 f"ready pods {sorted(want)}"))
    return out


def safety(snap: Snapshot) -> list[Violation]:
    return pods_on_missing_nodes(snap) + overcommitted_nodes(snap) + pods_off_their_selector(snap)


def liveness(snap: Snapshot) -> list[Violation]:
    return unconverged_workloads(snap) + endpoints_mismatches(snap)


class _Term(msgspec.Struct):
    holder: str | None
    transitions: int
    rv: int


class LeaseTracker:
    """Leader leases as seen over time. A change of holder must come with a leaseTransitions increase
    (the term): else two holders could both act in one term. Checking each change against the last
    one seen covers changes between two polls too, since the count only ever goes up. And a lease
    never goes back to an older version."""

    def __init__(self) -> None:
        self.last: dict[str, _Term] = {}

    def observe(self, leases: list[Lease]) -> list[Violation]:
        out = []
        for lease in leases:
            name = f"{lease.metadata.namespace}/{lease.metadata.name}"
            now = _Term(lease.spec.holder_identity, lease.spec.lease_transitions or 0,
                        int(lease.metadata.resource_version or 0))
            before = self.last.get(name)
            if before is not None:
                if now.rv < before.rv:
                    out.append(Violation(ONE_LEADER_PER_TERM, f"lease {name} went back from version "
                                         f"{before.rv} to {now.rv}"))
                    continue
                if now.holder != before.holder and now.holder and now.transitions <= before.transitions:
                    out.append(Violation(ONE_LEADER_PER_TERM, f"lease {name}: holder {before.holder} -> {now.holder} "
                                         f"without a leaseTransitions increase ({before.transitions} -> "
                                         f"{now.transitions})"))
            self.last[name] = now
        return out

    def holder(self, name: str) -> str | None:
        term = self.last.get(name)
        return term.holder if term else None
