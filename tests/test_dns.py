"""Cluster DNS (services/proxy/dns.py): a ClusterDns fed by real Informers against a real nats-server and
API server, serving on a real UDP+TCP port, asked with dnspython's client (and dig, when installed).

Services carry an explicit random clusterIP inside 127.128.0.0/16 (past its first 16 addresses) and no
selector, so their Endpoints are the hand-written ones below (no endpoints controller involved)."""
from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver
import pytest

from flotilla.natsserver import free_port
from requirements import need
from services.lib.informer import Informer
from services.proxy.dns import ClusterDns

HOST = "127.0.0.1"
QUERY_TIMEOUT = 5.0


def random_cluster_ip(taken: set[str] | None = None) -> str:
    while True:
        ip = f"127.128.{random.randint(1, 254)}.{random.randint(16, 254)}"
        if not taken or ip not in taken:
            return ip


def pod_ip(i: int) -> str:
    return f"127.64.{i // 250}.{i % 250 + 2}"


async def make_service(api: Any, name: str, cluster_ip: str, ports: list[dict[str, Any]] | None = None,
                       namespace: str = "default") -> Any:
    ports = ports or [{"name": "http", "port": 80, "targetPort": 8080}]
    return await api.services.create({"metadata": {"name": name, "namespace": namespace},
                                      "spec": {"clusterIP": cluster_ip, "ports": ports}})


async def make_endpoints(api: Any, name: str, ready: list[dict[str, Any]], not_ready: list[dict[str, Any]] | None = None,
                         ports: list[dict[str, Any]] | None = None, namespace: str = "default") -> Any:
    subset: dict[str, Any] = {"addresses": ready, "ports": ports or [{"name": "http", "port": 8080}]}
    if not_ready:
        subset["notReadyAddresses"] = not_ready
    return await api.endpoints.create({"metadata": {"name": name, "namespace": namespace}, "subsets": [subset]})


@contextlib.asynccontextmanager
async def cluster_dns(api: Any, wait_for: Any, domain: str = "cluster.local") -> AsyncIterator[tuple[ClusterDns, int]]:
    """Informers and the DNS server running in one TaskGroup; yields the server and its port."""
    services = Informer(api.services)
    endpoints = Informer(api.endpoints)
    server = ClusterDns(services, endpoints, domain)
    port = free_port(HOST)
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(services.run()), tg.create_task(endpoints.run()),
                 tg.create_task(server.serve(HOST, port))]
        try:
            await asyncio.wait_for(asyncio.gather(services.wait_synced(), endpoints.wait_synced()), 30)
            await wait_for(lambda: server.ports is not None, 10, "DNS server listening")
            yield server, port
        finally:
            for task in tasks:
                task.cancel()


async def udp(port: int, name: str, rdtype: str = "A", **kwargs: Any) -> dns.message.Message:
    """One query over UDP; the blocking client runs in a thread so the loop (and the server) keep going."""
    query = dns.message.make_query(name, rdtype, **kwargs)
    return await asyncio.to_thread(dns.query.udp, query, HOST, timeout=QUERY_TIMEOUT, port=port)


async def tcp(port: int, name: str, rdtype: str = "A", **kwargs: Any) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, **kwargs)
    return await asyncio.to_thread(dns.query.tcp, query, HOST, timeout=QUERY_TIMEOUT, port=port)


def resolver(port: int) -> dns.resolver.Resolver:
    r = dns.resolver.Resolver(configure=False)
    r.nameservers = [HOST]
    r.port = port
    r.timeout = r.lifetime = QUERY_TIMEOUT
    r.cache = None
    return r


def addresses(reply: dns.message.Message, rdtype: int = dns.rdatatype.A) -> set[str]:
    return {rd.address for rrset in reply.answer if rrset.rdtype == rdtype for rd in rrset}


async def raw_udp(port: int, payload: bytes, timeout: float = 1.0) -> bytes | None:
    """Send bytes as they are; the reply, or None when the server (rightly) stays silent."""
    def exchange() -> bytes | None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.sendto(payload, (HOST, port))
            try:
                return s.recv(65535)
            except TimeoutError:
                return None
    return await asyncio.to_thread(exchange)


