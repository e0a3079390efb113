"""The chaos harness's large case: hollow nodes (one process of many fake nodes whose pods run
nothing) beside the real agents, a `bulk` Deployment that may only land on them, and faults that hit
the hollow process, silencing every hollow node at once (a zone-level outage for the node lifecycle
controller, which must not evict everything). The pure checks get hand-made snapshots; the runs use
a whole suite of real processes."""
from __future__ import annotations

import sys
from pathlib import Path

import msgspec
import pytest

from flotilla.chaos import invariants as inv
from flotilla.chaos.invariants import Snapshot
from flotilla.chaos.report import Report
from flotilla.chaos.run import Options, bulk_pods, declared_mismatch, hollow_not_ready, run_chaos
from flotilla.chaos.schedule import HOLLOW, KILL, PAUSE, SCALE_UP, Fault, make_schedule
from flotilla.chaos.targets import HOLLOW_PREFIX, harness_specs
from flotilla.chaos.workload import BULK, HOLLOW_POOL, NAME, POOL_LABEL, REAL_POOL, Workload
from flotilla.commands.chaos import dry_run_names
from schemas import Deployment, Node, Pod, ReplicaSet

NS = "chaos"
HOLLOW_NODES = 50


def node(name: str, pool: str, ready: str = "True") -> Node:
    alloc = {"cpu": "4", "memory": "8Gi", "pods": "110"}
    return msgspec.convert({"metadata": {"name": name, "labels": {POOL_LABEL: pool}},
                            "status": {"allocatable": alloc, "capacity": alloc,
                                       "conditions": [{"type": "Ready", "status": ready}]}}, Node)


