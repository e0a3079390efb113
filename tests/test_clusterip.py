"""Service ClusterIP and NodePort allocation in the API server: one record per value in the state log
(`ipaddresses._.<ip>`, `servicenodeports._.<protocol>-<port>`), with real nats-server and real API
server processes. Requests are plain JSON on the documented subjects, as `nats req` sends them."""
from __future__ import annotations

import asyncio
import ipaddress
import json
import random
import uuid
from typing import Any

import nats.js.errors
import pytest
from nats.aio.client import Client

BUCKET = "flotilla"
DEFAULT_NET = ipaddress.ip_network("127.128.0.0/16")


async def call(nc: Client, resource: str, verb: str, body: Any, timeout: float = 10.0) -> dict:
    msg = await nc.request(f"flo.api.v1.{resource}.{verb}", json.dumps(body).encode(), timeout=timeout)
    return json.loads(msg.data)


async def ok(nc: Client, resource: str, verb: str, body: Any, timeout: float = 10.0) -> dict:
    reply = await call(nc, resource, verb, body, timeout)
    assert reply.get("kind") != "Status", f"{resource}.{verb} failed: {reply}"
    return reply


async def invalid(nc: Client, resource: str, verb: str, body: Any, field: str) -> dict:
    reply = await call(nc, resource, verb, body)
    assert reply.get("kind") == "Status" and (reply["code"], reply["reason"]) == (422, "Invalid"), reply
    assert reply["details"]["causes"][0]["field"] == field, reply
    assert field in reply["message"]
    return reply


async def missing(nc: Client, resource: str, name: str, namespace: str | None = "default") -> bool:
    body = {"name": name} if namespace is None else {"namespace": namespace, "name": name}
    reply = await call(nc, resource, "get", body)
    return reply.get("kind") == "Status" and reply["code"] == 404


def svc(name: str, **spec: Any) -> dict:
    return {"kind": "Service", "metadata": {"name": name},
            "spec": {"selector": {"app": name}, "ports": [{"port": 80}], **spec}}


def random_ip() -> str:
    """Inside the default range, outside its first 16 addresses (the shared rule for explicit IPs)."""
    return f"127.128.{random.randint(1, 254)}.{random.randint(16, 254)}"


def dynamic(ip: str, net: ipaddress.IPv4Network = DEFAULT_NET) -> bool:
    addr = ipaddress.ip_address(ip)
    return addr in net and int(addr) - int(net.network_address) >= 16 and addr != net.broadcast_address


async def records(nc: Client, resource: str) -> list[dict]:
    return (await ok(nc, resource, "list", {}))["items"]


async def test_allocation_in_range_unique_and_recorded(apiserver, nc: Client) -> None:
    await apiserver(1)
    created = [await ok(nc, "services", "create", svc(f"web-{i}")) for i in range(20)]
    ips = [s["spec"]["clusterIP"] for s in created]
    assert len(set(ips)) == 20, ips
    assert all(dynamic(ip) for ip in ips), ips
    assert all(s["spec"]["clusterIPs"] == [s["spec"]["clusterIP"]] for s in created)
    # Each address has its record, pointing at its Service by name and uid.
    for s in created:
        rec = await ok(nc, "ipaddresses", "get", {"name": s["spec"]["clusterIP"]})
        assert rec["kind"] == "IPAddress" and rec["apiVersion"] == "networking.k8s.io/v1"
        ref = rec["spec"]["parentRef"]
        assert (ref["resource"], ref["namespace"], ref["name"], ref["uid"]) == \
            ("services", "default", s["metadata"]["name"], s["metadata"]["uid"])
    # Headless and ExternalName Services get no address and leave no record.
    headless = await ok(nc, "services", "create", svc("headless", clusterIP="None"))
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["clusterIPs"] == ["None"]
    ext = await ok(nc, "services", "create", {"kind": "Service", "metadata": {"name": "ext"},
                                              "spec": {"type": "ExternalName", "externalName": "example.com"}})
    assert "clusterIP" not in ext["spec"] and "clusterIPs" not in ext["spec"]
    assert sorted(r["metadata"]["name"] for r in await records(nc, "ipaddresses")) == sorted(ips)
    # Users can look at the records but not write them.
    reply = await call(nc, "ipaddresses", "create", {"kind": "IPAddress", "metadata": {"name": random_ip()}})
    assert (reply["code"], reply["reason"]) == (400, "BadRequest"), reply
    reply = await call(nc, "ipaddresses", "delete", {"name": ips[0]})
    assert (reply["code"], reply["reason"]) == (400, "BadRequest"), reply