# ---- the answers --------------------------------------------------------------------------------------

async def test_service_a_record_over_udp_tcp_and_resolver(api: Any, wait_for: Any) -> None:
    ip = random_cluster_ip()
    await make_service(api, "web", ip)
    async with cluster_dns(api, wait_for) as (_, port):
        for ask in (udp, tcp):
            reply = await ask(port, "web.default.svc.cluster.local")
            assert reply.rcode() == dns.rcode.NOERROR, reply
            assert reply.flags & dns.flags.AA
            assert addresses(reply) == {ip}
            assert [rrset.ttl for rrset in reply.answer] == [5]
        # Names are case-insensitive; the question comes back as it was asked.
        reply = await udp(port, "WEB.Default.SVC.Cluster.LOCAL")
        assert addresses(reply) == {ip}
        assert str(reply.question[0].name) == "WEB.Default.SVC.Cluster.LOCAL."
        answer = await asyncio.to_thread(resolver(port).resolve, "web.default.svc.cluster.local", "A")
        assert {rd.address for rd in answer} == {ip}


async def test_headless_service_answers_ready_pod_ips_and_hostnames(api: Any, wait_for: Any) -> None:
    await make_service(api, "db", "None", [{"name": "pg", "port": 5432}])
    ready = [{"ip": pod_ip(1), "hostname": "db-0"}, {"ip": pod_ip(2), "hostname": "db-1"}, {"ip": pod_ip(3)}]
    await make_endpoints(api, "db", ready, not_ready=[{"ip": pod_ip(4), "hostname": "db-3"}],
                         ports=[{"name": "pg", "port": 5432}])
    async with cluster_dns(api, wait_for) as (_, port):
        reply = await udp(port, "db.default.svc.cluster.local")
        assert reply.rcode() == dns.rcode.NOERROR
        assert addresses(reply) == {pod_ip(1), pod_ip(2), pod_ip(3)}  # the not-ready pod is not in it
        reply = await udp(port, "DB-1.db.default.svc.cluster.local")
        assert addresses(reply) == {pod_ip(2)}
        # A pod without a hostname answers by its address with dashes (CoreDNS' endpoint names).
        reply = await udp(port, f"{pod_ip(3).replace('.', '-')}.db.default.svc.cluster.local")
        assert addresses(reply) == {pod_ip(3)}
        for missing in ("db-3", "db-9"):
            reply = await udp(port, f"{missing}.db.default.svc.cluster.local")
            assert reply.rcode() == dns.rcode.NXDOMAIN, missing


async def test_srv_for_named_ports_with_addresses_in_additional(api: Any, wait_for: Any) -> None:
    ip = random_cluster_ip()
    await make_service(api, "web", ip, [{"name": "http", "port": 80, "targetPort": 8080},
                                        {"name": "metrics", "port": 9100, "protocol": "TCP"}])
    await make_service(api, "db", "None", [{"name": "pg", "port": 5432}])
    await make_endpoints(api, "db", [{"ip": pod_ip(1), "hostname": "db-0"}, {"ip": pod_ip(2), "hostname": "db-1"}],
                         ports=[{"name": "pg", "port": 15432}])
    async with cluster_dns(api, wait_for) as (_, port):
        reply = await udp(port, "_http._tcp.web.default.svc.cluster.local", "SRV")
        assert reply.rcode() == dns.rcode.NOERROR
        [srv] = [rd for rrset in reply.answer for rd in rrset]
        assert (srv.priority, srv.weight, srv.port) == (0, 100, 80)
        assert str(srv.target) == "web.default.svc.cluster.local."
        extra = {(str(rrset.name), rd.address) for rrset in reply.additional
                 if rrset.rdtype == dns.rdatatype.A for rd in rrset}
        assert extra == {("web.default.svc.cluster.local.", ip)}

        reply = await tcp(port, "_metrics._tcp.web.default.svc.cluster.local", "SRV")
        assert [rd.port for rrset in reply.answer for rd in rrset] == [9100]

        # Headless: one record per ready pod, its own name and the endpoint's port.
        reply = await udp(port, "_pg._tcp.db.default.svc.cluster.local", "SRV")
        srvs = {(str(rd.target), rd.port) for rrset in reply.answer for rd in rrset}
        assert srvs == {("db-0.db.default.svc.cluster.local.", 15432), ("db-1.db.default.svc.cluster.local.", 15432)}
        extra = {(str(rrset.name), rd.address) for rrset in reply.additional
                 if rrset.rdtype == dns.rdatatype.A for rd in rrset}
        assert extra == {("db-0.db.default.svc.cluster.local.", pod_ip(1)),
                         ("db-1.db.default.svc.cluster.local.", pod_ip(2))}

        for name in ("_nope._tcp.web.default.svc.cluster.local", "_http._udp.web.default.svc.cluster.local"):
            reply = await udp(port, name, "SRV")
            assert reply.rcode() == dns.rcode.NXDOMAIN, name


