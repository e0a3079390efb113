"""Deployment strategies and knobs against real services: Recreate (no new pod while an old one is
left), `paused` (no new ReplicaSet while paused; unpausing rolls), `revisionHistoryLimit` (old
ReplicaSets beyond it are deleted, the newest kept).

Pods run on a hollow node agent (Running and Ready with no process behind them): these tests are
about what the deployment controller decides, not about containers.
"""
from __future__ import annotations

import asyncio

import pytest

from test_deployment import change_template

pytestmark = pytest.mark.timeout(180)


def deployment(name: str, replicas: int, version: str, strategy: str = "RollingUpdate", **spec) -> dict:
    body: dict = {
        "replicas": replicas,
        "selector": {"matchLabels": {"app": name}},
        "strategy": {"type": strategy},
        "template": {"metadata": {"labels": {"app": name}}, "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "c", "image": f"img:{version}", "command": ["sleep", "3600"]}]}},
        **spec}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name}, "spec": body}


@pytest.fixture
def hollow_agent(start_service):
    return start_agent(start_service)


@pytest.fixture
async def cluster(api, start_service, hollow_agent):
    for svc in ("scheduler", "replicaset", "deployment", "gc"):
        start_service(svc, "--identity", f"{svc}-a", "--lease-duration", "2")
    return api


def start_agent(start_service):
    return start_service("nodeagent", "--node-name", "hollow-a", "--hollow", "--cpu", "32", "--memory", "64Gi",
                         "--heartbeat-seconds", "1", name=None)


async def rolled_out(api, name: str, replicas: int, version: str) -> bool:
    """Status caught up with the spec, every replica updated and available, and only `version` left."""
    d = await api.deployments.get(name)
    s = d.status
    if s.observed_generation != d.metadata.generation or (s.updated_replicas or 0) != replicas \
            or (s.available_replicas or 0) != replicas or (s.replicas or 0) != replicas:
        return False
    pods = [p for p in (await api.pods.list(label_selector=f"app={name}")).items]
    return len(pods) == replicas and all(p.spec.containers[0].image == f"img:{version}" for p in pods)


async def set_image(api, name: str, version: str) -> None:
    def change(c):
        c.image = f"img:{version}"
    await change_template(api, name, change)


async def owned_replicasets(api, name: str) -> list:
    d = await api.deployments.get(name)
    return [rs for rs in (await api.replicasets.list()).items
            if any(r.uid == d.metadata.uid and r.controller for r in rs.metadata.owner_references)
            and not rs.metadata.deletion_timestamp]


