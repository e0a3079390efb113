"""The scheduler against a real API server: filters, scores, unschedulable pods, leader failover.

Nodes here are "hollow": Node objects registered through the API with a Ready condition and no
agent behind them, which is all the scheduler sees of a node anyway.
"""
from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import ApiError, Condition, Node, NodeSpec, NodeStatus, ObjectMeta, Pod, Taint
from schemas.quantity import cpu_millis, to_int
from services.lib.events import EventRecorder
from services.lib.leader import LeaderElector
from services.scheduler.cache import SchedulerCache
from services.scheduler.podinfo import pod_info
from services.scheduler.scheduler import Scheduler, feasible_nodes_to_find


def node_obj(name: str, cpu: str = "4", memory: str = "8Gi", pods: str = "110", labels: dict | None = None,
             taints: list[Taint] | None = None, ready: bool = True, unschedulable: bool = False) -> Node:
    alloc = {"cpu": cpu, "memory": memory, "pods": pods}
    return Node(metadata=ObjectMeta(name=name, labels=labels or {}),
                spec=NodeSpec(taints=taints or [], unschedulable=unschedulable or None),
                status=NodeStatus(capacity=alloc, allocatable=alloc,
                                  conditions=[Condition(type="Ready", status="True" if ready else "False")]))


def pod_body(name: str, cpu: str | None = None, memory: str | None = None, **spec: Any) -> dict:
    requests = {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v}
    container: dict[str, Any] = {"name": "c", "image": "img", "resources": {"requests": requests}}
    if "host_port" in spec:
        container["ports"] = [{"containerPort": 80, "hostPort": spec.pop("host_port")}]
    metadata = {"name": name, **spec.pop("metadata", {})}
    return {"metadata": metadata, "spec": {"containers": [container], **spec}}


async def wait_bound(api, names: list[str], wait_for, timeout: float = 30.0) -> dict[str, str]:
    async def check():
        pods = {p.metadata.name: p.spec.node_name for p in (await api.pods.list()).items}
        return pods if all(pods.get(n) for n in names) else None
    return await wait_for(check, timeout, f"pods {names[:5]}... bound")


def assert_not_overcommitted(nodes: list[Node], pods: list[Pod]) -> None:
    alloc = {n.metadata.name: (cpu_millis(n.status.allocatable["cpu"]), to_int(n.status.allocatable["memory"]),
                               to_int(n.status.allocatable["pods"])) for n in nodes}
    used: dict[str, list[int]] = {name: [0, 0, 0] for name in alloc}
    for p in pods:
        if p.spec.node_name:
            info = pod_info(p.metadata.name, p)
            u = used[p.spec.node_name]
            u[0] += info.cpu
            u[1] += info.memory
            u[2] += 1
    for name, (cpu, mem, count) in alloc.items():
        u = used[name]
        assert u[0] <= cpu and u[1] <= mem and u[2] <= count, f"{name} overcommitted: used {u}, allocatable {(cpu, mem, count)}"


# ---- the decision logic alone: a property over random clusters --------------------------------------

@settings(max_examples=150, deadline=None)
@given(nodes=st.lists(st.tuples(st.integers(1, 8000), st.integers(64, 16384), st.integers(1, 20)), min_size=1, max_size=12),
       pods=st.lists(st.tuples(st.integers(0, 3000), st.integers(0, 4096)), min_size=1, max_size=80))
def test_fit_never_overcommits(nodes: list[tuple[int, int, int]], pods: list[tuple[int, int]]) -> None:
    node_objs = [node_obj(f"n{i}", f"{c}m", f"{m}Mi", str(p)) for i, (c, m, p) in enumerate(nodes)]
    sched = Scheduler.__new__(Scheduler)  # only the decision logic: no API, no informers
    sched.cache, sched.percentage, sched._next_start = SchedulerCache(), 0, 0
    for n in node_objs:
        sched.cache.upsert_node(n)
    placed: list[Pod] = []
    for i, (cpu, mem) in enumerate(pods):
        pod = Pod(**{"metadata": ObjectMeta(name=f"p{i}")})
        body = pod_body(f"p{i}", f"{cpu}m" if cpu else None, f"{mem}Mi" if mem else None)
        import msgspec
        pod = msgspec.convert(body, Pod)
        info = pod_info(f"default/p{i}", pod)
        node, why = sched.find_node(info)
        if node is None:
            assert why.startswith(f"0/{len(nodes)} nodes are available")
            # really nothing fits: no node has room for it
            assert all(n.cpu + info.cpu > n.alloc_cpu or n.memory + info.memory > n.alloc_memory
                       or len(n.pods) + 1 > n.alloc_pods for n in sched.cache.node_list)
            continue
        sched.cache.assume(info, node.name)
        pod.spec.node_name = node.name
        placed.append(pod)
    assert_not_overcommitted(node_objs, placed)


def test_sampling_follows_kubernetes() -> None:
    assert feasible_nodes_to_find(50, 0) == 50
    assert feasible_nodes_to_find(1000, 0) == 420  # 50% - 1000/125 = 42%
    assert feasible_nodes_to_find(5000, 0) == 500  # 10%
    assert feasible_nodes_to_find(100_000, 0) == 5000  # the 5% floor
    assert feasible_nodes_to_find(1000, 100) == 1000


