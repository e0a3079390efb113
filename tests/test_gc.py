"""Garbage collection through ownerReferences: Background (default), Foreground and Orphan."""
from __future__ import annotations

import asyncio
from typing import Any

import pytest

from schemas import ApiError
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


async def gone(client: Any, name: str) -> bool:
    """Only NotFound counts: a timeout or any other error must fail the test, not pass for "gone"."""
    try:
        await client.get(name)
    except ApiError as err:
        if err.reason == "NotFound":
            return True
        raise
    return False


class Deletions:
    """The DELETED events of some resources from a version on, by (resource, name) -> resourceVersion."""

    def __init__(self, api: Api, since: str | None, resources: tuple[str, ...]) -> None:
        self.api, self.since, self.resources = api, since, resources
        self.seen: dict[tuple[str, str], int] = {}
        self._group = asyncio.TaskGroup()
        self._tasks: list[asyncio.Task[None]] = []

    def rv(self, resource: str, name: str) -> int | None:
        return self.seen.get((resource, name))

    async def _watch(self, resource: str) -> None:
        async for kind, obj in self.api.resource(resource).watch(resource_version=self.since):
            if kind == "DELETED":
                self.seen[(resource, obj.metadata.name)] = int(obj.metadata.resource_version)

    async def __aenter__(self) -> "Deletions":
        await self._group.__aenter__()
        self._tasks = [self._group.create_task(self._watch(r)) for r in self.resources]
        return self

    async def __aexit__(self, *exc: Any) -> None:
        for task in self._tasks:
            task.cancel()
        await self._group.__aexit__(*exc)


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
    rs = [r for r in (await api.replicasets.list()).items if r.metadata.name.startswith("fg-")]
    pods = (await api.pods.list(label_selector="app=fg")).items
    since = (await api.pods.list()).resource_version
    async with Deletions(api, since, ("deployments", "replicasets", "pods")) as deletions:
        d = await api.deployments.delete("fg", propagation_policy="Foreground")
        assert d.metadata.deletion_timestamp and "foregroundDeletion" in d.metadata.finalizers
        await wait_for(lambda: gone(api.deployments, "fg"), 30, "the deployment removed after its dependents")
        owner = await wait_for(lambda: deletions.rv("deployments", "fg"), 10, "the deployment's DELETED event")
        assert not (await api.pods.list(label_selector="app=fg")).items
        assert not [r for r in (await api.replicasets.list()).items if r.metadata.name.startswith("fg-")]
        # The order is what Foreground means: every pod before its replicaset, that before the deployment.
        # (resourceVersions are one global sequence, so they order deletions of different kinds.)
        pod_rvs = [await wait_for(lambda n=p.metadata.name: deletions.rv("pods", n), 10, f"{p.metadata.name} DELETED")
                   for p in pods]
        rs_rv = await wait_for(lambda: deletions.rv("replicasets", rs[0].metadata.name), 10, "replicaset DELETED")
        assert max(pod_rvs) < rs_rv < owner, (pod_rvs, rs_rv, owner)


async def test_orphan_keeps_dependents_and_strips_the_reference(workloads, wait_for) -> None:
    api = workloads
    d = await api.deployments.create(deployment_body("keep", 2))
    await wait_for(lambda: _settled(api, "keep", 2), 30, "settled")
    await api.deployments.delete("keep", propagation_policy="Orphan")

    async def orphaned():
        if not await gone(api.deployments, "keep"):
            return False
        rs = [r for r in (await api.replicasets.list()).items if r.metadata.name.startswith("keep-")]
        return rs if rs and all(not r.metadata.owner_references for r in rs) else False
    rs = await wait_for(orphaned, 30, "the deployment gone, its replicaset kept without owner")
    pods = (await api.pods.list(label_selector="app=keep")).items
    assert len(pods) == 2 and all(p.metadata.owner_references[0].uid == rs[0].metadata.uid for p in pods)
    assert all(r.uid != d.metadata.uid for p in pods for r in p.metadata.owner_references)


# ---- the collector alone: owners no controller acts on, dependents made by hand ----------------------

@pytest.fixture
async def collector(api: Api, start_service):
    start_service("gc", "--identity", "gc-a", "--lease-duration", "2")
    return api


def owner_ref(deployment: Any) -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment.metadata.name,
            "uid": deployment.metadata.uid}


def pod_body(name: str, owners: list[Any], finalizers: list[str] | None = None) -> dict:
    meta: dict[str, Any] = {"name": name, "ownerReferences": [owner_ref(o) for o in owners]}
    if finalizers:
        meta["finalizers"] = finalizers
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"containers": [{"name": "c", "image": "img", "command": ["sleep", "1d"]}]}}


async def test_foreground_deletion_waits_for_a_dependent_still_terminating(collector, wait_for) -> None:
    """The owner's foregroundDeletion finalizer stays while a dependent is being deleted but held by a
    finalizer of its own (the collector keeps requeueing); once that finalizer goes, so do both."""
    api = collector
    owner = await api.deployments.create(deployment_body("holder", 0))
    await api.pods.create(pod_body("held", [owner], ["example.com/hold"]))
    since = (await api.pods.list()).resource_version
    async with Deletions(api, since, ("deployments", "pods")) as deletions:
        await api.deployments.delete("holder", propagation_policy="Foreground")
        await wait_for(lambda: _terminating(api, "held"), 30, "the collector deleting the held pod")
        # Several of the collector's 1 s requeues: the owner must still be there, waiting.
        await asyncio.sleep(3)
        d = await api.deployments.get("holder")
        assert d.metadata.deletion_timestamp and "foregroundDeletion" in d.metadata.finalizers
        assert deletions.rv("deployments", "holder") is None
        await api.pods.patch("held", {"metadata": {"finalizers": None}})
        await wait_for(lambda: gone(api.deployments, "holder"), 30, "the owner removed after its dependent")
        assert await gone(api.pods, "held")
        pod_rv = await wait_for(lambda: deletions.rv("pods", "held"), 10, "the pod's DELETED event")
        owner_rv = await wait_for(lambda: deletions.rv("deployments", "holder"), 10, "the owner's DELETED event")
        assert pod_rv < owner_rv


async def _terminating(api: Api, name: str) -> bool:
    return bool((await api.pods.get(name)).metadata.deletion_timestamp)


async def test_deleting_one_of_two_owners_only_drops_its_reference(collector, wait_for) -> None:
    api = collector
    first = await api.deployments.create(deployment_body("first", 0))
    second = await api.deployments.create(deployment_body("second", 0))
    pod = await api.pods.create(pod_body("shared", [first, second]))
    await api.deployments.delete("first")

    async def pruned():
        refs = (await api.pods.get("shared")).metadata.owner_references
        return [r.uid for r in refs] == [second.metadata.uid]
    await wait_for(pruned, 30, "the gone owner's reference dropped")
    kept = await api.pods.get("shared")
    assert kept.metadata.uid == pod.metadata.uid and not kept.metadata.deletion_timestamp
    assert await gone(api.deployments, "first")

    await api.deployments.delete("second")
    await wait_for(lambda: gone(api.pods, "shared"), 30, "the pod collected once both owners are gone")