async def test_explicit_cluster_ip_free_taken_out_of_range(apiserver, nc: Client) -> None:
    await apiserver(1)
    ip = random_ip()
    first = await ok(nc, "services", "create", svc("first", clusterIP=ip))
    assert first["spec"]["clusterIP"] == ip and first["spec"]["clusterIPs"] == [ip]
    # The first 16 addresses are given on request (cluster DNS sits at .10).
    dns = await ok(nc, "services", "create", svc("dns", clusterIP="127.128.0.10"))
    assert dns["spec"]["clusterIP"] == "127.128.0.10"
    for name, body, in (("taken", svc("taken", clusterIP=ip)),
                        ("outside", svc("outside", clusterIP=f"127.129.{random.randint(0, 255)}.20")),
                        ("network", svc("network", clusterIP="127.128.0.0")),
                        ("broadcast", svc("broadcast", clusterIP="127.128.255.255")),
                        ("mismatch", svc("mismatch", clusterIPs=[random_ip()], clusterIP=random_ip()))):
        field = "spec.clusterIPs" if name == "mismatch" else "spec.clusterIP"
        await invalid(nc, "services", "create", body, field)
        assert await missing(nc, "services", name), f"{name} was stored"
    # Nothing was recorded for the refused ones: the taken address still belongs to the first Service.
    recs = await records(nc, "ipaddresses")
    assert sorted(r["metadata"]["name"] for r in recs) == sorted([ip, "127.128.0.10"])
    owner = next(r for r in recs if r["metadata"]["name"] == ip)["spec"]["parentRef"]
    assert owner["uid"] == first["metadata"]["uid"]
    # clusterIPs alone names the address too.
    other = random_ip()
    while other == ip:
        other = random_ip()
    by_list = await ok(nc, "services", "create", svc("by-list", clusterIPs=[other]))
    assert by_list["spec"]["clusterIP"] == other


async def test_cluster_ip_immutable_kept_and_released_on_delete(apiserver, nc: Client) -> None:
    await apiserver(1)
    created = await ok(nc, "services", "create", svc("web"))
    ip = created["spec"]["clusterIP"]
    other = random_ip()
    while other == ip:
        other = random_ip()
    changed = json.loads(json.dumps(created))
    changed["spec"]["clusterIP"] = other
    changed["spec"]["clusterIPs"] = [other]
    await invalid(nc, "services", "update", changed, "spec.clusterIP")
    await invalid(nc, "services", "patch", {"namespace": "default", "name": "web",
                                            "patch": {"spec": {"clusterIP": other, "clusterIPs": [other]}}},
                  "spec.clusterIP")
    await invalid(nc, "services", "patch", {"namespace": "default", "name": "web",
                                            "patch": {"spec": {"clusterIP": "None", "clusterIPs": ["None"]}}},
                  "spec.clusterIP")
    await invalid(nc, "services", "patch", {"namespace": "default", "name": "web", "patch": {"spec": {"clusterIP": other}}},
                  "spec.clusterIP")
    await invalid(nc, "services", "patch", {"namespace": "default", "name": "web", "patch": {"spec": {"clusterIPs": [other]}}},
                  "spec.clusterIPs")
    # An update that omits the address (as apply does) keeps it, and the generation does not move.
    omitted = json.loads(json.dumps(created))
    del omitted["spec"]["clusterIP"], omitted["spec"]["clusterIPs"]
    kept = await ok(nc, "services", "update", omitted)
    assert kept["spec"]["clusterIP"] == ip and kept["spec"]["clusterIPs"] == [ip]
    assert kept["metadata"]["generation"] == created["metadata"]["generation"]
    patched = await ok(nc, "services", "patch", {"namespace": "default", "name": "web",
                                                 "patch": {"spec": {"selector": {"app": "other"}}}})
    assert patched["spec"]["clusterIP"] == ip
    assert (await ok(nc, "ipaddresses", "get", {"name": ip}))["spec"]["parentRef"]["uid"] == created["metadata"]["uid"]
    assert await missing(nc, "ipaddresses", other, None)
    # Delete releases the address: it can be asked for again at once.
    await ok(nc, "services", "delete", {"namespace": "default", "name": "web"})
    assert await missing(nc, "ipaddresses", ip, None)
    again = await ok(nc, "services", "create", svc("web-again", clusterIP=ip))
    assert again["spec"]["clusterIP"] == ip
    rec = await ok(nc, "ipaddresses", "get", {"name": ip})
    assert rec["spec"]["parentRef"]["uid"] == again["metadata"]["uid"]