# ---- against real services ----------------------------------------------------------------------------

@pytest.fixture
async def cluster(api, start_service, wait_for):
    start_service("scheduler", "--identity", "sched-a", "--initial-backoff", "0.2", "--max-backoff", "1")
    return api


async def test_random_pods_fit_and_nothing_is_overcommitted(cluster, wait_for) -> None:
    api = cluster
    rng = random.Random(7)
    nodes = [node_obj(f"node-{i}", f"{rng.choice([1, 2, 4])}", f"{rng.choice([1, 2, 4])}Gi", "20") for i in range(6)]
    for n in nodes:
        await api.nodes.create(n)
    names = []
    for i in range(60):
        names.append(f"r{i}")
        await api.pods.create(pod_body(f"r{i}", f"{rng.choice([100, 250, 500, 900])}m", f"{rng.choice([64, 128, 512])}Mi"))

    async def settled():
        pods = (await api.pods.list()).items
        waiting = [p for p in pods if not p.spec.node_name]
        # settled when every pod is bound or says why it is not
        ok = all(any(c.type == "PodScheduled" and c.status == "False" for c in p.status.conditions) for p in waiting)
        return pods if ok and len(pods) == 60 else None

    pods = await wait_for(settled, 30, "every pod bound or marked unschedulable")
    assert sum(1 for p in pods if p.spec.node_name) >= 20
    assert_not_overcommitted(nodes, pods)


async def test_selectors_affinity_taints_and_host_ports(cluster, wait_for) -> None:
    api = cluster
    await api.nodes.create(node_obj("ssd-1", labels={"disk": "ssd", "gen": "5"}))
    await api.nodes.create(node_obj("hdd-1", labels={"disk": "hdd", "gen": "3"}))
    await api.nodes.create(node_obj("gpu-1", labels={"disk": "ssd", "gen": "9"},
                                    taints=[Taint(key="gpu", value="true", effect="NoSchedule")]))
    await api.nodes.create(node_obj("cordoned", labels={"disk": "ssd"}, unschedulable=True))
    await api.nodes.create(node_obj("notready", labels={"disk": "ssd"}, ready=False))
    await api.pods.create(pod_body("by-selector", nodeSelector={"disk": "hdd"}))
    await api.pods.create(pod_body("by-affinity", affinity={"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "gen", "operator": "Gt", "values": ["4"]},
                                                    {"key": "disk", "operator": "In", "values": ["ssd"]}]}]}}}))
    await api.pods.create(pod_body("tolerates-gpu", nodeSelector={"gen": "9"},
                                   tolerations=[{"key": "gpu", "operator": "Equal", "value": "true", "effect": "NoSchedule"}]))
    await api.pods.create(pod_body("untolerated-gpu", nodeSelector={"gen": "9"}))
    await api.pods.create(pod_body("port-a", host_port=8080, nodeSelector={"disk": "hdd"}))
    await api.pods.create(pod_body("port-b", host_port=8080, nodeSelector={"disk": "hdd"}))
    bound = await wait_bound(api, ["by-selector", "by-affinity", "tolerates-gpu", "port-a"], wait_for)
    assert bound["by-selector"] == "hdd-1"
    assert bound["by-affinity"] in ("ssd-1", "gpu-1") and bound["by-affinity"] == "ssd-1"  # gpu-1 is tainted
    assert bound["tolerates-gpu"] == "gpu-1"

    async def reasons():
        pods = {p.metadata.name: p for p in (await api.pods.list()).items}
        out = {}
        for n in ("untolerated-gpu", "port-b"):
            cond = next((c for c in pods[n].status.conditions if c.type == "PodScheduled" and c.status == "False"), None)
            if cond is None or pods[n].spec.node_name:
                return None
            out[n] = cond.message
        return out

    why = await wait_for(reasons, 15, "unschedulable reasons")
    assert "untolerated taint {gpu: true}" in why["untolerated-gpu"]
    assert "didn't match Pod's node affinity/selector" in why["untolerated-gpu"]
    assert "free ports" in why["port-b"]
    assert bound.get("port-b") is None
    events = (await api.events.list(field_selector="involvedObject.name=untolerated-gpu")).items
    assert any(e.reason == "FailedScheduling" for e in events)


async def test_pods_of_one_owner_spread_over_nodes(cluster, wait_for) -> None:
    api = cluster
    for i in range(3):
        await api.nodes.create(node_obj(f"spread-{i}"))
    owner = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "rs-uid-1", "controller": True}
    names = [f"web-{i}" for i in range(9)]
    for n in names:
        await api.pods.create(pod_body(n, "100m", metadata={"ownerReferences": [owner]}))
    bound = await wait_bound(api, names, wait_for)
    counts = {f"spread-{i}": 0 for i in range(3)}
    for n in names:
        counts[bound[n]] += 1
    assert sorted(counts.values()) == [3, 3, 3], counts


