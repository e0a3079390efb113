"""Self-healing across a NATS restart: the API server, scheduler, replica controller and garbage
collector keep working after nats-server is stopped and started again (JetStream data kept)."""
from __future__ import annotations

import asyncio

import pytest

from schemas import Condition, Node, NodeStatus, ObjectMeta


@pytest.mark.slow
async def test_controllers_recover_after_a_nats_restart(nats_server, api, start_service, wait_for) -> None:
    procs = [start_service(svc, "--identity", f"{svc}-x", "--lease-duration", "2")
             for svc in ("scheduler", "replicaset", "gc")]
    alloc = {"cpu": "8", "memory": "16Gi", "pods": "110"}
    await api.nodes.create(Node(metadata=ObjectMeta(name="n1"), status=NodeStatus(
        capacity=alloc, allocatable=alloc, conditions=[Condition(type="Ready", status="True")])))
    await api.replicasets.create({
        "apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "phoenix"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "phoenix"}},
                 "template": {"metadata": {"labels": {"app": "phoenix"}},
                              "spec": {"containers": [{"name": "c", "image": "img"}]}}}})

    async def bound(n: int):
        pods = [p for p in (await api.pods.list(label_selector="app=phoenix")).items if not p.metadata.deletion_timestamp]
        return len(pods) == n and all(p.spec.node_name == "n1" for p in pods)
    await wait_for(lambda: bound(3), 30, "3 pods bound before the restart")

    await nats_server.arestart()
    await asyncio.sleep(1)
    # After the restart: a scale-up is created and scheduled, and a cascade delete is collected.
    await wait_for(lambda: _scale(api, 6), 30, "the API answering again")
    await wait_for(lambda: bound(6), 60, "6 pods bound after the restart")
    await api.replicasets.delete("phoenix")

    async def collected():
        # Bound to a node with no agent, the pods stay in their grace period: being deleted is the GC's part.
        return all(p.metadata.deletion_timestamp for p in (await api.pods.list(label_selector="app=phoenix")).items)
    await wait_for(collected, 60, "the pods garbage-collected after the restart")
    assert all(p.alive for p in procs), "a service died across the NATS restart"


async def _scale(api, n: int) -> bool:
    try:
        await api.replicasets.scale("phoenix", n)
        return True
    except Exception:  # NATS or the API server still coming back
        return False