async def test_recreate_starts_no_new_pod_before_every_old_one_is_gone(cluster, hollow_agent, start_service,
                                                                      connect_api, wait_for) -> None:
    api = cluster
    await api.deployments.create(deployment("rc", 3, "v1", "Recreate"))
    await wait_for(lambda: rolled_out(api, "rc", 3, "v1"), 60, "3 v1 pods available")

    watcher = await connect_api()
    listing = await watcher.pods.list(label_selector="app=rc")
    present = {p.metadata.name: p for p in listing.items}
    overlaps: list[tuple[list[str], list[str]]] = []
    events = {"n": 0}

    async def record() -> None:
        async for type_, pod in watcher.pods.watch(label_selector="app=rc", resource_version=listing.resource_version):
            if type_ == "DELETED":
                present.pop(pod.metadata.name, None)
            elif type_ in ("ADDED", "MODIFIED"):
                present[pod.metadata.name] = pod
            else:
                continue
            events["n"] += 1
            # "Gone" as the controller must mean it: deleted from the API or finished, not merely
            # terminating (a terminating pod may still be running its containers).
            old = sorted(n for n, p in present.items() if p.spec.containers[0].image == "img:v1"
                         and p.status.phase not in ("Succeeded", "Failed"))
            new = sorted(n for n, p in present.items() if p.spec.containers[0].image == "img:v2")
            if old and new:
                overlaps.append((old, new))

    # With the node agent away, the old pods stay Running and Terminating (nothing confirms them) for
    # as long as the test likes: a hollow agent stops pods at once, which would leave a too-early new
    # pod no window to show up in.
    old_names = sorted(present)
    hollow_agent.kill()

    async def all_terminating():
        pods = {p.metadata.name: p for p in (await api.pods.list(label_selector="app=rc")).items}
        return all(n in pods and pods[n].metadata.deletion_timestamp for n in old_names)

    async with asyncio.TaskGroup() as tg:
        rec = tg.create_task(record())
        await set_image(api, "rc", "v2")
        await wait_for(all_terminating, 60, "every old pod terminating")
        await asyncio.sleep(1.5)  # a controller that does not wait would create the new pods by now
        early = [p.metadata.name for p in (await api.pods.list(label_selector="app=rc")).items
                 if p.spec.containers[0].image == "img:v2"]
        still = [p for p in (await api.pods.list(label_selector="app=rc")).items if p.metadata.name in old_names]
        assert len(still) == 3 and all(p.status.phase == "Running" for p in still), "the old pods are left"
        start_agent(start_service)  # the agent back: it stops the old pods, then runs the new ones
        await wait_for(lambda: rolled_out(api, "rc", 3, "v2"), 90, "3 v2 pods available")
        await asyncio.sleep(0.5)  # the watch delivers the last events
        rec.cancel()
    assert events["n"] >= 6, "the watch saw the old pods go and the new ones come"
    assert not overlaps, f"new pods existed while old ones were left: {overlaps[:3]}"
    assert not early, f"new pods {early} created while the old ones were still terminating"


async def test_paused_makes_no_new_replicaset_and_unpausing_rolls(cluster, wait_for) -> None:
    api = cluster
    await api.deployments.create(deployment("pz", 2, "v1"))
    await wait_for(lambda: rolled_out(api, "pz", 2, "v1"), 60, "2 v1 pods available")
    await api.deployments.patch("pz", {"spec": {"paused": True}})
    await set_image(api, "pz", "v2")

    async def paused_seen():
        d = await api.deployments.get("pz")
        prog = next((c for c in d.status.conditions if c.type == "Progressing"), None)
        return d.status.observed_generation == d.metadata.generation and prog is not None \
            and prog.reason == "DeploymentPaused"
    await wait_for(paused_seen, 30, "the controller to observe the paused template change")
    await asyncio.sleep(1.0)  # a new ReplicaSet, if one were made, would be in the API by now
    rss = await owned_replicasets(api, "pz")
    assert [rs.spec.template.spec.containers[0].image for rs in rss] == ["img:v1"]
    pods = (await api.pods.list(label_selector="app=pz")).items
    assert sorted(p.spec.containers[0].image for p in pods) == ["img:v1", "img:v1"]

    await api.deployments.patch("pz", {"spec": {"paused": False}})
    await wait_for(lambda: rolled_out(api, "pz", 2, "v2"), 90, "the unpaused deployment rolled to v2")
    images = sorted(rs.spec.template.spec.containers[0].image for rs in await owned_replicasets(api, "pz"))
    assert images == ["img:v1", "img:v2"]


async def test_revision_history_limit_deletes_the_oldest_replicasets(cluster, wait_for) -> None:
    api = cluster
    await api.deployments.create(deployment("hist", 1, "v1", revisionHistoryLimit=2))
    await wait_for(lambda: rolled_out(api, "hist", 1, "v1"), 60, "v1 rolled out")
    for v in ("v2", "v3", "v4", "v5"):
        await set_image(api, "hist", v)
        await wait_for(lambda: rolled_out(api, "hist", 1, v), 60, f"{v} rolled out")

    async def kept():
        images = sorted(rs.spec.template.spec.containers[0].image for rs in await owned_replicasets(api, "hist"))
        return images if len(images) <= 3 else None
    images = await wait_for(kept, 30, "old ReplicaSets beyond the limit deleted")
    # The current one plus the two newest old ones; v1 and v2 are the oldest and go.
    assert images == ["img:v3", "img:v4", "img:v5"]