async def test_negative_answers_nxdomain_nodata_refused(api: Any, wait_for: Any) -> None:
    await make_service(api, "web", random_cluster_ip())
    async with cluster_dns(api, wait_for) as (_, port):
        for name in ("nope.default.svc.cluster.local", "web.other.svc.cluster.local",
                     # what a client's search path makes of a name that already was complete
                     "web.default.svc.cluster.local.default.svc.cluster.local", "web.default.pod.cluster.local"):
            reply = await udp(port, name)
            assert reply.rcode() == dns.rcode.NXDOMAIN, name
            assert not reply.answer
            [soa] = reply.authority
            assert soa.rdtype == dns.rdatatype.SOA and str(soa.name) == "cluster.local."
            assert soa[0].minimum == 5

        # AAAA (and any other type) of a name that exists: NODATA, as CoreDNS answers.
        for rdtype in ("AAAA", "MX", "TXT"):
            reply = await udp(port, "web.default.svc.cluster.local", rdtype)
            assert reply.rcode() == dns.rcode.NOERROR, rdtype
            assert not reply.answer
            assert [rrset.rdtype for rrset in reply.authority] == [dns.rdatatype.SOA]
        reply = await udp(port, "default.svc.cluster.local")  # a namespace with Services: an empty non-terminal
        assert reply.rcode() == dns.rcode.NOERROR and not reply.answer

        # Not our zone: we are no recursive resolver.
        for name in ("example.com", "cluster.local.example.com", "local"):
            reply = await udp(port, name)
            assert reply.rcode() == dns.rcode.REFUSED, name
            assert not reply.answer

        with pytest.raises(dns.resolver.NXDOMAIN):
            await asyncio.to_thread(resolver(port).resolve, "nope.default.svc.cluster.local", "A")
        with pytest.raises(dns.resolver.NoAnswer):
            await asyncio.to_thread(resolver(port).resolve, "web.default.svc.cluster.local", "AAAA")


async def test_new_and_deleted_services_follow_the_informers(api: Any, wait_for: Any) -> None:
    async with cluster_dns(api, wait_for) as (_, port):
        name = "late.default.svc.cluster.local"
        assert (await udp(port, name)).rcode() == dns.rcode.NXDOMAIN
        ip = random_cluster_ip()
        await make_service(api, "late", ip)

        async def answered() -> bool:
            return addresses(await udp(port, name)) == {ip}
        await wait_for(answered, 15, "the new Service in DNS")

        await make_service(api, "hl", "None")
        await make_endpoints(api, "hl", [{"ip": pod_ip(7)}])

        async def headless() -> bool:
            return addresses(await udp(port, "hl.default.svc.cluster.local")) == {pod_ip(7)}
        await wait_for(headless, 15, "the headless Service's pod in DNS")

        await api.services.delete("late", "default")

        async def gone() -> bool:
            return (await udp(port, name)).rcode() == dns.rcode.NXDOMAIN
        await wait_for(gone, 15, "the deleted Service gone from DNS")