async def test_unschedulable_pod_waits_and_lands_when_a_node_joins(api, wait_for) -> None:
    """The scheduler runs in this process (against the real bus and API server) so that its periodic
    flush of unschedulable pods can be switched off: the waiting pod can then only be retried because
    the node joined, which no wall-clock bound could tell apart from the flush."""
    elector = LeaderElector(api, "flotilla-scheduler", "sched-inproc", lease_duration=5.0, renew_deadline=3.5,
                            retry_period=1.0)
    sched = Scheduler(api, elector, EventRecorder(api, "default-scheduler", "sched-inproc"),
                      initial_backoff=0.2, max_backoff=1.0)
    sched.queue.flush_unschedulable = float("inf")
    async with asyncio.TaskGroup() as tg:
        running = tg.create_task(sched.run())
        await api.nodes.create(node_obj("small", cpu="1"))
        await api.pods.create(pod_body("big", "3"))

        async def reported():
            p = await api.pods.get("big")
            c = next((c for c in p.status.conditions if c.type == "PodScheduled"), None)
            return c if c is not None and c.status == "False" else None

        cond = await wait_for(reported, 30, "PodScheduled=False on the big pod")
        assert cond.reason == "Unschedulable"
        assert cond.message == "0/1 nodes are available: 1 Insufficient cpu."
        # Parked until the cluster changes: nothing else would retry it now.
        await wait_for(lambda: sched.queue.pending_unschedulable == 1, 30, "the big pod parked as unschedulable")
        assert not (await api.pods.get("big")).spec.node_name
        await api.nodes.create(node_obj("large", cpu="8"))
        bound = await wait_bound(api, ["big"], wait_for, timeout=60)
        assert bound["big"] == "large"
        assert sched.queue.pending_unschedulable == 0
        running.cancel()


@pytest.mark.slow
async def test_leader_killed_with_2000_pending_pods(api, start_service, connect_api, wait_for) -> None:
    """2000 pods; the first 20 nodes hold 1000 of them (50 pods each). The leader binds those, the
    other 1000 wait as unschedulable; the leader is killed; 20 more nodes join; the standby (which
    must count the old leader's binds) binds the rest: all bound exactly once, nothing overcommitted."""
    first = [node_obj(f"hollow-{i}", cpu="16", memory="64Gi", pods="50") for i in range(20)]
    second = [node_obj(f"hollow-{i}", cpu="16", memory="64Gi", pods="50") for i in range(20, 40)]
    leader = start_service("scheduler", "--identity", "sched-1", "--lease-duration", "5")

    async def led_by_sched_1() -> bool:  # the standby starts only once sched-1 holds the lease
        try:
            return (await api.leases.get("flotilla-scheduler", "flotilla-system")).spec.holder_identity == "sched-1"
        except ApiError as exc:
            if exc.reason != "NotFound":
                raise
            return False
    await wait_for(led_by_sched_1, 60, "sched-1 to take the scheduler lease")
    standby = start_service("scheduler", "--identity", "sched-2", "--lease-duration", "5")

    watcher = await connect_api()
    history: dict[str, list[str | None]] = {}
    seen_rv = (await watcher.pods.list()).resource_version

    async def record():
        async for type_, pod in watcher.pods.watch(resource_version=seen_rv):
            history.setdefault(pod.metadata.name, []).append(pod.spec.node_name)

    async def bound_count() -> int:
        return sum(1 for p in (await api.pods.list()).items if p.spec.node_name)

    async with asyncio.TaskGroup() as tg:
        rec = tg.create_task(record())
        sem = asyncio.Semaphore(64)

        async def create(i: int) -> None:
            async with sem:
                await api.pods.create(pod_body(f"load-{i}", "100m", "64Mi"))
        for n in first:
            await api.nodes.create(n)
        await asyncio.gather(*(create(i) for i in range(2000)))
        await wait_for(lambda: bound_count_is(api, 1000), 60, "the leader to fill the first 20 nodes")
        lease = await api.leases.get("flotilla-scheduler", "flotilla-system")
        assert lease.spec.holder_identity == "sched-1"
        leader.kill()
        killed_at = time.monotonic()
        for n in second:
            await api.nodes.create(n)

        async def all_bound():
            pods = (await api.pods.list()).items
            return pods if len(pods) == 2000 and all(p.spec.node_name for p in pods) else None
        pods = await wait_for(all_bound, 90, "all 2000 pods bound")
        took = time.monotonic() - killed_at
        lease = await api.leases.get("flotilla-scheduler", "flotilla-system")
        assert lease.spec.holder_identity == "sched-2"
        await asyncio.sleep(1)
        rec.cancel()
    assert standby.alive
    assert_not_overcommitted(first + second, pods)
    for name, seq in history.items():  # bound exactly once: from no node to one node, never moved
        assigned = [n for n in seq if n]
        assert len(set(assigned)) == 1, f"{name} moved between nodes: {seq}"
    assert await bound_count() == 2000
    print(f"the standby bound the other 1000 pods; all bound {took:.1f}s after the leader was killed")


async def bound_count_is(api, n: int) -> bool:
    return sum(1 for p in (await api.pods.list()).items if p.spec.node_name) >= n
