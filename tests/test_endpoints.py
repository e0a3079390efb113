"""The endpoints controller against a real API server: pods are created through the API and their
status (IP, Ready, phase) written as a node agent would, no node agent runs. Also the CLI's
`get endpoints` and `describe service` through the real CLI entry point."""
from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from conftest import cli_env

from flotilla.printers import endpoints_text
from schemas import SYSTEM_NAMESPACE, ApiError, Condition, Endpoints, Pod, Service
from services.endpoints.subsets import compute

REPO = Path(__file__).resolve().parent.parent
NODE = "ep-node"


def pod_body(name: str, labels: dict[str, str], ports: list[dict] | None = None) -> dict:
    return {"metadata": {"name": name, "labels": labels},
            "spec": {"containers": [{"name": "c", "image": "img", "command": ["sleep", "3600"],
                                     "ports": ports or []}]}}


def svc_body(name: str, selector: dict[str, str] | None, ports: list[dict] | None = None,
             labels: dict[str, str] | None = None, **spec) -> dict:
    body: dict = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": labels or {}},
                  "spec": {"ports": ports or [{"name": "http", "port": 80, "targetPort": 8080}], **spec}}
    if selector is not None:
        body["spec"]["selector"] = selector
    return body


async def set_status(api, name: str, ip: str | None, ready: bool, phase: str = "Running") -> Pod:
    """Write the pod's status as its node agent would (IP, phase, Ready condition)."""
    pod = await api.pods.get(name)
    pod.status.phase = phase
    pod.status.pod_ip = ip
    pod.status.conditions = [c for c in pod.status.conditions if c.type != "Ready"] + [
        Condition(type="Ready", status="True" if ready else "False")]
    return await api.pods.update_status(pod)


async def make_pod(api, name: str, labels: dict[str, str], ip: str | None, ready: bool,
                   ports: list[dict] | None = None) -> Pod:
    await api.pods.create(pod_body(name, labels, ports))
    await api.pods.bind(name, NODE)
    return await set_status(api, name, ip, ready)


async def get_ep(api, name: str) -> Endpoints | None:
    try:
        return await api.endpoints.get(name)
    except ApiError as exc:  # NotFound until the controller writes it
        if exc.reason == "NotFound":
            return None
        raise


def ready_ips(ep: Endpoints | None) -> list[str]:
    return [a.ip for s in ep.subsets for a in s.addresses] if ep else []


def not_ready_ips(ep: Endpoints | None) -> list[str]:
    return [a.ip for s in ep.subsets for a in s.not_ready_addresses] if ep else []


async def ep_where(api, wait_for, name: str, check, what: str, timeout: float = 20) -> Endpoints:
    async def probe():
        ep = await get_ep(api, name)
        return ep if ep is not None and check(ep) else None
    return await wait_for(probe, timeout, what)


@pytest.fixture
async def epc(api, start_service):
    start_service("endpoints", "--identity", "epc-a", "--lease-duration", "2", "--log-level", "debug")
    return api


# ---- the pure computation ---------------------------------------------------------------------------

def _pod(name: str, ip: str | None, ready: bool = True, ports: list[dict] | None = None, **status) -> Pod:
    body = pod_body(name, {"app": "x"}, ports)
    body["metadata"].update(namespace="default", uid=f"uid-{name}")
    body["spec"]["nodeName"] = NODE
    body["status"] = {"podIP": ip, "phase": "Running",
                      "conditions": [{"type": "Ready", "status": "True" if ready else "False"}], **status}
    return msgspec.convert(body, Pod)


