"""The API server's verb handlers in-process, on a real JetStream, where a test must hold the watch
cache at a chosen version: here, a replica whose cache has not yet seen a bind another replica wrote."""
from __future__ import annotations

import asyncio
import json

import pytest

from schemas import RESOURCES, ApiError
from services.apiserver.objects import Objects
from services.apiserver.store import StateLog
from services.apiserver.watchcache import WatchCache
from services.lib.codec import encode

POD = {"metadata": {"name": "p", "namespace": "default"},
       "spec": {"containers": [{"name": "c", "image": "i", "command": ["sleep", "1"]}]}}


async def test_the_node_restriction_reads_the_store_when_the_cache_has_not_seen_the_bind(nc) -> None:
    log = StateLog(nc, "flotilla")
    js = log.js
    await log.ensure()
    cache, events = WatchCache(nc, js, log.main), WatchCache(nc, js, log.events)
    objects = Objects(log, cache, events)
    pods = RESOURCES["pods"]
    feeding = asyncio.create_task(cache.run(lambda: log.head(log.main)))
    try:
        await objects.create(RESOURCES["namespaces"], encode({"metadata": {"name": "default"}}), None)
        created = json.loads(await objects.create(pods, json.dumps(POD).encode(), None))
        await cache.wait_for(int(created["metadata"]["resourceVersion"]))
    finally:
        feeding.cancel()  # the cache stays where it is: unbound "p"
    kv = await js.key_value("flotilla")
    entry = await kv.get("pods.default.p")
    bound = json.loads(entry.value)
    bound["spec"]["nodeName"] = "node-a"
    await kv.update(entry.key, json.dumps(bound).encode(), last=entry.revision)  # the bind, via "another replica"

    status = {**created, "spec": {**created["spec"], "nodeName": "node-a"}, "status": {"phase": "Running"}}
    status["metadata"] = {k: v for k, v in created["metadata"].items() if k != "resourceVersion"}
    written = json.loads(await objects.update(pods, json.dumps(status).encode(), "node-a", status_only=True))
    assert written["status"]["phase"] == "Running" and written["spec"]["nodeName"] == "node-a"
    with pytest.raises(ApiError) as refused:  # a node the pod is not bound to is still refused (by the store)
        await objects.update(pods, json.dumps(status).encode(), "node-b", status_only=True)
    assert refused.value.code == 403


async def test_cached_objects_stay_out_of_the_cyclic_gc_and_decode_as_stored(nc) -> None:
    """The watch cache keeps each object's stored bytes and what watches filter on, not the decoded
    object: the lists inside decoded objects made Python's full collections take 50-150 ms."""
    import gc

    log = StateLog(nc, "flotilla")
    await log.ensure()
    cache, events = WatchCache(nc, log.js, log.main), WatchCache(nc, log.js, log.events)
    objects = Objects(log, cache, events)
    pods = RESOURCES["pods"]
    async with asyncio.TaskGroup() as tg:
        feeding = tg.create_task(cache.run(lambda: log.head(log.main)))
        await objects.create(RESOURCES["namespaces"], encode({"metadata": {"name": "default"}}), None)
        last = 0
        for i in range(20):
            body = {**POD, "metadata": {"name": f"p{i}", "namespace": "default", "labels": {"app": "a", "n": str(i)}}}
            last = int(json.loads(await objects.create(pods, json.dumps(body).encode(), None))["metadata"]["resourceVersion"])
        await cache.wait_for(last)
        feeding.cancel()
    entries = list(cache.objects["pods"].values())
    assert len(entries) == 20
    assert not any(gc.is_tracked(c) or gc.is_tracked(c.labels) for c in entries)
    c = cache.objects["pods"]["pods.default.p7"]
    assert c.labels == {"app": "a", "n": "7"} and c.node_name is None
    obj = c.obj
    assert obj.metadata.name == "p7" and obj.metadata.resource_version == str(c.rev)
    obj.metadata.labels["app"] = "changed"  # a private copy
    assert c.obj.metadata.labels["app"] == "a"
    # Selectors on labels and fields still match through the cache.
    match, _ = objects.matcher(pods, "default", "n=7", "metadata.name=p7")
    assert [e.name for e in entries if match(e)] == ["p7"]
