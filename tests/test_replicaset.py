"""The replica controller against a real API server (pods stay unscheduled: no scheduler needed)."""
from __future__ import annotations

import asyncio

import msgspec
import pytest

from schemas import ApiError, ReplicaSet


def rs_body(name: str, replicas: int, labels: dict | None = None) -> dict:
    labels = labels or {"app": name}
    return {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": "c", "image": "img", "command": ["sleep", "3600"]}]}}}}


async def live_pods(api, selector: str) -> list:
    return [p for p in (await api.pods.list(label_selector=selector)).items if not p.metadata.deletion_timestamp]


async def count_is(api, selector: str, n: int) -> bool:
    return len(await live_pods(api, selector)) == n


@pytest.fixture
async def rsc(api, start_service):
    start_service("replicaset", "--identity", "rsc-a", "--lease-duration", "2")
    return api


async def test_scale_up_down_and_up(rsc, wait_for) -> None:
    api = rsc
    await api.replicasets.create(rs_body("web", 0))
    for n in (50, 5, 30):
        await api.replicasets.scale("web", n)
        await wait_for(lambda: count_is(api, "app=web", n), 60, f"{n} pods")

        async def status_caught_up():
            rs = await api.replicasets.get("web")
            return rs.status.replicas == n and rs.status.observed_generation == rs.metadata.generation
        await wait_for(status_caught_up, 20, f"status.replicas == {n}")
    await asyncio.sleep(1.0)  # and it stays there: no double creates
    assert len(await live_pods(api, "app=web")) == 30
    pods = await live_pods(api, "app=web")
    assert all(p.metadata.owner_references[0].kind == "ReplicaSet" and p.metadata.owner_references[0].controller
               for p in pods)
    assert all(p.metadata.name.startswith("web-") for p in pods)


async def test_deleted_pods_are_replaced(rsc, wait_for) -> None:
    api = rsc
    await api.replicasets.create(rs_body("svc", 4))
    await wait_for(lambda: count_is(api, "app=svc", 4), 30, "4 pods")
    victims = (await live_pods(api, "app=svc"))[:2]
    for p in victims:
        await api.pods.delete(p.metadata.name, grace_period_seconds=0)
    await wait_for(lambda: count_is(api, "app=svc", 4), 30, "replacements")
    names = {p.metadata.name for p in await live_pods(api, "app=svc")}
    assert not names & {p.metadata.name for p in victims}


async def test_orphan_is_adopted_and_relabelled_pod_released(rsc, wait_for) -> None:
    api = rsc
    orphan = await api.pods.create({"metadata": {"name": "stray", "labels": {"app": "adopt"}},
                                    "spec": {"containers": [{"name": "c", "image": "img"}]}})
    rs: ReplicaSet = await api.replicasets.create(rs_body("adopt", 3))
    await wait_for(lambda: count_is(api, "app=adopt", 3), 30, "3 pods")

    async def adopted():
        p = await api.pods.get("stray")
        return p.metadata.owner_references and p.metadata.owner_references[0].uid == rs.metadata.uid
    await wait_for(adopted, 20, "the orphan adopted")
    assert orphan.metadata.uid == (await api.pods.get("stray")).metadata.uid  # adopted, not replaced
    # Relabel one pod: it is released (ownerReference removed) and replaced.
    await api.pods.patch("stray", {"metadata": {"labels": {"app": "elsewhere"}}})

    async def released():
        p = await api.pods.get("stray")
        return not p.metadata.owner_references
    await wait_for(released, 20, "the relabelled pod released")
    await wait_for(lambda: count_is(api, "app=adopt", 3), 30, "a replacement")
    assert (await api.pods.get("stray")).metadata.deletion_timestamp is None  # released, not deleted


async def test_refused_creates_report_replica_failure_with_slow_start(rsc, wait_for) -> None:
    """A name so long that the generated pod names are refused: the first create fails, the slow start
    stops there (one try, not 20), and the status carries ReplicaFailure with the server's reason."""
    api = rsc
    name = "x" * 210
    await api.replicasets.create(rs_body(name, 20, labels={"app": "long"}))

    async def failed():
        rs = await api.replicasets.get(name)
        return next((c for c in rs.status.conditions if c.type == "ReplicaFailure"), None)
    cond = await wait_for(failed, 20, "ReplicaFailure condition")
    assert cond.status == "True" and cond.reason == "FailedCreate"
    assert "generateName" in cond.message
    events = (await api.events.list(field_selector="reason=FailedCreate")).items
    assert events and events[0].involved_object.name == name
    assert (await api.pods.list(label_selector="app=long")).items == []


@pytest.mark.slow
async def test_controller_killed_mid_scale_never_overshoots(api, start_service, connect_api, wait_for) -> None:
    """kill -9 of the replica controller while it scales 0 -> 500 on hollow nodes (a scheduler binds
    the pods, hollow agents report them Running), then a restart: exactly 500 pods in the end, and
    never more than 500 live pods at any moment (watched event by event)."""
    start_service("nodeagent.hollow", "--count", "10", "--heartbeat-seconds", "2", "--no-events")
    start_service("scheduler", "--identity", "sched-h", "--lease-duration", "2")
    first = start_service("replicaset", "--identity", "rsc-1", "--lease-duration", "2")
    watcher = await connect_api()
    live: set[str] = set()
    peak = 0
    rv = (await watcher.pods.list()).resource_version

    async def watch() -> None:
        nonlocal peak
        async for type_, pod in watcher.pods.watch(resource_version=rv):
            if type_ == "DELETED" or pod.metadata.deletion_timestamp:
                live.discard(pod.metadata.name)
            else:
                live.add(pod.metadata.name)
            peak = max(peak, len(live))

    async with asyncio.TaskGroup() as tg:
        w = tg.create_task(watch())
        await api.replicasets.create(rs_body("big", 0))
        await asyncio.sleep(0.5)
        await api.replicasets.scale("big", 500)
        await wait_for(lambda: len(live) >= 150, 60, "the scale-up under way", interval=0.01)
        first.kill()
        at_kill = len(live)
        start_service("replicaset", "--identity", "rsc-2", "--lease-duration", "2")
        await wait_for(lambda: count_is(api, "app=big", 500), 90, "500 pods")

        async def all_running():
            pods = await live_pods(api, "app=big")
            return len(pods) == 500 and all(p.status.phase == "Running" for p in pods)
        await wait_for(all_running, 90, "500 pods Running on the hollow nodes")
        await asyncio.sleep(3)  # the new controller has settled: nothing more is created
        w.cancel()
    assert len(await live_pods(api, "app=big")) == 500
    assert at_kill < 500, "killed too late to matter"
    assert peak <= 500, f"{peak} live pods at the peak"


async def test_status_write_from_a_stale_copy_lands_without_a_failed_sync(api) -> None:
    """The copy a sync judged may predate our own last status write (the informer lags): the write
    goes onto the current object instead of failing the sync (which re-counted every pod at once).
    The replica and Deployment controllers write their status this way (`ResourceClient.put_status`)."""
    from schemas import ReplicaSetStatus

    rs = await api.replicasets.create(rs_body("stale", 3))
    newer = await api.replicasets.update_status(
        msgspec.structs.replace(rs, status=ReplicaSetStatus(replicas=1, observed_generation=1)))
    assert newer.metadata.resource_version != rs.metadata.resource_version
    with pytest.raises(ApiError):  # what a plain status write from the stale copy gets
        await api.replicasets.update_status(msgspec.structs.replace(rs, status=ReplicaSetStatus(replicas=2)))
    written = await api.replicasets.put_status(rs, ReplicaSetStatus(replicas=2, ready_replicas=1, observed_generation=1))
    assert written is not None
    stored = await api.replicasets.get("stale")
    assert (stored.status.replicas, stored.status.ready_replicas) == (2, 1)
    # A ReplicaSet deleted and made again under the same name is not written by a sync of the old one.
    await api.replicasets.delete("stale")
    await api.replicasets.create(rs_body("stale", 3))
    assert await api.replicasets.put_status(rs, ReplicaSetStatus(replicas=9, observed_generation=1)) is None
    assert (await api.replicasets.get("stale")).status.replicas in (None, 0)
    # And one that is gone is nothing to write.
    await api.replicasets.delete("stale")
    assert await api.replicasets.put_status(rs, ReplicaSetStatus(replicas=9)) is None