def test_compute_groups_by_port_set_and_sorts() -> None:
    svc = msgspec.convert(svc_body("s", {"app": "x"}, [{"name": "web", "port": 80, "targetPort": "web"}]), Service)
    pods = [_pod("b", "127.64.0.10", ports=[{"name": "web", "containerPort": 8080}]),
            _pod("a", "127.64.0.9", ports=[{"name": "web", "containerPort": 8080}]),
            _pod("c", "127.64.0.2", ready=False, ports=[{"name": "web", "containerPort": 9090}]),
            _pod("d", "127.64.0.3", ports=[{"name": "other", "containerPort": 7070}]),
            _pod("e", None, ports=[{"name": "web", "containerPort": 8080}])]
    result = compute(svc, pods)
    assert [([a.ip for a in s.addresses], [a.ip for a in s.not_ready_addresses], [p.port for p in s.ports])
            for s in result.subsets] == [(["127.64.0.9", "127.64.0.10"], [], [8080]), ([], ["127.64.0.2"], [9090])]
    first = result.subsets[0].addresses[0]
    assert (first.node_name, first.target_ref.kind, first.target_ref.name, first.target_ref.uid) == \
        (NODE, "Pod", "a", "uid-a")
    assert [(p.pod, p.target) for p in result.problems] == [("default/d", "web")]
    # The same pods in another order encode identically (what the no-write comparison relies on).
    assert msgspec.json.encode(compute(svc, pods[::-1]).subsets) == msgspec.json.encode(result.subsets)


def test_endpoints_text_like_kubectl() -> None:
    ep = msgspec.convert({"metadata": {"name": "e"}, "subsets": [
        {"addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}],
         "ports": [{"name": "a", "port": 1}, {"name": "b", "port": 2}]}]}, Endpoints)
    # Port by port, each with every address (kubectl's formatEndpoints), then "+ N more...".
    assert endpoints_text(ep) == "10.0.0.1:1,10.0.0.2:1,10.0.0.1:2 + 1 more..."
    assert endpoints_text(ep, port_name="b") == "10.0.0.1:2,10.0.0.2:2"
    assert endpoints_text(msgspec.convert({"metadata": {"name": "e"}}, Endpoints)) == "<none>"


# ---- the controller ---------------------------------------------------------------------------------

async def test_ready_split_labels_owner_and_publish_not_ready(epc, wait_for) -> None:
    api = epc
    svc = await api.services.create(svc_body("web", {"app": "web"}, labels={"tier": "front"}))
    await make_pod(api, "web-a", {"app": "web"}, "127.64.1.20", ready=True)
    await make_pod(api, "web-b", {"app": "web"}, "127.64.1.3", ready=False)
    await make_pod(api, "web-noip", {"app": "web"}, None, ready=False)
    await make_pod(api, "other", {"app": "other"}, "127.64.1.4", ready=True)
    ep = await ep_where(api, wait_for, "web", lambda e: ready_ips(e) == ["127.64.1.20"]
                        and not_ready_ips(e) == ["127.64.1.3"], "one ready, one not-ready address")
    (subset,) = ep.subsets
    assert [(p.name, p.port, p.protocol) for p in subset.ports] == [("http", 8080, "TCP")]
    addr = subset.addresses[0]
    assert addr.node_name == NODE and addr.target_ref.kind == "Pod" and addr.target_ref.name == "web-a"
    assert addr.target_ref.namespace == "default"
    assert addr.target_ref.uid == (await api.pods.get("web-a")).metadata.uid
    assert ep.metadata.labels == {"tier": "front"}
    assert [(r.kind, r.name, r.uid) for r in ep.metadata.owner_references] == [("Service", "web", svc.metadata.uid)]

    # b becomes ready: both ready, sorted by address (numerically: .3 before .20).
    await set_status(api, "web-b", "127.64.1.3", ready=True)
    await ep_where(api, wait_for, "web", lambda e: ready_ips(e) == ["127.64.1.3", "127.64.1.20"]
                   and not not_ready_ips(e), "both ready")
    # a stops being ready, then the Service publishes not-ready addresses: both under addresses.
    await set_status(api, "web-a", "127.64.1.20", ready=False)
    await ep_where(api, wait_for, "web", lambda e: not_ready_ips(e) == ["127.64.1.20"], "a not ready")
    await api.services.patch("web", {"spec": {"publishNotReadyAddresses": True}, "metadata": {"labels": {"tier": "x"}}})
    ep = await ep_where(api, wait_for, "web", lambda e: ready_ips(e) == ["127.64.1.3", "127.64.1.20"]
                        and not not_ready_ips(e), "not-ready published")
    assert ep.metadata.labels == {"tier": "x"}  # the Service's labels follow too


