"""Authorization in the API server (issue 12): the principal comes from the subject, the roles of
services/apiserver/rbac.yaml decide, the node restriction narrows node agents to their own objects,
and every write records its principal in metadata.managedFields. Against a real nats-server and API
server process; an open NATS, so the test may speak as any principal by choosing the subject."""
from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import open_nats_server
from flotilla.natsserver import NatsServer
from schemas import ApiError
from schemas.base import ManagedFieldsEntry
from services.lib.client import Api

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """An open nats-server: any client may use any subject, so these tests speak as any principal
    and see what the API server's own authorization decides (with Flotilla's NATS auth most of
    these requests would not even reach it: tests/test_bus_auth.py)."""
    yield from open_nats_server(tmp_path)
HAS_SUBRESOURCE = "subresource" in ManagedFieldsEntry.__struct_fields__


def pod(name: str, node: str | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
                           "spec": {"containers": [{"name": "main", "image": "busybox", "command": ["sleep", "1"]}]}}
    if node:
        doc["spec"]["nodeName"] = node
    return doc


def node(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}


async def forbidden(call: Any) -> ApiError:
    with pytest.raises(ApiError) as info:
        await call
    assert info.value.reason == "Forbidden", info.value
    assert info.value.code == 403
    return info.value


def cli_creds(bus_creds: Any) -> dict[str, str]:
    creds = bus_creds("admin")
    return {"FLOTILLA_NATS_CREDS": creds} if creds else {}


def managers(obj: Any) -> dict[tuple[str, str, str | None], ManagedFieldsEntry]:
    return {(e.manager, e.operation, getattr(e, "subresource", None)): e for e in obj.metadata.managed_fields or ()}


async def test_reader_can_list_but_not_create_and_the_refusal_names_the_rule(api: Api, nc, connect_api) -> None:
    await api.pods.create(pod("seen"))
    reader = (await connect_api(user="reader"))
    assert [p.metadata.name for p in (await reader.pods.list("default")).items] == ["seen"]
    assert (await reader.pods.get("seen")).metadata.name == "seen"
    err = await forbidden(reader.pods.create(pod("nope")))
    assert err.message == 'user "reader" cannot create pods: role reader allows get,list,watch on *'
    # the raw reply is the documented Status
    raw = json.loads((await reader.nc.request("flo.api.v1.user.reader.pods.delete",
                                       b'{"namespace":"default","name":"seen"}', timeout=10)).data)
    assert raw["kind"] == "Status" and raw["code"] == 403 and raw["reason"] == "Forbidden"
    assert 'user "reader" cannot delete pods' in raw["message"]
    with pytest.raises(ApiError) as missing:
        await api.pods.get("nope")
    assert missing.value.reason == "NotFound"
    assert (await api.pods.get("seen")).metadata.deletion_timestamp is None


async def test_unknown_principal_is_refused(api: Api, nc, connect_api) -> None:
    err = await forbidden(Api(nc, user="mallory").pods.list())
    assert err.message == 'user "mallory" cannot list pods: no role is bound to user "mallory"'


async def test_scheduler_binds_but_cannot_delete_nodes_or_take_another_lease(api: Api, nc, connect_api) -> None:
    await api.nodes.create(node("n1"))
    await api.pods.create(pod("p1"))
    sched = (await connect_api(user="scheduler"))
    err = await forbidden(sched.nodes.delete("n1"))
    assert err.message.startswith('user "scheduler" cannot delete nodes: role scheduler allows get,list,watch on pods,nodes')
    assert (await api.nodes.get("n1")).metadata.deletion_timestamp is None
    await forbidden(sched.pods.create(pod("p2")))
    bound = await sched.pods.bind("p1", "n1")
    assert bound.spec.node_name == "n1"
    assert ("scheduler", "Update", "binding" if HAS_SUBRESOURCE else None) in managers(bound)
    # its leader-election lease, and only that one (a names × namespaces rule)
    lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
             "metadata": {"name": "flotilla-scheduler", "namespace": "flotilla-system"}}
    await sched.leases.create(lease)
    assert (await sched.leases.get("flotilla-scheduler", "flotilla-system")).metadata.name == "flotilla-scheduler"
    err = await forbidden(sched.leases.create({**lease, "metadata": {"name": "flotilla-gc", "namespace": "flotilla-system"}}))
    assert "named flotilla-scheduler in namespace flotilla-system" in err.message
    await forbidden(sched.leases.create({**lease, "metadata": {"name": "flotilla-scheduler", "namespace": "default"}}))
    await forbidden(sched.leases.list("flotilla-system"))


