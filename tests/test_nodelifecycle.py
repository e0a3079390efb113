"""The node lifecycle controller end to end, every part a real process: API server, scheduler,
replica controller, `python -m services.nodelifecycle`, and real node agents (or, where the test
plays the agent, hand-written Nodes and Leases it renews itself)."""
from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client

from schemas import NODE_LEASE_NAMESPACE, ApiError, Condition, Lease, Node, ObjectMeta, Pod, Taint, now_micro
from schemas.cluster import NodeSpec, NodeStatus
from schemas.workloads import LeaseSpec
from services.lib.client import Api
from test_nodeagent_support import Cluster, alive, condition, container_pid, cstatus, unique

NOT_READY = "node.kubernetes.io/not-ready"
UNREACHABLE = "node.kubernetes.io/unreachable"
# Fast enough for tests, slow enough for a loaded machine: a 1 s heartbeat has 4 beats of slack.
GRACE = "4"
TOLERATION = "2"
SLEEPER = ["python3", "-c", "import time\nwhile True: time.sleep(1)"]


@pytest.fixture
async def cluster(apiserver: Any, nc: Client, tmp_path: Path, start_service: Any,
                  wait_for: Any) -> AsyncIterator[Cluster]:
    await apiserver(1, "--default-not-ready-toleration-seconds", TOLERATION,
                    "--default-unreachable-toleration-seconds", TOLERATION)
    c = Cluster(Api(nc), nc, tmp_path, start_service, wait_for)
    try:
        yield c
    finally:
        await asyncio.to_thread(c.cleanup)


def start_nodelifecycle(c: Cluster, *flags: str) -> Any:
    return c.start_service("nodelifecycle", "--identity", unique("nlc"), "--lease-duration", "2",
                           "--node-monitor-period", "0.5", *flags)


def start_workload_controllers(c: Cluster) -> None:
    for svc in ("scheduler", "replicaset"):
        c.start_service(svc, "--identity", unique(svc), "--lease-duration", "2")


def taints(node: Node) -> set[tuple[str, str]]:
    return {(t.key, t.effect) for t in node.spec.taints}


def health_taints(node: Node) -> set[tuple[str, str]]:
    return {t for t in taints(node) if t[0] in (NOT_READY, UNREACHABLE)}


async def rs_pods(api: Api, app: str) -> list[Pod]:
    return (await api.pods.list("default", label_selector=f"app={app}")).items