async def test_relabelled_pod_selector_change_and_deleted_endpoints_put_back(epc, wait_for) -> None:
    api = epc
    await api.services.create(svc_body("web", {"app": "web"}))
    await make_pod(api, "p-1", {"app": "web"}, "127.64.9.1", True)
    await make_pod(api, "p-2", {"app": "web"}, "127.64.9.2", True)
    await make_pod(api, "q-1", {"app": "api"}, "127.64.9.3", True)
    await ep_where(api, wait_for, "web", lambda e: ready_ips(e) == ["127.64.9.1", "127.64.9.2"], "both web pods")
    await asyncio.sleep(0.5)  # nothing else pending: only the relabel itself can trigger the next sync
    # A pod whose labels stop matching leaves (its old labels matched: the Service is synced).
    await api.pods.patch("p-2", {"metadata": {"labels": {"app": "gone"}}})
    await ep_where(api, wait_for, "web", lambda e: ready_ips(e) == ["127.64.9.1"], "the relabelled pod gone")
    # The selector changes: the other pods' addresses replace the old ones.
    await api.services.patch("web", {"spec": {"selector": {"app": "api"}}})
    await ep_where(api, wait_for, "web", lambda e: ready_ips(e) == ["127.64.9.3"], "the new selector's pod")
    # Somebody deletes the Endpoints: it is written again.
    await api.endpoints.delete("web")
    await ep_where(api, wait_for, "web", lambda e: ready_ips(e) == ["127.64.9.3"], "the Endpoints back")


async def test_terminating_and_finished_pods_are_dropped(epc, wait_for) -> None:
    api = epc
    await api.services.create(svc_body("web", {"app": "web"}))
    for i in range(1, 5):
        await make_pod(api, f"web-{i}", {"app": "web"}, f"127.64.2.{i}", ready=True)
    await ep_where(api, wait_for, "web", lambda e: len(ready_ips(e)) == 4, "four ready")
    await api.pods.delete("web-1")  # bound, no agent to confirm: stays terminating
    assert (await api.pods.get("web-1")).metadata.deletion_timestamp
    await set_status(api, "web-2", "127.64.2.2", ready=False, phase="Succeeded")
    await set_status(api, "web-3", "127.64.2.3", ready=False, phase="Failed")
    ep = await ep_where(api, wait_for, "web", lambda e: ready_ips(e) == ["127.64.2.4"], "only web-4 left")
    assert not_ready_ips(ep) == []


async def test_named_target_port_per_pod_and_missing_name_event(epc, wait_for) -> None:
    api = epc
    await api.services.create(svc_body("named", {"app": "n"}, [{"name": "web", "port": 80, "targetPort": "web"}]))
    await make_pod(api, "n-a", {"app": "n"}, "127.64.3.1", True, [{"name": "web", "containerPort": 8080}])
    await make_pod(api, "n-b", {"app": "n"}, "127.64.3.2", True, [{"name": "web", "containerPort": 9090}])
    await make_pod(api, "n-c", {"app": "n"}, "127.64.3.3", True, [{"name": "metrics", "containerPort": 7070}])

    def two_subsets(e: Endpoints) -> bool:
        return [(ready_ips(Endpoints(subsets=[s])), [p.port for p in s.ports]) for s in e.subsets] == [
            (["127.64.3.1"], [8080]), (["127.64.3.2"], [9090])]
    ep = await ep_where(api, wait_for, "named", two_subsets, "a subset per resolved port")
    assert all(s.ports[0].name == "web" for s in ep.subsets)

    async def warnings():
        evs = (await api.events.list(field_selector="involvedObject.name=named")).items
        return [e for e in evs if e.reason == "FailedToResolvePort"]
    (ev,) = await wait_for(warnings, 20, "a FailedToResolvePort event")
    assert ev.type == "Warning" and ev.involved_object.kind == "Service" and "n-c" in ev.message
    assert '"web"' in ev.message
    # More syncs of the same Service while the problem lasts: still one Event, counted once.
    await set_status(api, "n-a", "127.64.3.1", ready=False)
    await ep_where(api, wait_for, "named", lambda e: not_ready_ips(e) == ["127.64.3.1"], "n-a not ready")
    await set_status(api, "n-a", "127.64.3.1", ready=True)
    await ep_where(api, wait_for, "named", two_subsets, "n-a ready again")
    (ev,) = await warnings()
    assert (ev.count or 1) == 1