async def test_no_reuse_after_restart(apiserver, nc: Client) -> None:
    # A /27 has 15 dynamic addresses (32 - the first 16 - broadcast): random picks by a replica that
    # forgot the first ones would collide almost surely.
    net = ipaddress.ip_network(f"127.128.{random.randint(1, 254)}.{random.choice([32, 64, 96, 128, 160, 192])}/27")
    flags = ("--service-cluster-ip-range", str(net))
    [first] = await apiserver(1, *flags)
    before = [(await ok(nc, "services", "create", svc(f"a-{i}")))["spec"]["clusterIP"] for i in range(8)]
    first.stop()
    await apiserver(1, *flags)
    after = [(await ok(nc, "services", "create", svc(f"b-{i}")))["spec"]["clusterIP"] for i in range(7)]
    ips = before + after
    assert len(set(ips)) == 15 and all(dynamic(ip, net) for ip in ips), ips
    full = await call(nc, "services", "create", svc("c-full"))
    assert (full["code"], full["reason"]) == (500, "InternalError") and "full" in full["message"], full
    assert await missing(nc, "services", "c-full")
    assert len(await records(nc, "ipaddresses")) == 15


async def test_two_replicas_200_concurrent_creates_get_distinct_ips(apiserver, nc: Client) -> None:
    # 495 dynamic addresses for 200 Services: random picks of two replicas collide often.
    net = ipaddress.ip_network(f"127.128.{random.randrange(2, 254, 2)}.0/23")
    await apiserver(2, "--service-cluster-ip-range", str(net))
    created = await asyncio.gather(*(ok(nc, "services", "create", svc(f"svc-{i}"), timeout=60) for i in range(200)))
    ips = [s["spec"]["clusterIP"] for s in created]
    assert len(set(ips)) == 200 and all(dynamic(ip, net) for ip in ips)
    recs = await records(nc, "ipaddresses")
    assert len(recs) == 200
    owners = {r["metadata"]["name"]: r["spec"]["parentRef"]["uid"] for r in recs}
    assert owners == {s["spec"]["clusterIP"]: s["metadata"]["uid"] for s in created}


def _leaked(kind: str, name: str, parent: str, uid: str, **spec: Any) -> bytes:
    """A record as a replica that crashed between allocating and storing its Service left it."""
    api_version = "networking.k8s.io/v1" if kind == "IPAddress" else "networking.flotilla.io/v1"
    return json.dumps({"kind": kind, "apiVersion": api_version,
                       "metadata": {"name": name, "uid": str(uuid.uuid4()), "creationTimestamp": "2026-01-01T00:00:00Z"},
                       "spec": {"parentRef": {"group": "", "resource": "services", "namespace": "default",
                                              "name": parent, "uid": uid}, **spec}}).encode()


async def test_repair_frees_leaked_records(apiserver, nc: Client, wait_for) -> None:
    await apiserver(1, "--service-allocation-repair-after", "2")
    kv = await nc.jetstream().key_value(BUCKET)
    real = await ok(nc, "services", "create", svc("real", type="NodePort"))
    real_ip, real_port = real["spec"]["clusterIP"], real["spec"]["ports"][0]["nodePort"]
    ghost_ip, stale_ip = random_ip(), random_ip()
    while len({ghost_ip, stale_ip, real_ip}) < 3:
        ghost_ip, stale_ip = random_ip(), random_ip()
    ghost_port = 30000 if real_port != 30000 else 30001
    # Parent never stored; parent name taken by a Service with another uid; a NodePort without Service.
    await kv.create(f"ipaddresses._.{ghost_ip.replace('.', '_')}", _leaked("IPAddress", ghost_ip, "ghost", str(uuid.uuid4())))
    await kv.create(f"ipaddresses._.{stale_ip.replace('.', '_')}", _leaked("IPAddress", stale_ip, "real", str(uuid.uuid4())))
    await kv.create(f"servicenodeports._.tcp-{ghost_port}",
                    _leaked("ServiceNodePort", f"tcp-{ghost_port}", "ghost", str(uuid.uuid4()), port=ghost_port, protocol="TCP"))

    async def gone(key: str) -> bool:
        try:
            await kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            return True
        return False

    for key in (f"ipaddresses._.{ghost_ip.replace('.', '_')}", f"ipaddresses._.{stale_ip.replace('.', '_')}",
                f"servicenodeports._.tcp-{ghost_port}"):
        await wait_for(lambda key=key: gone(key), timeout=30, what=f"repair to free {key}")
    # The freed values can be had again; the real Service's records were left alone.
    again = await ok(nc, "services", "create", svc("again", type="NodePort", clusterIP=ghost_ip,
                                                   ports=[{"port": 80, "nodePort": ghost_port}]))
    assert again["spec"]["clusterIP"] == ghost_ip and again["spec"]["ports"][0]["nodePort"] == ghost_port
    assert (await ok(nc, "ipaddresses", "get", {"name": real_ip}))["spec"]["parentRef"]["uid"] == real["metadata"]["uid"]
    assert (await ok(nc, "servicenodeports", "get", {"name": f"tcp-{real_port}"}))["spec"]["parentRef"]["uid"] == \
        real["metadata"]["uid"]