async def test_large_answer_is_truncated_over_udp_and_whole_over_tcp(api: Any, wait_for: Any) -> None:
    await make_service(api, "big", "None")
    pods = [{"ip": pod_ip(i)} for i in range(100)]  # 100 A records: ~1.6 kB, far past 512 bytes
    await make_endpoints(api, "big", pods)
    want = {p["ip"] for p in pods}
    async with cluster_dns(api, wait_for) as (_, port):
        name = "big.default.svc.cluster.local"
        query = dns.message.make_query(name, "A")  # no EDNS: 512 bytes at most over UDP
        reply = await asyncio.to_thread(dns.query.udp, query, HOST, timeout=QUERY_TIMEOUT, port=port,
                                        ignore_trailing=True, raise_on_truncation=False)
        assert reply.flags & dns.flags.TC
        assert len(reply.to_wire()) <= 512
        reply = await tcp(port, name)
        assert not reply.flags & dns.flags.TC
        assert addresses(reply) == want
        # EDNS with room for it: whole over UDP.
        reply = await udp(port, name, use_edns=0, payload=4096)
        assert not reply.flags & dns.flags.TC and addresses(reply) == want
        # The resolver sees TC and retries over TCP by itself.
        answer = await asyncio.to_thread(resolver(port).resolve, name, "A")
        assert {rd.address for rd in answer} == want


async def test_malformed_packets_get_formerr_or_silence_and_the_server_goes_on(api: Any, wait_for: Any) -> None:
    ip = random_cluster_ip()
    await make_service(api, "web", ip)
    async with cluster_dns(api, wait_for) as (server, port):
        good = dns.message.make_query("web.default.svc.cluster.local", "A")
        good_wire = good.to_wire()

        async def still_answers() -> None:
            assert addresses(await udp(port, "web.default.svc.cluster.local")) == {ip}

        # Shorter than a header: nothing to answer with.
        for junk in (b"", b"\x00", good_wire[:11]):
            assert await raw_udp(port, junk) is None, junk
        await still_answers()

        # A header, then garbage: FORMERR under the query's id.
        for junk in (good_wire[:12] + b"\xff" * 7, good_wire[:-3], good_wire + b"trailing", good_wire[:12]):
            reply_wire = await raw_udp(port, junk)
            assert reply_wire is not None, junk
            reply = dns.message.from_wire(reply_wire)
            assert reply.id == good.id and reply.flags & dns.flags.QR
            assert reply.rcode() == dns.rcode.FORMERR, junk  # (the bare header parses, but asks nothing)
        await still_answers()

        # Queries that parse but ask what we do not do.
        notify = dns.message.make_query("web.default.svc.cluster.local", "SOA")
        notify.set_opcode(dns.opcode.NOTIFY)
        assert dns.message.from_wire(server.answer(notify.to_wire())).rcode() == dns.rcode.NOTIMP
        edns1 = dns.message.make_query("web.default.svc.cluster.local", "A", use_edns=1)
        assert dns.message.from_wire(server.answer(edns1.to_wire())).rcode() == dns.rcode.BADVERS
        axfr = dns.message.make_query("cluster.local", "AXFR")
        assert dns.message.from_wire(server.answer(axfr.to_wire())).rcode() == dns.rcode.REFUSED

        # A response is never answered (no loops between servers).
        response = dns.message.make_response(good).to_wire()
        assert await raw_udp(port, response) is None

        # Random junk: every reply, if any, is a well-formed response; the server survives all of it.
        rng = random.Random(7)
        for _ in range(300):
            out = server.answer(rng.randbytes(rng.randint(0, 300)))
            assert out == b"" or dns.message.from_wire(out).flags & dns.flags.QR
        for _ in range(30):
            await raw_udp(port, os.urandom(random.randint(12, 600)), timeout=0.2)
        await still_answers()

        # A huge query: one question padded to near the UDP maximum with an additional section.
        huge = dns.message.make_query("web.default.svc.cluster.local", "A", use_edns=0,
                                      options=[dns.edns.GenericOption(65001, b"x" * 60000)])
        reply_wire = await raw_udp(port, huge.to_wire(max_size=65535), timeout=2)
        if reply_wire is not None:
            assert dns.message.from_wire(reply_wire).id == huge.id
        await still_answers()

        # Over TCP: junk behind a length prefix gets FORMERR, a short read just ends the connection.
        def tcp_exchange(payload: bytes) -> bytes:
            with socket.create_connection((HOST, port), timeout=QUERY_TIMEOUT) as s:
                s.sendall(payload)
                s.shutdown(socket.SHUT_WR)
                data = b""
                while chunk := s.recv(65535):
                    data += chunk
                return data
        junk = good_wire[:12] + b"\xff\xfe"
        data = await asyncio.to_thread(tcp_exchange, len(junk).to_bytes(2, "big") + junk)
        assert int.from_bytes(data[:2], "big") == len(data) - 2
        assert dns.message.from_wire(data[2:]).rcode() == dns.rcode.FORMERR
        assert await asyncio.to_thread(tcp_exchange, b"\x00\x40abc") == b""
        assert addresses(await tcp(port, "web.default.svc.cluster.local")) == {ip}
        await still_answers()