async def test_empty_selector_match_selectorless_untouched_and_delete(epc, wait_for) -> None:
    api = epc
    # A hand-written Endpoints of a selector-less Service (how the proxy and DNS tests work).
    await api.services.create(svc_body("manual", None))
    manual = await api.endpoints.create({"metadata": {"name": "manual"}, "subsets": [
        {"addresses": [{"ip": "127.64.4.1"}], "ports": [{"name": "http", "port": 8080}]}]})
    await make_pod(api, "lonely", {"app": "lonely"}, "127.64.4.2", True)
    await api.services.create(svc_body("nothing", {"app": "absent"}))
    ep = await ep_where(api, wait_for, "nothing", lambda e: True, "Endpoints for a selector matching nothing")
    assert ep.subsets == []
    # A selector-ful Service made after the hand-written one proves the controller has synced past it.
    await api.services.create(svc_body("lonely", {"app": "lonely"}))
    await ep_where(api, wait_for, "lonely", lambda e: ready_ips(e) == ["127.64.4.2"], "lonely's endpoint")
    assert (await api.endpoints.get("manual")).metadata.resource_version == manual.metadata.resource_version

    # Deleting the Services: the controller's Endpoints go, the hand-written one stays.
    await api.services.delete("lonely")
    await api.services.delete("manual")
    await wait_for(lambda: _gone(api, "lonely"), 20, "lonely's Endpoints deleted")
    await api.services.delete("nothing")
    await wait_for(lambda: _gone(api, "nothing"), 20, "nothing's Endpoints deleted")
    kept = await api.endpoints.get("manual")
    assert kept.metadata.resource_version == manual.metadata.resource_version


async def _gone(api, name: str) -> bool:
    return await get_ep(api, name) is None


async def test_burst_of_200_pod_changes_is_a_handful_of_writes(epc, wait_for) -> None:
    api = epc
    n = 200
    await api.services.create(svc_body("burst", {"app": "burst"}))
    for start in range(0, n, 50):
        await asyncio.gather(*(make_pod(api, f"b-{i}", {"app": "burst"}, f"127.64.5.{i + 1}", False)
                               for i in range(start, start + 50)))
    ep = await ep_where(api, wait_for, "burst", lambda e: len(not_ready_ips(e)) == n, f"{n} not-ready addresses", 60)
    versions: list[str] = []

    async def watch() -> None:
        async for type_, obj in api.endpoints.watch("default", field_selector="metadata.name=burst",
                                                    resource_version=ep.metadata.resource_version):
            versions.append(obj.metadata.resource_version)

    watcher = asyncio.create_task(watch())
    try:
        # 200 status writes in 20 waves of 10, as the node agents of a busy cluster send them: each
        # wave alone would be a sync (and a write) without batching.
        for start in range(0, n, 10):
            await asyncio.gather(*(set_status(api, f"b-{i}", f"127.64.5.{i + 1}", True)
                                   for i in range(start, start + 10)))
        await ep_where(api, wait_for, "burst", lambda e: len(ready_ips(e)) == n, f"{n} ready addresses", 60)
        await asyncio.sleep(1.0)  # any write still to come lands in the count
    finally:
        watcher.cancel()
        try:
            await watcher
        except asyncio.CancelledError:
            pass
    assert 1 <= len(set(versions)) <= 10, f"{len(set(versions))} Endpoints writes for {n} pod changes"


async def test_no_write_when_nothing_changed(api, start_service, wait_for) -> None:
    first = start_service("endpoints", "--identity", "epc-1", "--lease-duration", "2")
    await api.services.create(svc_body("steady", {"app": "steady"}))
    for i in range(3):
        await make_pod(api, f"s-{i}", {"app": "steady"}, f"127.64.6.{i + 1}", i != 1)
    ep = await ep_where(api, wait_for, "steady", lambda e: len(ready_ips(e)) == 2 and len(not_ready_ips(e)) == 1,
                        "steady endpoints")
    rv = ep.metadata.resource_version
    # Changes that move nothing the Endpoints hold: an annotation on the Service, a pod status write
    # with the same IP and readiness.
    await api.services.patch("steady", {"metadata": {"annotations": {"touched": "1"}}})
    pod = await api.pods.get("s-0")
    pod.status.start_time = "2026-01-01T00:00:00Z"
    await api.pods.update_status(pod)
    # Two fresh leaders, each resyncing every Service on taking over.
    proc = first
    for round_ in range(2):
        proc.stop()
        proc = start_service("endpoints", "--identity", f"epc-r{round_}", "--lease-duration", "2")
        probe = f"probe-{round_}"
        await api.services.create(svc_body(probe, {"app": probe}))
        await ep_where(api, wait_for, probe, lambda e: True, f"the new leader's Endpoints for {probe}", 30)
        await asyncio.sleep(0.5)  # the resync's syncs and any batched one are done by now
        assert (await api.endpoints.get("steady")).metadata.resource_version == rv