async def test_node_ports_allocated_explicit_conflict_and_released(apiserver, nc: Client) -> None:
    await apiserver(1, "--service-node-port-range", "30100-30199")
    ports = [{"name": "http", "port": 80}, {"name": "https", "port": 443}, {"name": "dns", "port": 53, "protocol": "UDP"}]
    web = await ok(nc, "services", "create", svc("web", type="NodePort", ports=ports))
    got = [p["nodePort"] for p in web["spec"]["ports"]]
    assert all(30100 <= n <= 30199 for n in got) and len(set(got[:2])) == 2, got
    recs = {r["metadata"]["name"]: r for r in await records(nc, "servicenodeports")}
    assert set(recs) == {f"tcp-{got[0]}", f"tcp-{got[1]}", f"udp-{got[2]}"}
    assert all(r["spec"]["parentRef"]["uid"] == web["metadata"]["uid"] for r in recs.values())
    free = next(n for n in range(30100, 30200) if n not in got)
    explicit = await ok(nc, "services", "create", svc("explicit", type="LoadBalancer", ports=[{"port": 80, "nodePort": free}]))
    assert explicit["spec"]["ports"][0]["nodePort"] == free
    # The same port for the other protocol is another value.
    udp = await ok(nc, "services", "create", svc("udp", type="NodePort", ports=[{"port": 53, "protocol": "UDP", "nodePort": free}]))
    assert udp["spec"]["ports"][0]["nodePort"] == free
    for name, spec, field in (
            ("taken", {"type": "NodePort", "ports": [{"port": 1, "name": "a"}, {"port": 2, "name": "b", "nodePort": got[1]}]},
             "spec.ports[1].nodePort"),
            ("outside", {"type": "NodePort", "ports": [{"port": 1, "nodePort": 30200}]}, "spec.ports[0].nodePort"),
            ("clusterip", {"type": "ClusterIP", "ports": [{"port": 1, "nodePort": 30150}]}, "spec.ports[0].nodePort"),
            ("headless-np", {"type": "NodePort", "clusterIP": "None"}, "spec.clusterIP")):
        await invalid(nc, "services", "create", svc(name, **spec), field)
        assert await missing(nc, "services", name), f"{name} was stored"
    # Refusals leave no records behind (the clusterIP and port 1 that "taken" claimed first included).
    assert len(await records(nc, "servicenodeports")) == 5
    assert len(await records(nc, "ipaddresses")) == 3
    # Node ports are immutable unless changed; an update that omits them keeps them.
    omitted = json.loads(json.dumps(web))
    for p in omitted["spec"]["ports"]:
        del p["nodePort"]
    kept = await ok(nc, "services", "update", omitted)
    assert [p["nodePort"] for p in kept["spec"]["ports"]] == got
    await invalid(nc, "services", "patch", {"namespace": "default", "name": "web", "patch": {"spec": {
        "ports": [{"name": "http", "port": 80, "nodePort": free}, *kept["spec"]["ports"][1:]]}}}, "spec.ports[0].nodePort")
    # Changing a node port to a free one takes the new value and frees the old.
    moved = next(n for n in range(30100, 30200) if n not in (*got, free))
    changed = await ok(nc, "services", "patch", {"namespace": "default", "name": "web", "patch": {"spec": {
        "ports": [{"name": "http", "port": 80, "nodePort": moved}, *kept["spec"]["ports"][1:]]}}})
    assert changed["spec"]["ports"][0]["nodePort"] == moved
    assert await missing(nc, "servicenodeports", f"tcp-{got[0]}", None)
    # Type change away from NodePort drops and frees them.
    to_cluster_ip = await ok(nc, "services", "patch", {"namespace": "default", "name": "web",
                                                       "patch": {"spec": {"type": "ClusterIP"}}})
    assert all("nodePort" not in p for p in to_cluster_ip["spec"]["ports"])
    assert to_cluster_ip["spec"]["clusterIP"] == web["spec"]["clusterIP"]
    for name in (f"tcp-{moved}", f"tcp-{got[1]}", f"udp-{got[2]}"):
        assert await missing(nc, "servicenodeports", name, None)
    reuse = await ok(nc, "services", "create", svc("reuse", type="NodePort", ports=[{"port": 80, "nodePort": got[1]}]))
    assert reuse["spec"]["ports"][0]["nodePort"] == got[1]
    # Delete frees them too.
    await ok(nc, "services", "delete", {"namespace": "default", "name": "explicit"})
    assert await missing(nc, "servicenodeports", f"tcp-{free}", None)
    assert await missing(nc, "ipaddresses", explicit["spec"]["clusterIP"], None)
    taken_again = await ok(nc, "services", "create", svc("taken-again", type="NodePort", ports=[{"port": 80, "nodePort": free}]))
    assert taken_again["spec"]["ports"][0]["nodePort"] == free
    # Back to NodePort: fresh ports from the range.
    back = await ok(nc, "services", "patch", {"namespace": "default", "name": "web", "patch": {"spec": {"type": "NodePort"}}})
    assert all(30100 <= p["nodePort"] <= 30199 for p in back["spec"]["ports"])


