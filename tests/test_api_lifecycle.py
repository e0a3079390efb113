"""Deletion and binding rules of the API server: protected namespaces, bind validation, a pod in its
grace period surviving status writes, and qosClass kept across status writes."""
from __future__ import annotations

import pytest

from schemas import ApiError

POD = {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i",
                                                           "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]}}


async def test_system_namespaces_cannot_be_deleted(api) -> None:
    for name in ("default", "flotilla-system", "flotilla-node-lease"):
        with pytest.raises(ApiError) as err:
            await api.namespaces.delete(name)
        assert err.value.code == 403
        assert (await api.namespaces.get(name)).metadata.deletion_timestamp is None


async def test_bind_validates_the_node_name(api) -> None:
    await api.pods.create(POD)
    with pytest.raises(ApiError) as err:
        await api.pods.bind("p", "Bad_Node")
    assert err.value.code == 422 and err.value.field == "nodeName"
    assert (await api.pods.get("p")).spec.node_name is None


async def test_a_pod_in_its_grace_period_survives_status_writes(api, connect_api) -> None:
    await api.pods.create({**POD, "spec": {**POD["spec"], "nodeName": "node-a"}})
    deleting = await api.pods.delete("p")
    assert deleting.metadata.deletion_timestamp
    agent = await connect_api(node="node-a")
    pod = await agent.pods.get("p")
    pod.status.phase = "Running"
    pod.status.qos_class = None  # the writer need not echo the server-set QoS class
    written = await agent.pods.update_status(pod)
    assert written.status.phase == "Running"
    assert written.status.qos_class == "Guaranteed"
    still = await api.pods.get("p")  # kept: only the agent's delete with grace 0 completes it
    assert still.metadata.deletion_timestamp and still.status.phase == "Running"
    await agent.pods.delete("p", grace_period_seconds=0)
    with pytest.raises(ApiError) as err:
        await api.pods.get("p")
    assert err.value.reason == "NotFound"



async def test_an_emptied_events_stream_does_not_stall_the_api_server(apiserver, nc) -> None:
    """Events age out of their stream without tombstones: an API server started when every event has
    aged out (or one running when it happens) would wait for a head no message will ever reach.
    Purging the stream makes that state here at once."""
    from services.lib.client import Api

    api = Api(nc, timeout=5)
    (first,) = await apiserver(1)
    await api.pods.create(POD)
    for i in range(3):
        await api.events.create({"metadata": {"name": f"e{i}"}, "involvedObject": {"kind": "Pod", "name": "p"},
                                 "reason": "Test", "message": "m", "type": "Normal"})
    js = nc.jetstream()
    await js.purge_stream("KV_flotilla-events")  # as if all of them aged out
    assert [e.metadata.name for e in (await api.events.list()).items] == []  # the running replica
    first.kill()
    await apiserver(1)  # a fresh replica: its first fill finds the stream empty but its head at 3
    assert (await api.pods.get("p")).metadata.name == "p"
    assert (await api.events.list()).items == []
    created = await api.events.create({"metadata": {"name": "after"}, "involvedObject": {"kind": "Pod", "name": "p"},
                                       "reason": "Test", "message": "m", "type": "Normal"})
    assert [e.metadata.name for e in (await api.events.list()).items] == ["after"]
    assert int(created.metadata.resource_version) > 3
