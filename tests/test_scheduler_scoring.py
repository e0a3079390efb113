"""Scheduler scores against a real API server and scheduler process: among nodes that all fit, the
preferred-affinity node, the node without a PreferNoSchedule taint and the emptier node win.

Nodes are fake Node objects created through the API (no agent), as in test_scheduler.py. Each test
places several pods so that a score that is ignored (a random pick among feasible nodes, or plain
spreading by free resources) cannot pass by luck: every pod must land where the score points.
"""
from __future__ import annotations

from collections import Counter

import pytest

from schemas import Taint
from test_scheduler import node_obj, pod_body, wait_bound


@pytest.fixture
async def cluster(api, start_service):
    start_service("scheduler", "--identity", "sched-score", "--initial-backoff", "0.2", "--max-backoff", "1")
    return api


async def test_preferred_node_affinity_wins(cluster, wait_for) -> None:
    api = cluster
    for zone in ("a", "b", "c"):
        await api.nodes.create(node_obj(f"zone-{zone}", labels={"zone": zone}))
    preferred = {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 10, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["c"]}]}},
        {"weight": 50, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]}},
    ]}}
    names = [f"likes-b-{i}" for i in range(6)]
    for n in names:
        await api.pods.create(pod_body(n, "100m", "128Mi", affinity=preferred))
    bound = await wait_bound(api, names, wait_for)
    # Resource spreading alone would put two on each node; the heavier preference outweighs it.
    assert Counter(bound[n] for n in names) == Counter({"zone-b": 6}), bound


async def test_prefer_no_schedule_avoided_when_another_fits_used_when_alone(cluster, wait_for) -> None:
    api = cluster
    await api.nodes.create(node_obj("tainted", labels={"pool": "special"},
                                    taints=[Taint(key="maintenance", value="soon", effect="PreferNoSchedule")]))
    await api.nodes.create(node_obj("clean", labels={"pool": "general"}))
    names = [f"any-{i}" for i in range(6)]
    for n in names:
        await api.pods.create(pod_body(n, "100m", "128Mi"))
    bound = await wait_bound(api, names, wait_for)
    assert Counter(bound[n] for n in names) == Counter({"clean": 6}), bound
    # Only the tainted node fits this one: PreferNoSchedule is a preference, not a filter.
    await api.pods.create(pod_body("only-special", "100m", "128Mi", nodeSelector={"pool": "special"}))
    bound = await wait_bound(api, ["only-special"], wait_for)
    assert bound["only-special"] == "tainted"


async def test_least_allocated_emptier_node_wins(cluster, wait_for) -> None:
    api = cluster
    await api.nodes.create(node_obj("busy", labels={"name": "busy"}))
    await api.nodes.create(node_obj("empty", labels={"name": "empty"}))
    # cpu and memory used in equal proportion (3/4 of each), so balanced allocation does not decide.
    await api.pods.create(pod_body("filler", "3", "6Gi", nodeSelector={"name": "busy"}))
    assert (await wait_bound(api, ["filler"], wait_for))["filler"] == "busy"
    names = [f"small-{i}" for i in range(6)]
    for n in names:
        await api.pods.create(pod_body(n, "200m", "256Mi"))
    bound = await wait_bound(api, names, wait_for)
    # Both fit every pod (busy has 1 cpu / 2 Gi left); the emptier node stays emptier throughout.
    assert Counter(bound[n] for n in names) == Counter({"empty": 6}), bound