async def test_external_name_switch_releases_and_allocates(apiserver, nc: Client) -> None:
    await apiserver(1)
    web = await ok(nc, "services", "create", svc("web"))
    ip = web["spec"]["clusterIP"]
    ext = await ok(nc, "services", "patch", {"namespace": "default", "name": "web",
                                             "patch": {"spec": {"type": "ExternalName", "externalName": "example.com"}}})
    assert "clusterIP" not in ext["spec"]
    assert await missing(nc, "ipaddresses", ip, None)
    back = await ok(nc, "services", "patch", {"namespace": "default", "name": "web",
                                              "patch": {"spec": {"type": "ClusterIP", "externalName": None}}})
    assert dynamic(back["spec"]["clusterIP"])
    rec = await ok(nc, "ipaddresses", "get", {"name": back["spec"]["clusterIP"]})
    assert rec["spec"]["parentRef"]["uid"] == web["metadata"]["uid"]


@pytest.mark.parametrize("flag,value", [("--service-cluster-ip-range", "127.128.0.0/29"),
                                        ("--service-node-port-range", "40000-30000")])
def test_bad_range_flags_refused(flag: str, value: str) -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "services.apiserver", flag, value], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2 and flag in out.stderr, out.stderr


async def test_services_stored_without_records_get_them(apiserver, nc: Client, wait_for) -> None:
    # As a Service stored before allocation existed (or with its record lost): the repair pass
    # records what it holds, so nobody else is given the same address or node port.
    await apiserver(1, "--service-allocation-repair-after", "2")
    kv = await nc.jetstream().key_value(BUCKET)
    ip, port, uid = random_ip(), random.randint(30000, 32767), str(uuid.uuid4())
    await kv.create("services.default.legacy", json.dumps({
        "kind": "Service", "apiVersion": "v1",
        "metadata": {"name": "legacy", "namespace": "default", "uid": uid, "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"type": "NodePort", "clusterIP": ip, "ports": [{"port": 80, "nodePort": port}]}}).encode())

    async def owner(resource: str, name: str) -> str | None:
        reply = await call(nc, resource, "get", {"name": name})
        return reply["spec"]["parentRef"]["uid"] if reply.get("kind") != "Status" else None

    await wait_for(lambda: owner("ipaddresses", ip), timeout=30, what="the legacy address recorded")
    await wait_for(lambda: owner("servicenodeports", f"tcp-{port}"), timeout=30, what="the legacy node port recorded")
    assert await owner("ipaddresses", ip) == uid and await owner("servicenodeports", f"tcp-{port}") == uid
    await invalid(nc, "services", "create", svc("copy", clusterIP=ip), "spec.clusterIP")
    await invalid(nc, "services", "create", svc("copy", type="NodePort", ports=[{"port": 80, "nodePort": port}]),
                  "spec.ports[0].nodePort")
    # Several repair passes later they are still there: the pass that frees leaks sees them held.
    await asyncio.sleep(3)
    assert await owner("ipaddresses", ip) == uid
