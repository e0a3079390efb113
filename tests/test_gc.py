"""Garbage collection through ownerReferences: Background (default), Foreground and Orphan."""
from __future__ import annotations

import pytest

from services.lib.client import Api


def deployment_body(name: str, replicas: int) -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "c", "image": "img", "command": ["sleep", "1d"]}]}}}}


@pytest.fixture
async def workloads(api: Api, start_service):
    for svc in ("replicaset", "deployment", "gc"):
        start_service(svc, "--identity", f"{svc}-a", "--lease-duration", "2")
    return api


async def _settled(api: Api, name: str, replicas: int) -> bool:
    rs = [r for r in (await api.replicasets.list()).items if r.metadata.name.startswith(name + "-")]
    pods = (await api.pods.list(label_selector=f"app={name}")).items
    return len(rs) == 1 and len(pods) == replicas


async def test_background_cascade_removes_replicasets_and_pods(workloads, wait_for) -> None:
    api = workloads
    await api.deployments.create(deployment_body("web", 3))
    await wait_for(lambda: _settled(api, "web", 3), 30, "deployment -> replicaset -> 3 pods")
    await api.deployments.delete("web")

    async def gone():
        rs = [r for r in (await api.replicasets.list()).items if r.metadata.name.startswith("web-")]
        return not rs and not (await api.pods.list(label_selector="app=web")).items
    await wait_for(gone, 30, "replicasets and pods collected")


async def test_foreground_cascade_deletes_dependents_before_the_owner(workloads, wait_for) -> None:
    api = workloads
    await api.deployments.create(deployment_body("fg", 2))
    await wait_for(lambda: _settled(api, "fg", 2), 30, "settled")
    d = await api.deployments.delete("fg", propagation_policy="Foreground")
    assert d.metadata.deletion_timestamp and "foregroundDeletion" in d.metadata.finalizers

    async def owner_gone():
        try:
            await api.deployments.get("fg")
            return False
        except Exception:
            return True
    await wait_for(owner_gone, 30, "the deployment removed after its dependents")
    assert not (await api.pods.list(label_selector="app=fg")).items
    assert not [r for r in (await api.replicasets.list()).items if r.metadata.name.startswith("fg-")]


async def test_orphan_keeps_dependents_and_strips_the_reference(workloads, wait_for) -> None:
    api = workloads
    d = await api.deployments.create(deployment_body("keep", 2))
    await wait_for(lambda: _settled(api, "keep", 2), 30, "settled")
    await api.deployments.delete("keep", propagation_policy="Orphan")

    async def orphaned():
        try:
            await api.deployments.get("keep")
            return False
        except Exception:
            rs = [r for r in (await api.replicasets.list()).items if r.metadata.name.startswith("keep-")]
            return rs if rs and all(not r.metadata.owner_references for r in rs) else False
    rs = await wait_for(orphaned, 30, "the deployment gone, its replicaset kept without owner")
    pods = (await api.pods.list(label_selector="app=keep")).items
    assert len(pods) == 2 and all(p.metadata.owner_references[0].uid == rs[0].metadata.uid for p in pods)
    assert all(r.uid != d.metadata.uid for p in pods for r in p.metadata.owner_references)