def pod(name: str, app: str, node_name: str, *, ready: bool = True, uid: str | None = None) -> Pod:
    pool = HOLLOW_POOL if app == BULK else REAL_POOL
    return msgspec.convert({
        "metadata": {"name": name, "namespace": NS, "uid": uid or f"uid-{name}", "labels": {"app": app},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": f"{app}-1",
                                          "uid": f"rs-{app}", "controller": True}]},
        "spec": {"nodeName": node_name, "nodeSelector": {POOL_LABEL: pool},
                 "containers": [{"name": "c", "resources": {"requests": {"cpu": "10m"}}}]},
        "status": {"phase": "Running", "podIP": f"10.0.{len(name)}.{sum(map(ord, name)) % 250}",
                   "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}, Pod)


def workload_objects(app: str, replicas: int) -> tuple[Deployment, ReplicaSet]:
    rs = msgspec.convert({"metadata": {"name": f"{app}-1", "namespace": NS, "uid": f"rs-{app}",
                                       "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                                                            "name": app, "uid": f"d-{app}", "controller": True}]},
                          "spec": {"replicas": replicas}}, ReplicaSet)
    dep = msgspec.convert({"metadata": {"name": app, "namespace": NS, "uid": f"d-{app}", "generation": 1},
                           "spec": {"replicas": replicas, "template": {"spec": {"containers": [
                               {"name": "c", "env": [{"name": "CHAOS_REVISION", "value": "1"}]}]}}},
                           "status": {"observedGeneration": 1, "replicas": replicas, "updatedReplicas": replicas,
                                      "readyReplicas": replicas, "availableReplicas": replicas}}, Deployment)
    return dep, rs


def large(bulk: list[Pod] | None = None, nodes: list[Node] | None = None, bulk_replicas: int = 4) -> Snapshot:
    """Two real nodes with web's 2 pods, two hollow nodes with bulk's pods (4 unless given)."""
    web_d, web_rs = workload_objects(NAME, 2)
    bulk_d, bulk_rs = workload_objects(BULK, bulk_replicas)
    if bulk is None:
        bulk = [pod(f"bulk-{i}", BULK, f"{HOLLOW_PREFIX}{i % 2}") for i in range(4)]
    return Snapshot(namespace=NS,
                    nodes=nodes or [node("node-1", REAL_POOL), node("node-2", REAL_POOL),
                                    node(f"{HOLLOW_PREFIX}0", HOLLOW_POOL), node(f"{HOLLOW_PREFIX}1", HOLLOW_POOL)],
                    pods=[pod("web-a", NAME, "node-1"), pod("web-b", NAME, "node-2"), *bulk],
                    deployments=[web_d, bulk_d], replicasets=[web_rs, bulk_rs], services=[], endpoints=[])


def test_a_healthy_large_snapshot_has_no_violations() -> None:
    snap = large()
    assert inv.safety(snap) == [] and inv.liveness(snap) == []


def test_bulk_not_converged_fires() -> None:
    # Two of bulk's four pods gone (evicted, not yet replaced) and one of the rest not Ready.
    bulk = [pod("bulk-0", BULK, f"{HOLLOW_PREFIX}0"), pod("bulk-1", BULK, f"{HOLLOW_PREFIX}1", ready=False)]
    found = inv.unconverged_workloads(large(bulk=bulk))
    assert found and all(v.invariant == inv.WORKLOAD_CONVERGED for v in found)
    assert any("replicaset chaos/bulk-1: 1 ready of 2 pods, 4 desired" in v.detail for v in found), found
    # web is healthy: only bulk is named.
    assert not any("web" in v.detail for v in found), found


def test_bulk_not_what_was_declared_fires() -> None:
    w = Workload(api=None, hollow_nodes=2)  # type: ignore[arg-type]  # only what it declared is read
    w.bulk_replicas = 4
    assert declared_mismatch(large(), w) == []
    w.bulk_replicas = 5  # the harness scaled bulk up; the API still says 4
    found = declared_mismatch(large(), w)
    assert [v.invariant for v in found] == [inv.WORKLOAD_CONVERGED] and "deployment bulk" in found[0].detail
    missing = large()
    missing.deployments = [d for d in missing.deployments if d.metadata.name != BULK]
    w.bulk_replicas = 4
    assert [v.detail for v in declared_mismatch(missing, w)] == ["deployment bulk missing"]


def test_a_pod_on_a_node_its_selector_does_not_match_fires() -> None:
    # bulk on a real agent (it would need a process there), web on a hollow node (it would run nothing).
    snap = large(bulk=[pod(f"bulk-{i}", BULK, f"{HOLLOW_PREFIX}0") for i in range(3)] + [pod("bulk-3", BULK, "node-1")])
    snap.pods[0].spec.node_name = f"{HOLLOW_PREFIX}1"
    found = inv.safety(snap)
    assert {v.invariant for v in found} == {inv.NODE_SELECTOR_HELD}
    assert sorted(v.detail.split()[1] for v in found) == ["chaos/bulk-3", "chaos/web-a"], found


def test_hollow_outage_and_bulk_replacement_are_measured() -> None:
    down = [node("node-1", REAL_POOL), node("node-2", REAL_POOL), node(f"{HOLLOW_PREFIX}0", HOLLOW_POOL, "Unknown"),
            node(f"{HOLLOW_PREFIX}1", HOLLOW_POOL, "Unknown")]
    assert sorted(hollow_not_ready(large(nodes=down))) == [f"{HOLLOW_PREFIX}0", f"{HOLLOW_PREFIX}1"]
    assert hollow_not_ready(large()) == []
    before = bulk_pods(large())
    after = bulk_pods(large(bulk=[pod("bulk-0", BULK, f"{HOLLOW_PREFIX}0"), pod("bulk-9", BULK, f"{HOLLOW_PREFIX}0")]))
    assert len(before - after) == 3


def test_the_large_suite_has_a_hollow_process_and_labels_on_both_sides() -> None:
    specs = {s.name: s for s in harness_specs("nats://127.0.0.1:4222", Path("/nonexistent"), nodes=2, apiservers=1,
                                              log_level="info", hollow_nodes=7)}
    hollow = specs[HOLLOW].argv
    assert hollow[hollow.index("--count") + 1] == "7"
    assert hollow[hollow.index("--heartbeat-seconds") + 1] == "2"  # not the hollow default of 10 s: flapping
    assert hollow[hollow.index("--node-labels") + 1] == f"{POOL_LABEL}={HOLLOW_POOL}"
    for agent in ("nodeagent-1", "nodeagent-2"):
        argv = specs[agent].argv
        assert argv[argv.index("--node-labels") + 1] == f"{POOL_LABEL}={REAL_POOL}"
    # Without hollow nodes the suite is what it was.
    plain = harness_specs("nats://127.0.0.1:4222", Path("/nonexistent"), nodes=2, apiservers=1, log_level="info")
    assert HOLLOW not in {s.name for s in plain} and not any("--node-labels" in s.argv for s in plain)


def test_the_hollow_process_is_a_fault_target_of_the_schedule() -> None:
    names = dry_run_names(2, 2, HOLLOW_NODES)
    assert HOLLOW in names
    faults = make_schedule(181, 100, names, min_gap=2, max_gap=6)
    # Never a node-kill: killing every hollow node for good leaves bulk nowhere to run.
    assert any(f.target == HOLLOW and f.kind == KILL for f in faults[:3])
    assert not any(f.target == HOLLOW and f.kind == "node-kill" for f in faults)


def assert_clean(report: Report) -> None:
    assert report.violations == [], [f"{v.invariant}: {v.detail}" for v in report.violations]
    assert report.faults and all(f.converged for f in report.faults), [f for f in report.faults if not f.converged]
    assert report.ok


@pytest.mark.slow
@pytest.mark.timeout(900)  # a fault that never converges waits out its converge timeout
async def test_a_seeded_run_with_hollow_nodes_converges(tmp_path: Path) -> None:
    # Seed 181 (for 2 agents, 2 API servers, the hollow process) starts with a kill -9 of the hollow
    # process during a scale-up (bulk 100 -> 125) and then a pause of it.
    opts = Options(seed=181, duration=60, nodes=2, hollow_nodes=HOLLOW_NODES, state_dir=tmp_path / "suite",
                   report=tmp_path / "r.json", settle=10, converge_timeout=120, min_gap=2, max_gap=6)
    report = await run_chaos(opts, sys.stdout)
    assert_clean(report)
    hit = [f for f in report.faults if f.process == HOLLOW]
    assert any(f.kind == KILL for f in hit) and any(f.kind == PAUSE for f in hit), report.faults
    assert report.restarts[HOLLOW] >= 1
    scaled = next(f for f in report.faults if f.during == SCALE_UP)
    assert "bulk 100 -> 125" in (scaled.workload or "")


@pytest.mark.slow
@pytest.mark.timeout(900)  # a fault that never converges waits out its converge timeout
async def test_every_hollow_node_silent_at_once_is_not_a_mass_eviction(tmp_path: Path) -> None:
    # The hollow process stopped for longer than the grace (10 s) plus the toleration (10 s): all its
    # nodes go Unknown together while the real agents stay Ready. That is one zone (no zone labels)
    # mostly disrupted: the node lifecycle controller taints at its secondary rate (0.1/s for a zone of
    # more than 50 nodes), not all 50 at once, and once the nodes are back the workload converges.
    schedule = [Fault(index=1, kind=PAUSE, target=HOLLOW, gap=1.0, hold=30.0)]
    opts = Options(seed=3, duration=600, nodes=2, hollow_nodes=HOLLOW_NODES, state_dir=tmp_path / "suite",
                   schedule=schedule, settle=8, converge_timeout=120)
    report = await run_chaos(opts, sys.stdout)
    assert_clean(report)
    fault = report.faults[0]
    assert fault.hollow_not_ready_peak == HOLLOW_NODES  # the whole "zone" went dark ...
    # ... and was not evicted wholesale: at most a few nodes' pods (2 each) were replaced.
    assert fault.bulk_pods_replaced <= 10, fault