async def make_rs(api: Api, app: str, replicas: int) -> None:
    await api.replicasets.create({
        "apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": app},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": app}},
                 "template": {"metadata": {"labels": {"app": app}}, "spec": {
                     "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "main", "command": SLEEPER}]}}}})


def ready_elsewhere(pods: list[Pod], avoid: str, n: int) -> bool:
    live = [p for p in pods if not p.metadata.deletion_timestamp]
    return len(live) == n and all(p.spec.node_name != avoid and condition(p, "Ready") == "True" for p in live)


async def spread(c: Cluster, app: str, n: int) -> tuple[str, list[Pod]]:
    """Wait until the n replicas are Ready; the node holding most of them and its pods."""
    async def ready() -> list[Pod] | None:
        pods = await rs_pods(c.api, app)
        ok = [p for p in pods if condition(p, "Ready") == "True" and not p.metadata.deletion_timestamp]
        return ok if len(ok) == n else None

    pods = await c.wait_for(ready, 90, f"{n} ready replicas of {app}", interval=0.2)
    counts: dict[str, int] = {}
    for p in pods:
        counts[p.spec.node_name or ""] = counts.get(p.spec.node_name or "", 0) + 1
    victim = max(sorted(counts), key=lambda k: counts[k])
    return victim, [p for p in pods if p.spec.node_name == victim]


# ---- real node agents ----------------------------------------------------------------------------

async def test_killed_agent_node_goes_unknown_pods_not_ready_then_replaced_elsewhere_and_podgc(
        apiserver, nc, tmp_path, start_service, wait_for) -> None:
    """(a) with the fast defaults (grace 10 s, toleration 10 s, heartbeat 2 s), then (g): deleting
    the dead Node force-deletes the pods left Terminating on it."""
    await apiserver(1)
    c = Cluster(Api(nc), nc, tmp_path, start_service, wait_for)
    try:
        api = c.api
        start_workload_controllers(c)
        c.start_service("nodelifecycle", "--identity", unique("nlc"), "--lease-duration", "2")
        agents = [c.agent(unique("nl"), "--heartbeat-seconds", "2") for _ in range(3)]
        for a in agents:
            await a.ready(30)
        await make_rs(api, "web", 4)
        victim, doomed = await spread(c, "web", 4)
        agent = next(a for a in agents if a.node == victim)
        killed = time.monotonic()
        agent.kill9()

        async def unknown() -> Node | None:
            node = await api.nodes.get(victim)
            return node if condition(node, "Ready") == "Unknown" and \
                health_taints(node) == {(UNREACHABLE, "NoSchedule"), (UNREACHABLE, "NoExecute")} else None

        node = await wait_for(unknown, 40, "victim Ready=Unknown with unreachable taints", interval=0.2)
        ready = next(cd for cd in node.status.conditions if cd.type == "Ready")
        assert ready.reason == "NodeStatusUnknown" and ready.message == "Node agent stopped posting node status"

        async def not_ready() -> bool:
            pods = [await c.pod(p.metadata.name) for p in doomed]
            return all(p is None or (condition(p, "Ready") == "False"
                                     and not any(s.ready for s in p.status.container_statuses)) for p in pods)

        # Toleration 10 s: the pods are marked not Ready well before they are evicted.
        await wait_for(not_ready, 10, "the dead node's pods Ready=False", interval=0.2)

        async def healed() -> bool:
            return ready_elsewhere(await rs_pods(api, "web"), victim, 4)

        await wait_for(healed, 90, "4 ready replicas on the other nodes", interval=0.2)
        took = time.monotonic() - killed
        print(f"\nMEASURED kill -9 of a node agent -> all replicas Ready elsewhere: {took:.1f}s")
        stuck = [p for p in await rs_pods(api, "web") if p.spec.node_name == victim]
        assert stuck and all(p.metadata.deletion_timestamp for p in stuck)  # Terminating: no agent to confirm

        # (g) PodGC: the Node object goes, and with it the pods bound to it, at once.
        await api.nodes.delete(victim)

        async def swept() -> bool:
            return not [p for p in await rs_pods(api, "web") if p.spec.node_name == victim]

        await wait_for(swept, 20, "the dead node's pods force-deleted", interval=0.2)
        assert ready_elsewhere(await rs_pods(api, "web"), victim, 4)
    finally:
        await asyncio.to_thread(c.cleanup)


async def test_node_that_comes_back_stops_the_pods_evicted_meanwhile(cluster: Cluster, wait_for) -> None:
    """(f) SIGSTOP an agent past grace + toleration: its pods are evicted and replaced elsewhere;
    SIGCONT: its old pods' processes end, they are gone from the API, the RS has exactly N."""
    c, api = cluster, cluster.api
    start_workload_controllers(c)
    start_nodelifecycle(c, "--node-monitor-grace-period", GRACE)
    # Status reports far apart: after SIGCONT only the agent's overdue beat can undo Ready=Unknown.
    agents = [c.agent(unique("nl"), "--node-status-seconds", "600") for _ in range(2)]
    for a in agents:
        await a.ready(30)
    await make_rs(api, "back", 4)
    victim, doomed = await spread(c, "back", 4)
    pids = [container_pid(cstatus(p).container_id) for p in doomed]
    assert all(pids), pids
    agent = next(a for a in agents if a.node == victim)
    agent.proc.signal(signal.SIGSTOP)
    try:
        async def healed() -> bool:
            return ready_elsewhere(await rs_pods(api, "back"), victim, 4)

        await wait_for(healed, 60, "4 ready replicas on the other node", interval=0.2)
        assert all(alive(pid) for pid in pids)  # the paused agent has not stopped them yet
    finally:
        agent.proc.signal(signal.SIGCONT)

    await wait_for(lambda: not any(alive(pid) for pid in pids), 30, "the evicted pods' processes ended")

    async def gone() -> bool:
        return not [p for p in await rs_pods(api, "back") if p.spec.node_name == victim]

    await wait_for(gone, 30, "the evicted pods gone from the API", interval=0.2)

    async def healthy_again() -> bool:
        node = await api.nodes.get(victim)
        return condition(node, "Ready") == "True" and not health_taints(node)

    await wait_for(healthy_again, 30, "the node that came back Ready without health taints", interval=0.2)
    await asyncio.sleep(3)  # a resurrected pod or a surplus replica would show by now
    pods = await rs_pods(api, "back")
    assert len(pods) == 4 and ready_elsewhere(pods, victim, 4), [(p.metadata.name, p.spec.node_name) for p in pods]


# ---- hand-written nodes: the test plays the agents -------------------------------------------------

class HandNodes:
    """Nodes the test writes itself, with Leases renewed every 0.3 s while `beating`."""

    def __init__(self, api: Api):
        self.api = api
        self.beating: set[str] = set()
        self.leases: dict[str, Lease] = {}

    async def add(self, name: str, ready: str = "True", zone: str | None = None,
                  extra_taints: list[Taint] | None = None) -> Node:
        labels = {"kubernetes.io/hostname": name, **({"topology.kubernetes.io/zone": zone} if zone else {})}
        node = await self.api.nodes.create(Node(
            metadata=ObjectMeta(name=name, labels=labels), spec=NodeSpec(taints=list(extra_taints or [])),
            status=NodeStatus(capacity={"cpu": "8", "memory": "8Gi", "pods": "110"},
                              allocatable={"cpu": "8", "memory": "8Gi", "pods": "110"})))
        await self.set_ready(name, ready)
        self.leases[name] = await self.api.leases.create(Lease(
            metadata=ObjectMeta(name=name, namespace=NODE_LEASE_NAMESPACE),
            spec=LeaseSpec(holder_identity=name, lease_duration_seconds=4, renew_time=now_micro())))
        self.beating.add(name)
        return node

    async def set_ready(self, name: str, ready: str) -> None:
        node = await self.api.nodes.get(name)
        node.status.conditions = [Condition(type="Ready", status=ready, reason="Test", message="set by the test")]
        await self.api.nodes.update_status(node)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            for name in sorted(self.beating):
                lease = self.leases[name]
                lease.spec.renew_time = now_micro()
                self.leases[name] = await self.api.leases.update(lease)
            try:
                await asyncio.wait_for(stop.wait(), 0.3)
            except TimeoutError:
                pass


async def hand_pod(api: Api, name: str, node: str, tolerations: list[dict] | None = None,
                   ready: bool = True) -> Pod:
    spec: dict[str, Any] = {"nodeName": node, "containers": [{"name": "main", "image": "none"}]}
    if tolerations is not None:
        spec["tolerations"] = tolerations
    pod = await api.pods.create(msgspec.convert({"metadata": {"name": name}, "spec": spec}, Pod))
    if ready:
        pod.status.phase = "Running"
        pod.status.conditions = [Condition(type="Ready", status="True")]
        pod = await api.pods.update_status(pod)
    return pod


def evicted(pod: Pod | None) -> bool:
    return pod is None or pod.metadata.deletion_timestamp is not None


async def with_beats(hand: HandNodes, body: Any) -> None:
    stop = asyncio.Event()

    async def main() -> None:
        try:
            await body()
        finally:
            stop.set()

    async with asyncio.TaskGroup() as tg:
        tg.create_task(hand.run(stop))
        tg.create_task(main())


async def test_not_ready_and_unreachable_taints_follow_the_node(cluster: Cluster, wait_for) -> None:
    """(b) an agent reporting Ready=False with a fresh lease: not-ready taints; Ready again: they go
    (a taint of someone else stays); the lease unrenewed: Ready=Unknown and unreachable taints."""
    c, api = cluster, cluster.api
    hand = HandNodes(api)
    start_nodelifecycle(c, "--node-monitor-grace-period", GRACE)
    own = Taint(key="example.com/dedicated", effect="NoSchedule", value="db")
    name = unique("hand")

    async def body() -> None:
        await hand.add(name, ready="False", extra_taints=[own])
        await hand.add(unique("hand-ok"))  # one node down alone is a fully disrupted zone: no NoExecute taints

        async def has(expected: set[tuple[str, str]], ready: str | None = None) -> Node | None:
            node = await api.nodes.get(name)
            ok = health_taints(node) == expected and (ready is None or condition(node, "Ready") == ready)
            return node if ok else None

        node = await wait_for(lambda: has({(NOT_READY, "NoSchedule"), (NOT_READY, "NoExecute")}), 20,
                              "not-ready taints")
        assert ("example.com/dedicated", "NoSchedule") in taints(node)
        assert all(t.time_added for t in node.spec.taints if t.key == NOT_READY)
        assert condition(node, "Ready") == "False"  # the agent's word stands while its lease is fresh
        await hand.set_ready(name, "True")
        node = await wait_for(lambda: has(set()), 20, "health taints removed")
        assert taints(node) == {("example.com/dedicated", "NoSchedule")}
        hand.beating.discard(name)
        node = await wait_for(lambda: has({(UNREACHABLE, "NoSchedule"), (UNREACHABLE, "NoExecute")}, "Unknown"),
                              30, "unreachable taints")
        assert ("example.com/dedicated", "NoSchedule") in taints(node)
        events = [e for e in (await api.events.list("default")).items if e.involved_object.name == name]
        assert any(e.reason == "NodeNotReady" and e.involved_object.kind == "Node" for e in events), events

    await with_beats(hand, body)


async def test_toleration_seconds_are_honoured(cluster: Cluster, wait_for) -> None:
    """(c) on an unreachable node: a pod with the default tolerations (2 s here) is evicted, one that
    tolerates for 600 s is not, one that tolerates without tolerationSeconds never is; all are
    marked not Ready at once."""
    c, api = cluster, cluster.api
    hand = HandNodes(api)
    start_nodelifecycle(c, "--node-monitor-grace-period", GRACE)
    name = unique("hand")

    async def body() -> None:
        await hand.add(name)
        await hand.add(unique("hand-ok"))  # a healthy second node: the zone is not fully down
        p_default = await hand_pod(api, "p-default", name)
        assert {t.toleration_seconds for t in p_default.spec.tolerations} == {int(TOLERATION)}
        await hand_pod(api, "p-600", name, [{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute",
                                             "tolerationSeconds": 600}])
        await hand_pod(api, "p-forever", name, [{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute"}])
        await asyncio.sleep(1)
        hand.beating.discard(name)

        async def all_not_ready() -> bool:
            pods = [await c.pod(n) for n in ("p-600", "p-forever")]
            return all(p is not None and condition(p, "Ready") == "False" for p in pods)

        await wait_for(all_not_ready, 30, "pods on the unreachable node Ready=False", interval=0.2)
        await wait_for(lambda: evicted_now(c, "p-default"), 30, "p-default evicted", interval=0.2)
        await asyncio.sleep(4)  # well past the default toleration
        for n in ("p-600", "p-forever"):
            pod = await c.pod(n)
            assert pod is not None and pod.metadata.deletion_timestamp is None, n
        events = await c.events("p-default")
        assert any(e.reason == "TaintManagerEviction" for e in events)

    await with_beats(hand, body)


async def evicted_now(c: Cluster, name: str) -> bool:
    return evicted(await c.pod(name))


async def test_zone_disruption_all_silent_evicts_nothing_one_of_three_evicts(cluster: Cluster, wait_for) -> None:
    """(e) every node silent at once (a bus blip): Ready=Unknown and pods not Ready, but no
    NoExecute taint and no eviction; then only one of three silent: it is tainted and evicted."""
    c, api = cluster, cluster.api
    hand = HandNodes(api)
    start_nodelifecycle(c, "--node-monitor-grace-period", GRACE)
    names = [unique("zn") for _ in range(3)]

    async def body() -> None:
        for n in names:
            await hand.add(n)
            await hand_pod(api, f"pod-{n}", n)
        await asyncio.sleep(1)
        hand.beating.clear()

        async def all_unknown() -> bool:
            nodes = [await api.nodes.get(n) for n in names]
            return all(condition(nd, "Ready") == "Unknown" and (UNREACHABLE, "NoSchedule") in taints(nd)
                       for nd in nodes)

        await wait_for(all_unknown, 30, "every node Ready=Unknown", interval=0.2)
        await wait_for(lambda: all_pods_not_ready(c, names), 15, "every pod Ready=False", interval=0.2)
        await asyncio.sleep(int(TOLERATION) + 4)  # past the toleration: an eviction would have happened
        for n in names:
            node = await api.nodes.get(n)
            assert (UNREACHABLE, "NoExecute") not in taints(node), n
            pod = await c.pod(f"pod-{n}")
            assert pod is not None and pod.metadata.deletion_timestamp is None, n
        # Two agents answer again; the third stays silent.
        for n in names[:2]:
            hand.beating.add(n)
            await hand.set_ready(n, "True")
        await wait_for(lambda: evicted_now(c, f"pod-{names[2]}"), 30, "the silent node's pod evicted", interval=0.2)
        assert (UNREACHABLE, "NoExecute") in taints(await api.nodes.get(names[2]))
        for n in names[:2]:
            pod = await c.pod(f"pod-{n}")
            assert pod is not None and pod.metadata.deletion_timestamp is None, n
            assert not health_taints(await api.nodes.get(n)), n

    await with_beats(hand, body)


async def all_pods_not_ready(c: Cluster, names: list[str]) -> bool:
    pods = [await c.pod(f"pod-{n}") for n in names]
    return all(p is not None and condition(p, "Ready") == "False" for p in pods)


async def test_podgc_force_deletes_pods_of_a_node_that_does_not_exist(cluster: Cluster, wait_for) -> None:
    """(g) a pod bound to a node that does not exist (never did, or was deleted) is force-deleted,
    though it was never Terminating; a pod on a node that exists stays."""
    c, api = cluster, cluster.api
    hand = HandNodes(api)
    start_nodelifecycle(c, "--node-monitor-grace-period", GRACE)
    name = unique("hand")

    async def body() -> None:
        await hand.add(name)
        await hand_pod(api, "kept", name)
        await hand_pod(api, "orphan", unique("no-such-node"))
        await c.wait_gone("orphan", 20)
        await hand_pod(api, "late-orphan", name)
        await asyncio.sleep(1)
        assert await c.pod("late-orphan") is not None
        await api.nodes.delete(name)
        await c.wait_gone("late-orphan", 20)
        await c.wait_gone("kept", 20)

    await with_beats(hand, body)


async def test_default_tolerations_added_on_create_not_duplicated_and_updates_pass(cluster: Cluster) -> None:
    """(d) through the real API server (flags set the seconds)."""
    api = cluster.api
    node = unique("nowhere")
    plain = await hand_pod(api, "plain", node, ready=False)
    got = [(t.key, t.operator, t.effect, t.toleration_seconds) for t in plain.spec.tolerations]
    assert got == [(NOT_READY, "Exists", "NoExecute", int(TOLERATION)),
                   (UNREACHABLE, "Exists", "NoExecute", int(TOLERATION))]
    own = await hand_pod(api, "own", node, [{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute",
                                            "tolerationSeconds": 600}], ready=False)
    assert sorted((t.key, t.toleration_seconds) for t in own.spec.tolerations) == \
        [(NOT_READY, int(TOLERATION)), (UNREACHABLE, 600)]
    everything = await hand_pod(api, "everything", node, [{"operator": "Exists"}], ready=False)
    assert len(everything.spec.tolerations) == 1
    # Updates neither add the defaults again nor are refused for lacking them.
    for pod in (plain, everything):
        pod.metadata.labels["touched"] = "yes"
        after = await api.pods.update(pod)
        assert after.spec.tolerations == pod.spec.tolerations
    try:
        await api.pods.patch("everything", {"metadata": {"labels": {"again": "yes"}}})
    except ApiError as exc:  # pragma: no cover - the message is the point
        raise AssertionError(f"a patch of a pod without the default tolerations was refused: {exc}") from None
    assert len((await api.pods.get("everything")).spec.tolerations) == 1