async def test_unsynced_informers_answer_servfail_not_nxdomain(api: Any) -> None:
    # Before its first list a store is empty: "no such name" then would be a lie clients cache.
    server = ClusterDns(Informer(api.services), Informer(api.endpoints))
    reply = dns.message.from_wire(server.answer(dns.message.make_query("web.default.svc.cluster.local", "A").to_wire()))
    assert reply.rcode() == dns.rcode.SERVFAIL
    reply = dns.message.from_wire(server.answer(dns.message.make_query("example.com", "A").to_wire()))
    assert reply.rcode() == dns.rcode.REFUSED


async def test_custom_cluster_domain(api: Any, wait_for: Any) -> None:
    ip = random_cluster_ip()
    await make_service(api, "web", ip)
    async with cluster_dns(api, wait_for, domain="flotilla.test") as (_, port):
        assert addresses(await udp(port, "web.default.svc.flotilla.test")) == {ip}
        assert (await udp(port, "web.default.svc.cluster.local")).rcode() == dns.rcode.REFUSED


async def test_dig_resolves_a_service(api: Any, wait_for: Any) -> None:
    need(shutil.which("dig") is not None, "dig is not installed (Debian: apt-get install bind9-dnsutils; .ci/run does)")
    ip = random_cluster_ip()
    await make_service(api, "web", ip)
    async with cluster_dns(api, wait_for) as (_, port):
        for transport in ("+notcp", "+tcp"):
            out = await asyncio.to_thread(subprocess.run, ["dig", f"@{HOST}", "-p", str(port), transport, "+short",
                                                           "+time=5", "+tries=1", "web.default.svc.cluster.local", "A"],
                                          capture_output=True, text=True, timeout=30)
            assert out.returncode == 0, out.stderr
            assert out.stdout.split() == [ip], out.stdout


async def test_proxy_process_serves_cluster_dns(api: Any, start_service: Any, wait_for: Any) -> None:
    # The wiring in services/proxy/__main__.py: --dns-address/--dns-port/--cluster-domain reach ClusterDns.
    ip = random_cluster_ip()
    await make_service(api, "web", ip, [{"name": "http", "port": free_port(), "targetPort": 8080}])
    port = free_port(HOST)
    start_service("proxy", "--dns-address", HOST, "--dns-port", str(port), "--cluster-domain", "proc.test",
                  "--nodeport-addresses", HOST)

    async def answered() -> set[str] | None:
        try:
            return addresses(await udp(port, "web.default.svc.proc.test")) or None
        except (dns.exception.Timeout, ConnectionRefusedError):
            return None  # not listening yet
    assert await wait_for(answered, 60, "the proxy process answering DNS") == {ip}
    assert (await tcp(port, "nope.default.svc.proc.test")).rcode() == dns.rcode.NXDOMAIN