async def test_node_agents_reach_only_their_own_node_and_pods(api: Api, nc, connect_api) -> None:
    for n in ("node-a", "node-b"):
        await api.nodes.create(node(n))
    await api.pods.create(pod("on-a", "node-a"))
    await api.pods.create(pod("on-b", "node-b"))
    agent = (await connect_api(node="node-a"))
    # its own pod: status written, and the writer recorded
    mine = await agent.pods.get("on-a")
    mine.status.phase = "Running"
    written = await agent.pods.update_status(mine)
    assert written.status.phase == "Running"
    entries = managers(written)
    assert ("admin", "Create", None) in entries
    assert ("node-node-a", "Update", "status" if HAS_SUBRESOURCE else None) in entries
    # another node's pod
    theirs = await api.pods.get("on-b")
    theirs.status.phase = "Failed"
    await forbidden(agent.pods.update_status(theirs))
    await forbidden(agent.pods.delete("on-b"))
    await forbidden(agent.pods.create(pod("made-by-a", "node-a")))
    other = await api.nodes.get("node-b")
    other.metadata.labels["owned"] = "no"
    await forbidden(agent.nodes.update(other))
    await forbidden(agent.nodes.delete("node-a"))
    # the same principal on a user subject gets the same restriction
    await forbidden((await connect_api(user="node-node-a")).pods.update_status(theirs))
    assert (await api.pods.get("on-b")).status.phase == "Pending"
    # the admin can do all of it
    theirs = await api.pods.get("on-b")
    theirs.status.phase = "Failed"
    assert (await api.pods.update_status(theirs)).status.phase == "Failed"
    await api.pods.delete("on-b", grace_period_seconds=0)
    await api.nodes.delete("node-b")
    with pytest.raises(ApiError) as gone:
        await api.nodes.get("node-b")
    assert gone.value.reason == "NotFound"


async def test_managed_fields_keep_one_entry_per_manager_and_describe_shows_them(api: Api, connect_api, nats_url, bus_creds) -> None:
    await api.nodes.create(node("n1"))
    created = await api.pods.create(pod("web"))
    assert [(e.manager, e.operation) for e in created.metadata.managed_fields or ()] == [("admin", "Create")]
    assert created.metadata.managed_fields[0].time
    await (await connect_api(user="scheduler")).pods.bind("web", "n1")
    agent = (await connect_api(node="n1"))
    for phase in ("Running", "Running"):  # a second status write refreshes the entry, adds none
        current = await agent.pods.get("web")
        current.status.phase = phase
        await agent.pods.update_status(current)
    entries = (await api.pods.get("web")).metadata.managed_fields or []
    keys = [(e.manager, e.operation) for e in entries]
    assert sorted(keys) == sorted([("admin", "Create"), ("scheduler", "Update"), ("node-n1", "Update")])
    # a client cannot write managedFields of its own
    current = await api.pods.get("web")
    current.metadata.managed_fields = []
    current.metadata.labels["x"] = "y"
    updated = await api.pods.update(current)
    assert ("admin", "Create") in [(e.manager, e.operation) for e in updated.metadata.managed_fields or ()]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "flotilla.cli", "describe", "pod", "web", cwd=REPO,
        env={**os.environ, "FLOTILLA_NATS_URL": nats_url, **cli_creds(bus_creds)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    text = out.decode()
    section = text[text.index("Managed by:"):]
    lines = section.splitlines()
    assert lines[1].split() == ["Manager", "Operation", "Subresource", "Time"]
    body = "\n".join(lines[3:7])
    assert "scheduler" in body and "node-n1" in body and "admin" in body and "Create" in body
    if HAS_SUBRESOURCE:
        assert any(line.split()[:3] == ["node-n1", "Update", "status"] for line in lines[3:7])


async def test_authorization_off_lets_every_principal_through_but_keeps_the_node_restriction(apiserver, nc, connect_api) -> None:
    await apiserver(1, "--authorization", "off")
    reader = (await connect_api(user="reader"))
    made = await reader.pods.create(pod("by-reader", "node-b"))
    assert [(e.manager, e.operation) for e in made.metadata.managed_fields or ()] == [("reader", "Create")]
    await forbidden((await connect_api(node="node-a")).pods.delete("by-reader"))


async def test_authorization_config_replaces_the_table(apiserver, nc, tmp_path) -> None:
    cfg = tmp_path / "rbac.yaml"
    cfg.write_text("roles:\n  creator:\n  - verbs: [create]\n    resources: [pods]\n"
                   "  namespace-reader:\n  - verbs: [get]\n    resources: [namespaces]\n"
                   "bindings:\n- {role: creator, principals: [\"ci-*\"]}\n- {role: namespace-reader, principals: [admin]}\n")
    await apiserver(1, "--authorization-config", str(cfg))
    ci = Api(nc, user="ci-7")
    await ci.pods.create(pod("from-ci"))
    err = await forbidden(ci.pods.get("from-ci"))
    assert err.message == 'user "ci-7" cannot get pods: role creator allows create on pods'
    # the built-in table is gone: the admin has only what this one gives it
    assert (await Api(nc).namespaces.get("default")).metadata.name == "default"
    err = await forbidden(Api(nc).pods.get("from-ci"))
    assert err.message == 'user "admin" cannot get pods: no rule of its roles (namespace-reader) covers pods'
    await forbidden(Api(nc, user="ci-7").pods.delete("from-ci"))
