"""An Informer with a populated cache that is cut off, misses updates, deletes and creates, and comes
back to an API server that no longer remembers its version: the watch gets Gone, the informer relists,
and its handlers hear exactly what changed while it was away (update, delete, add), its store and
index then matching the server's list.

The informer's connection goes through a small TCP relay the test can cut (nothing of Flotilla is
mocked: it is the network that goes away). The API server is restarted while the informer is cut
off: a fresh watch cache starts at the log's head, so the informer's last version is below what the
server remembers (services/apiserver/watch.py: `since < cache.oldest` is Gone).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging

import nats
from nats.aio.client import Client

from services.lib.client import Api
from services.lib.informer import Informer, by_namespace, object_key

from conftest import connect
from relay import Relay


async def test_relist_after_gone_reports_what_changed_while_away(nats_server, apiserver, nc: Client,
                                                                   wait_for, caplog) -> None:
    caplog.set_level(logging.INFO, logger="flotilla.informer")
    first = (await apiserver(1))[0]
    api = Api(nc)
    names = ["keep", "upd-1", "upd-2", "del-1", "del-2"]
    for name in names:
        await api.pods.create({"metadata": {"name": name, "labels": {"app": "relist"}}, "spec": {
            "containers": [{"name": "c", "image": "busybox", "command": ["sleep", "3600"]}]}})
    # A pod the informer's selector leaves out: its writes move the log on without the informer seeing them.
    await api.pods.create({"metadata": {"name": "other", "labels": {"app": "other"}}, "spec": {
        "containers": [{"name": "c", "image": "busybox", "command": ["sleep", "3600"]}]}})

    host, port = nats_server.url.removeprefix("nats://").rsplit(":", 1)
    relay = Relay(host, int(port))
    url = await relay.start()
    inc = await connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.2, connect_timeout=2)
    informer = Informer(Api(inc, timeout=3).pods, namespace="default", label_selector="app=relist")
    informer.add_index("namespace", by_namespace)
    heard: list[tuple[str, str, str | None]] = []  # (handler, key, label "v" of the object handed over)
    informer.add_handlers(
        on_add=lambda o: heard.append(("add", object_key(o), o.metadata.labels.get("v"))),
        on_update=lambda old, new: heard.append(("update", object_key(new), new.metadata.labels.get("v"))),
        on_delete=lambda o: heard.append(("delete", object_key(o), o.metadata.labels.get("v"))))
    try:
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(informer.run())
            await asyncio.wait_for(informer.wait_synced(), 30)
            await wait_for(lambda: len(informer.store) == len(names), timeout=30, what="informer filled")
            assert sorted(k for _, k, _ in heard) == sorted(f"default/{n}" for n in names)
            assert informer.relists == 1
            heard.clear()

            relay.cut_off()
            await wait_for(lambda: not inc.is_connected, timeout=30, what="informer connection cut")
            for name in ("upd-1", "upd-2"):
                await api.pods.patch(name, {"metadata": {"labels": {"v": "2"}}})
            for name in ("del-1", "del-2"):
                await api.pods.delete(name)
            await api.pods.create({"metadata": {"name": "new-1", "labels": {"app": "relist", "v": "1"}}, "spec": {
                "containers": [{"name": "c", "image": "busybox", "command": ["sleep", "3600"]}]}})
            await api.pods.patch("other", {"metadata": {"labels": {"v": "9"}}})
            # The restarted server's watch cache starts at the log's head, above the informer's version.
            first.stop()
            await apiserver(1)
            assert heard == [], f"the informer heard changes while cut off: {heard}"
            assert informer.relists == 1

            relay.restore()
            await wait_for(lambda: informer.relists >= 2, timeout=90, what="relist after Gone")
            server = await api.pods.list_all(namespace="default", label_selector="app=relist")
            want = {object_key(p): p.metadata.resource_version for p in server.items}
            await wait_for(lambda: {k: o.metadata.resource_version for k, o in informer.store.items()} == want,
                           timeout=30, what="informer store matches the server's list")
            assert sorted(heard) == sorted([
                ("update", "default/upd-1", "2"), ("update", "default/upd-2", "2"),
                ("delete", "default/del-1", None), ("delete", "default/del-2", None),
                ("add", "default/new-1", "1"),
            ]), heard
            assert informer.relists == 2, "one relist for one Gone"
            assert any(r.getMessage() == "watch version gone; relisting" for r in caplog.records), \
                "the informer came back by another path than Gone"
            assert sorted(object_key(o) for o in informer.by_index("namespace", "default")) == sorted(want)
            assert informer.get("default/upd-1").metadata.labels.get("v") == "2"
            task.cancel()  # a cancelled child is no error to its TaskGroup
    finally:
        with contextlib.suppress(nats.errors.ConnectionClosedError):
            await inc.close()
        await relay.stop()
