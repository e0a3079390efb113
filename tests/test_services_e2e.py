"""A Service end to end, with every part a real process: API server (ClusterIP allocation), scheduler,
replica controller, endpoints controller, node agent (pods as processes with readiness probes), and
the service proxy with cluster DNS. Traffic goes to the ClusterIP over real TCP on loopback."""
from __future__ import annotations

import asyncio
import random
import socket
from collections import Counter
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
from sockets import refused
from flotilla.natsserver import free_port
from schemas import ApiError

SERVER = """
import http.server, os
NAME = os.environ["POD_NAME"].encode()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(NAME)))
        self.end_headers()
        self.wfile.write(NAME)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer((os.environ["POD_IP"], 8080), H).serve_forever()
"""


def random_service_range() -> tuple[str, str]:
    """A /24 of its own in the Service range (so two runs never share a VIP) and the DNS address in it."""
    net = f"127.{random.randint(129, 250)}.{random.randint(1, 254)}"
    return f"{net}.0/24", f"{net}.10"


def http_get(ip: str, port: int, timeout: float = 5.0) -> str:
    with socket.create_connection((ip, port), timeout=timeout) as s:
        s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200"), head
    return body.decode()


async def hits(ip: str, port: int, n: int) -> Counter[str]:
    return Counter(await asyncio.gather(*(asyncio.to_thread(http_get, ip, port) for _ in range(n))))


async def test_service_clusterip_follows_readiness_replacement_and_dns(apiserver, nc, start_service, wait_for,
                                                                       tmp_path: Path) -> None:
    from services.lib.client import Api

    cidr, dns_ip = random_service_range()
    dns_port = free_port()
    await apiserver(1, "--service-cluster-ip-range", cidr)
    api = Api(nc)
    for svc in ("scheduler", "replicaset", "endpoints"):
        start_service(svc, "--identity", f"{svc}-e2e", "--lease-duration", "2")
    proxy = start_service("proxy", "--dns-address", dns_ip, "--dns-port", str(dns_port),
                          "--nodeport-addresses", "127.0.0.1")
    start_service("nodeagent", "--node-name", "svc-node", "--cpu", "16", "--memory", "32Gi",
                  "--heartbeat-seconds", "1", "--stop-pods-on-exit")

    down = tmp_path / "down"
    down.mkdir()
    await api.replicasets.create({
        "apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "web"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
                     "terminationGracePeriodSeconds": 1,
                     "containers": [{
                         "name": "web", "command": ["python3", "-c", SERVER],
                         "ports": [{"name": "http", "containerPort": 8080}],
                         "readinessProbe": {"exec": {"command": ["sh", "-c", f"test ! -e {down}/$(POD_NAME)"]},
                                            "periodSeconds": 1, "failureThreshold": 1}}]}}}})
    svc = await api.services.create({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}})
    vip = svc.spec.cluster_ip
    assert vip and vip.startswith(cidr.rsplit(".", 1)[0] + "."), vip

    async def ready_names() -> set[str] | None:
        try:
            ep = await api.endpoints.get("web")
        except ApiError as exc:
            if exc.reason == "NotFound":  # the endpoints controller has not written it yet
                return None
            raise
        names = {a.target_ref.name for s in ep.subsets for a in s.addresses if a.target_ref}
        return names if len(names) == 3 else None

    pods = await wait_for(ready_names, 90, "three ready endpoints")

    # 300 requests through the ClusterIP reach all three pods.
    async def serving() -> Counter[str] | None:
        # The proxy learns of the ready endpoints from its own watch, a moment after the API shows them:
        # until then it closes connections at once (a Service without endpoints rejects), or knows
        # only some of them.
        try:
            got = await hits(vip, 80, 30)
        except (OSError, AssertionError):
            return None
        return got if set(got) == pods else None  # until the proxy routes to all three

    seen = await wait_for(serving, 20, "the proxy routing to all three pods")
    counts = await hits(vip, 80, 300)
    assert set(counts) == pods, counts
    assert min(counts.values()) >= 30, counts  # round robin spreads them (100 each if exact)
    assert set(seen) <= pods

    # A pod whose readiness probe fails stops getting traffic, and gets it back when ready again.
    victim = sorted(pods)[0]
    (down / victim).touch()

    async def avoided() -> bool:
        return victim not in await hits(vip, 80, 30)

    await wait_for(avoided, 20, f"traffic to leave the not-ready pod {victim}")
    ep = await api.endpoints.get("web")
    assert victim in {a.target_ref.name for s in ep.subsets for a in s.not_ready_addresses if a.target_ref}
    (down / victim).unlink()

    async def back() -> bool:
        return victim in await hits(vip, 80, 30)

    await wait_for(back, 20, f"traffic to return to {victim}")

    # A deleted pod's replacement joins.
    gone = sorted(pods)[1]
    await api.pods.delete(gone, grace_period_seconds=0)

    async def replaced() -> set[str] | None:
        names = await ready_names()
        return names if names and gone not in names else None

    new_pods = await wait_for(replaced, 60, "a replacement pod ready in the Endpoints")
    (newcomer,) = new_pods - pods

    async def newcomer_served() -> bool:
        got = await hits(vip, 80, 30)
        return newcomer in got and gone not in got

    await wait_for(newcomer_served, 20, "traffic to reach the replacement")

    # Cluster DNS answers the Service name with the ClusterIP; other names in the zone do not exist.
    query = dns.message.make_query("web.default.svc.cluster.local", dns.rdatatype.A)
    reply = await asyncio.to_thread(dns.query.udp, query, dns_ip, timeout=5, port=dns_port)
    assert [r.address for rrset in reply.answer for r in rrset] == [vip]
    missing = dns.message.make_query("nope.default.svc.cluster.local", dns.rdatatype.A)
    reply = await asyncio.to_thread(dns.query.udp, missing, dns_ip, timeout=5, port=dns_port)
    assert reply.rcode() == dns.rcode.NXDOMAIN

    # Deleting the Service closes its listener.
    await api.services.delete("web")
    await wait_for(lambda: asyncio.to_thread(refused, vip, 80), 20, "the ClusterIP listener to close")
    assert proxy.alive
    assert "Traceback" not in proxy.log_text()
