"""Least privilege on the bus, checked against a real nats-server running the generated auth config
(flotilla/credentials.py, services/lib/permissions.py): who may connect, publish and subscribe."""
from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import nats
import nats.errors
import pytest
from nats.aio.client import Client

from conftest import AUTH, connect
from services.lib import permissions

pytestmark = pytest.mark.skipif(not AUTH, reason="FLOTILLA_TEST_AUTH=0: the test nats-server runs without auth")

POD = {"metadata": {"name": "web-1", "namespace": "default"},
       "spec": {"containers": [{"name": "c", "image": "busybox", "command": ["sleep", "1"]}]}}


class Watched:
    """A connection as one principal that records the errors the server sends it."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.nc: Client | None = None

    async def on_error(self, exc: Exception) -> None:
        self.errors.append(str(exc))

    def violations(self, kind: str, subject: str) -> list[str]:
        return [e for e in self.errors if f"permissions violation for {kind} to \"{subject.lower()}\"" in e.lower()]


@pytest.fixture
async def as_principal(nats_url: str) -> AsyncIterator[Callable[[str], Awaitable[Watched]]]:
    made: list[Client] = []

    async def make(principal: str) -> Watched:
        w = Watched()
        w.nc = await connect(nats_url, principal, error_cb=w.on_error)
        made.append(w.nc)
        return w

    try:
        yield make
    finally:
        for c in made:
            await c.close()


async def denied(w: Watched, kind: str, subject: str, wait_for: Callable[..., Awaitable[Any]]) -> None:
    assert w.nc is not None
    await w.nc.flush()
    await wait_for(lambda: w.violations(kind, subject), timeout=5, what=f"a {kind} violation on {subject}")


async def test_an_anonymous_client_is_refused(nats_url: str) -> None:
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(nats_url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=3)


async def test_a_node_cannot_write_the_state_log_or_call_jetstream(apiserver, api, as_principal, nc: Client,
                                                                   wait_for) -> None:
    stored = await api.pods.create(POD)
    kv = await nc.jetstream().key_value("flotilla")
    before = await kv.get("pods.default.web-1")

    node = await as_principal("node-n1")
    assert node.nc is not None
    await node.nc.publish("$KV.flotilla.pods.default.web-1", b'{"evil": true}')
    await denied(node, "publish", "$KV.flotilla.pods.default.web-1", wait_for)
    with pytest.raises(nats.errors.TimeoutError):  # the request never left: no reply comes
        await node.nc.request("$JS.API.STREAM.INFO.KV_flotilla", b"", timeout=1)
    await denied(node, "publish", "$JS.API.STREAM.INFO.KV_flotilla", wait_for)
    # another node's subjects, and the admin's
    await node.nc.publish("flo.api.v1.node.n2.pods.list", b"{}")
    await denied(node, "publish", "flo.api.v1.node.n2.pods.list", wait_for)
    await node.nc.publish("flo.api.v1.pods.create", json.dumps(POD).encode())
    await denied(node, "publish", "flo.api.v1.pods.create", wait_for)
    # and it may not listen to what others are asked or told
    await node.nc.subscribe("flo.api.v1.>")
    await denied(node, "subscription", "flo.api.v1.>", wait_for)

    after = await kv.get("pods.default.web-1")
    assert after.revision == before.revision and after.value == before.value
    assert stored.metadata.resource_version == str(after.revision)


async def test_the_reader_reads_the_state_log_and_nothing_more(apiserver, api, as_principal, wait_for) -> None:
    await api.pods.create(POD)
    reader = await as_principal(permissions.READER)
    assert reader.nc is not None
    kv = await reader.nc.jetstream(timeout=1).key_value("flotilla")
    entry = await kv.get("pods.default.web-1")
    assert json.loads(entry.value)["metadata"]["name"] == "web-1"  # plain JSON, as `nats kv get` shows
    with pytest.raises(nats.errors.TimeoutError):
        await kv.put("pods.default.web-1", b"{}")
    await denied(reader, "publish", "$KV.flotilla.pods.default.web-1", wait_for)
    await reader.nc.publish("flo.api.v1.pods.create", json.dumps(POD).encode())
    await denied(reader, "publish", "flo.api.v1.pods.create", wait_for)
    await reader.nc.publish("flo.api.v1.user.reader.pods.create", json.dumps(POD).encode())
    await denied(reader, "publish", "flo.api.v1.user.reader.pods.create", wait_for)
    with pytest.raises(nats.errors.TimeoutError):
        await reader.nc.jetstream(timeout=1).delete_stream("KV_flotilla")
    assert (await kv.get("pods.default.web-1")).revision == entry.revision


async def test_a_component_cannot_speak_as_another(apiserver, as_principal, wait_for) -> None:
    await apiserver(1)
    scheduler = await as_principal("scheduler")
    assert scheduler.nc is not None
    await scheduler.nc.publish("flo.api.v1.user.replicaset.pods.delete", b'{"name": "x"}')
    await denied(scheduler, "publish", "flo.api.v1.user.replicaset.pods.delete", wait_for)
    await scheduler.nc.publish("flo.api.v1.pods.delete", b'{"name": "x"}')  # nor as the admin
    await denied(scheduler, "publish", "flo.api.v1.pods.delete", wait_for)
    await scheduler.nc.subscribe("_INBOX.admin.>")  # nor read another principal's replies
    await denied(scheduler, "subscription", "_INBOX.admin.>", wait_for)


async def test_the_admin_uses_the_api_but_cannot_write_the_log_directly(apiserver, api, as_principal,
                                                                        wait_for) -> None:
    admin = await as_principal(permissions.ADMIN)
    assert admin.nc is not None
    reply = await admin.nc.request("flo.api.v1.pods.create", json.dumps(POD).encode(), timeout=10)
    assert json.loads(reply.data)["metadata"]["name"] == "web-1"
    await admin.nc.publish("$KV.flotilla.pods.default.web-1", b"{}")
    await denied(admin, "publish", "$KV.flotilla.pods.default.web-1", wait_for)
    got = await api.pods.get("web-1")
    assert got.spec.containers[0].name == "c"