async def _holder(api) -> str | None:
    try:
        lease = await api.leases.get("flotilla-endpoints", SYSTEM_NAMESPACE)
    except ApiError as exc:
        if exc.reason == "NotFound":
            return None
        raise
    return lease.spec.holder_identity


async def test_leader_elected_failover_after_kill(api, start_service, wait_for) -> None:
    procs = {ident: start_service("endpoints", "--identity", ident, "--lease-duration", "2")
             for ident in ("epc-x", "epc-y")}
    await api.services.create(svc_body("web", {"app": "web"}))
    await make_pod(api, "w-1", {"app": "web"}, "127.64.7.1", True)
    await ep_where(api, wait_for, "web", lambda e: ready_ips(e) == ["127.64.7.1"], "the first endpoint", 30)
    leader = await wait_for(lambda: _holder(api), 20, "a lease holder")
    assert leader in procs
    procs[leader].kill()  # kill -9: no lease release
    await make_pod(api, "w-2", {"app": "web"}, "127.64.7.2", True)
    await ep_where(api, wait_for, "web", lambda e: ready_ips(e) == ["127.64.7.1", "127.64.7.2"],
                   "the standby to take over and add the second endpoint", 40)
    (other,) = set(procs) - {leader}
    assert await _holder(api) == other


# ---- the CLI ----------------------------------------------------------------------------------------

def cli(url: str, *args: str) -> str:
    env = {**cli_env(url), "FLOTILLA_NATS_URL": url}
    result = subprocess.run([sys.executable, "-m", "flotilla.cli", *args], capture_output=True, text=True,
                            env=env, cwd=REPO, timeout=60)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


async def test_cli_get_endpoints_and_describe_service(epc, nats_url, wait_for) -> None:
    api = epc
    await api.services.create(svc_body("web", {"app": "web"}, [{"name": "http", "port": 80, "targetPort": "http"}],
                                       sessionAffinity="ClientIP"))
    await api.services.create(svc_body("empty", {"app": "absent"}))
    for i in range(1, 5):
        await make_pod(api, f"w-{i}", {"app": "web"}, f"127.64.8.{i}", True, [{"name": "http", "containerPort": 8080}])
    await make_pod(api, "w-bad", {"app": "web"}, "127.64.8.9", True)  # declares no port "http"
    await ep_where(api, wait_for, "web", lambda e: len(ready_ips(e)) == 4, "four endpoints")
    await ep_where(api, wait_for, "empty", lambda e: True, "the empty Endpoints")

    out = await asyncio.to_thread(cli, nats_url, "get", "endpoints")
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()}
    assert rows["NAME"] == ["ENDPOINTS", "AGE"]
    assert rows["web"][:3] == ["127.64.8.1:8080,127.64.8.2:8080,127.64.8.3:8080", "+", "1"]
    assert rows["web"][3] == "more..."
    assert rows["empty"][0] == "<none>"

    async def described():
        text = await asyncio.to_thread(cli, nats_url, "describe", "service", "web")
        return text if "FailedToResolvePort" in text else None
    text = await wait_for(described, 30, "describe showing the port warning")
    fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in text.splitlines()) if v}
    assert fields["Type"] == "ClusterIP"
    assert fields["Port"] == "http  80/TCP"
    assert fields["TargetPort"] == "http/TCP"
    assert fields["Endpoints"] == "127.64.8.1:8080,127.64.8.2:8080,127.64.8.3:8080 + 1 more..."
    assert fields["Session Affinity"] == "ClientIP"
    assert "IP" in fields
    assert "Warning" in text and "w-bad" in text
