"""The service proxy (`python -m services.proxy`) against a real nats-server and API server.

Backends are small asyncio TCP servers in the test: each sends its name and a newline, then echoes
what it receives until EOF. Services have no selector and an explicit random ClusterIP; their
Endpoints are written by hand (no endpoints controller involved)."""
from __future__ import annotations

import asyncio
import os
import random
import socket
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest

from sockets import refused
from flotilla.natsserver import free_port
from schemas.cluster import Endpoints


def random_vip() -> str:
    """Inside 127.128.0.0/16, never in its first 16 addresses (shared decision for issue 10)."""
    return f"127.128.{random.randint(1, 254)}.{random.randint(16, 254)}"


class Backend:
    def __init__(self, name: str):
        self.name = name
        self.server: asyncio.Server | None = None
        self.port = 0
        self.ip = "127.0.0.1"
        self.accepted = 0

    async def start(self) -> "Backend":
        self.server = await asyncio.start_server(self._serve, self.ip, 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            writer.write(self.name.encode() + b"\n")
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass  # the client went away: nothing to answer
        finally:
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def backends() -> AsyncIterator[Callable[[str], Any]]:
    started: list[Backend] = []

    async def make(name: str) -> Backend:
        b = await Backend(name).start()
        started.append(b)
        return b

    try:
        yield make
    finally:
        for b in started:
            await b.stop()


async def ask(ip: str, port: int, local: str | None = None, timeout: float = 5.0) -> str | None:
    """The name of the backend a new connection reaches; None when refused, reset or closed at once."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(ip, port, local_addr=(local, 0) if local else None)
            try:
                line = await reader.readline()
            finally:
                writer.close()
    except (ConnectionError, OSError):
        return None
    return line.decode().strip() or None


async def hits(ip: str, port: int, n: int, local: str | None = None, parallel: int = 20) -> Counter[str | None]:
    sem = asyncio.Semaphore(parallel)

    async def one() -> str | None:
        async with sem:
            return await ask(ip, port, local)

    return Counter(await asyncio.gather(*(one() for _ in range(n))))


def service(name: str, vip: str, ports: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"clusterIP": vip, "ports": ports, **spec}}


def endpoints(name: str, ready: list[Backend], not_ready: list[Backend] = (), port_name: str | None = "http",
              extra: list[dict[str, Any]] = ()) -> dict[str, Any]:
    """One subset per backend (each listens on its own port)."""
    def port(b: Backend) -> list[dict[str, Any]]:
        return [{"port": b.port, **({"name": port_name} if port_name else {})}]
    subsets = [{"addresses": [{"ip": b.ip}], "ports": port(b)} for b in ready]
    subsets += [{"notReadyAddresses": [{"ip": b.ip}], "ports": port(b)} for b in not_ready]
    return {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": name}, "subsets": subsets + list(extra)}


async def put_endpoints(api: Any, body: dict[str, Any]) -> None:
    current = await api.endpoints.get(body["metadata"]["name"])
    body = {**body, "metadata": {**body["metadata"], "resourceVersion": current.metadata.resource_version}}
    await api.endpoints.update(msgspec.convert(body, Endpoints))


@pytest.fixture
def proxy(start_service: Callable[..., Any]) -> Callable[..., Any]:
    def start(*args: str) -> Any:
        return start_service("proxy", "--dns-port", "0", "--nodeport-addresses", "127.0.0.1", *args)
    return start


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def healthy(proc: Any) -> None:
    assert proc.alive, proc.log_tail()
    assert "Traceback" not in proc.log_text()


# ---- tests ------------------------------------------------------------------------------------------

async def test_round_robin_and_readiness(api, proxy, backends, wait_for) -> None:
    """300 connections reach all 3 backends evenly; a backend moved to notReadyAddresses gets no more."""
    p = proxy()
    bs = [await backends(f"b{i}") for i in range(3)]
    vip, port = random_vip(), free_port()
    await api.services.create(service("rr", vip, [{"name": "http", "port": port}]))
    await api.endpoints.create(endpoints("rr", bs))
    await wait_for(lambda: ask(vip, port), 30, "the proxy serving the ClusterIP")

    counts = await hits(vip, port, 300)
    assert set(counts) == {"b0", "b1", "b2"}, counts
    assert min(counts.values()) >= 90, counts  # round robin: 100 each

    await put_endpoints(api, endpoints("rr", bs[:2], not_ready=bs[2:]))

    async def avoided() -> bool:
        return "b2" not in await hits(vip, port, 30)
    await wait_for(avoided, 10, "b2 dropped from the rotation")
    counts = await hits(vip, port, 60)
    assert set(counts) == {"b0", "b1"}, counts
    # Every proxied connection closed both of its sockets (400+ connections went through).
    await wait_for(lambda: open_fds(p.pid) < 60, 10, "the proxy's sockets closed")
    healthy(p)


async def test_refused_endpoint_is_skipped(api, proxy, backends, wait_for) -> None:
    p = proxy()
    live = await backends("live")
    dead = Backend("dead")
    dead.port = free_port()  # nothing listens there: connecting is refused
    vip, port = random_vip(), free_port()
    await api.services.create(service("skip", vip, [{"name": "http", "port": port}]))
    await api.endpoints.create(endpoints("skip", [dead, live, dead]))
    await wait_for(lambda: ask(vip, port), 30, "the proxy serving the ClusterIP")
    counts = await hits(vip, port, 30)
    assert counts == Counter({"live": 30}), counts
    healthy(p)


async def test_client_ip_affinity(api, proxy, backends, wait_for) -> None:
    p = proxy()
    bs = [await backends(f"b{i}") for i in range(3)]
    vip, port = random_vip(), free_port()
    await api.services.create(service("sticky", vip, [{"name": "http", "port": port}], sessionAffinity="ClientIP"))
    await api.endpoints.create(endpoints("sticky", bs))
    await wait_for(lambda: ask(vip, port, "127.0.0.99"), 30, "the proxy serving the ClusterIP")

    clients = [f"127.0.{random.randint(1, 254)}.{i}" for i in range(10, 16)]
    chosen: dict[str, str | None] = {}
    for c in clients:
        counts = await hits(vip, port, 8, local=c)
        assert len(counts) == 1, (c, counts)  # every connection of one client: the same backend
        chosen[c] = next(iter(counts))
    assert len(set(chosen.values())) >= 2, chosen  # different clients still spread

    # The sticky endpoint of a client stops being ready: it moves, then sticks to its new one.
    client = clients[0]
    old = chosen[client]
    rest = [b for b in bs if b.name != old]
    await put_endpoints(api, endpoints("sticky", rest, not_ready=[b for b in bs if b.name == old]))

    async def moved() -> bool:
        return old not in await hits(vip, port, 4, local=client)
    await wait_for(moved, 10, "the client moved off its not-ready endpoint")
    counts = await hits(vip, port, 8, local=client)
    assert len(counts) == 1 and old not in counts, counts
    healthy(p)


@pytest.mark.parametrize("datapath", ["protocol", "sock"])
async def test_established_connection_survives_other_changes(api, proxy, backends, wait_for, datapath) -> None:
    """Changing another Service's Endpoints, creating and deleting a Service leave an open connection
    working; half-close: the client's EOF reaches the backend, whose echo still comes back."""
    p = proxy("--datapath", datapath)
    a, b, c = await backends("a"), await backends("b"), await backends("c")
    vip_a, vip_b, port = random_vip(), random_vip(), free_port()
    await api.services.create(service("svc-a", vip_a, [{"name": "http", "port": port}]))
    await api.endpoints.create(endpoints("svc-a", [a]))
    await api.services.create(service("svc-b", vip_b, [{"name": "http", "port": port}]))
    await api.endpoints.create(endpoints("svc-b", [b]))
    await wait_for(lambda: ask(vip_a, port), 30, "svc-a served")
    await wait_for(lambda: ask(vip_b, port), 30, "svc-b served")

    reader, writer = await asyncio.open_connection(vip_a, port)
    assert await asyncio.wait_for(reader.readline(), 5) == b"a\n"
    writer.write(b"one\n")
    assert await asyncio.wait_for(reader.readline(), 5) == b"one\n"

    await put_endpoints(api, endpoints("svc-b", [c]))
    await wait_for(lambda: _is(ask(vip_b, port), "c"), 10, "svc-b moved to c")
    vip_c = random_vip()
    await api.services.create(service("svc-c", vip_c, [{"name": "http", "port": port}]))
    await api.services.delete("svc-c")
    await wait_for(lambda: refused(vip_c, port), 10, "svc-c's listener closed")

    writer.write(b"two\n")
    assert await asyncio.wait_for(reader.readline(), 5) == b"two\n"
    writer.write(b"three\n")
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), 5) == b"three\n"  # then EOF from the backend
    writer.close()
    healthy(p)


async def _is(answer: Any, want: str) -> bool:
    return await answer == want


async def test_delete_service_and_port_close_listeners(api, proxy, backends, wait_for) -> None:
    p = proxy()
    b = await backends("b")
    vip, port1, port2 = random_vip(), free_port(), free_port()
    await api.services.create(service("two", vip, [{"name": "http", "port": port1}, {"name": "alt", "port": port2}]))
    await api.endpoints.create({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "two"},
                                "subsets": [{"addresses": [{"ip": b.ip}],
                                             "ports": [{"name": "http", "port": b.port},
                                                       {"name": "alt", "port": b.port}]}]})
    await wait_for(lambda: _is(ask(vip, port1), "b"), 30, "port 1 served")
    await wait_for(lambda: _is(ask(vip, port2), "b"), 30, "port 2 served")

    await api.services.patch("two", {"spec": {"ports": [{"name": "http", "port": port1}]}})
    await wait_for(lambda: refused(vip, port2), 10, "the removed port's listener closed")
    assert await ask(vip, port1) == "b"

    await api.services.delete("two")
    await wait_for(lambda: refused(vip, port1), 10, "the deleted Service's listener closed")

    # Created and deleted back to back (often in one watch batch: a listener closed before it ever
    # accepted), then created for good: the address is free again and served.
    for _ in range(5):
        await api.services.create(service("two", vip, [{"name": "http", "port": port1}]))
        await api.services.delete("two")
    await api.services.create(service("two", vip, [{"name": "http", "port": port1}]))
    await wait_for(lambda: _is(ask(vip, port1), "b"), 10, "the recreated Service served")
    healthy(p)


async def test_nodeport(api, proxy, backends, wait_for) -> None:
    p = proxy()
    b = await backends("np")
    vip, port = random_vip(), free_port()
    node_port = random.randint(30000, 32767)
    while refused("127.0.0.1", node_port) is False:
        node_port = random.randint(30000, 32767)
    await api.services.create(service("np", vip, [{"name": "http", "port": port, "nodePort": node_port}],
                                      type="NodePort"))
    await api.endpoints.create(endpoints("np", [b]))
    await wait_for(lambda: _is(ask("127.0.0.1", node_port), "np"), 30, "the NodePort served on 127.0.0.1")
    assert await ask(vip, port) == "np"
    healthy(p)


async def test_port_in_use_event_and_retry(api, proxy, backends, wait_for) -> None:
    """A ClusterIP:port held by another socket: a Warning Event on that Service, the other Services
    are served, and the listener comes up once the port is free."""
    b = await backends("b")
    vip_busy, vip_ok, port = random_vip(), random_vip(), free_port()
    squatter = socket.socket()
    squatter.bind((vip_busy, port))
    squatter.listen()
    try:
        p = proxy()
        await api.services.create(service("busy", vip_busy, [{"name": "http", "port": port}]))
        await api.endpoints.create(endpoints("busy", [b]))
        await api.services.create(service("ok", vip_ok, [{"name": "http", "port": port}]))
        await api.endpoints.create(endpoints("ok", [b]))
        await wait_for(lambda: _is(ask(vip_ok, port), "b"), 30, "the other Service served")

        async def warned() -> list[Any]:
            evs = (await api.events.list()).items
            return [e for e in evs if e.involved_object.name == "busy" and e.reason == "PortInUse"
                    and e.type == "Warning"]
        evs = await wait_for(warned, 20, "a PortInUse Warning Event on the Service")
        assert f"{vip_busy}:{port}" in (evs[0].message or "")
    finally:
        squatter.close()
    await wait_for(lambda: _is(ask(vip_busy, port), "b"), 30, "the listener retried once the port was free")
    assert p.log_text().count("cannot listen") == 1  # logged once, not per retry
    healthy(p)


async def test_bad_input_never_crashes(api, proxy, backends, wait_for) -> None:
    p = proxy()
    b = await backends("good")
    port = free_port()
    vip_empty, vip_mismatch, vip_good = random_vip(), random_vip(), random_vip()
    # No Endpoints at all, and Endpoints with no ready address: connections are closed at once.
    await api.services.create(service("empty", vip_empty, [{"name": "http", "port": port}]))
    # Endpoints whose ports match no service port (two named ports, neither "http").
    await api.services.create(service("mismatch", vip_mismatch, [{"name": "http", "port": port}]))
    await api.endpoints.create({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "mismatch"},
                                "subsets": [{"addresses": [{"ip": b.ip}],
                                             "ports": [{"name": "x", "port": b.port}, {"name": "y", "port": b.port}]}]})
    # Headless, ExternalName, UDP-only, no clusterIP, and Endpoints without a Service.
    await api.services.create(service("headless", "None", [{"name": "http", "port": port}]))
    await api.services.create({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ext"},
                               "spec": {"type": "ExternalName", "externalName": "example.com"}})
    await api.services.create(service("udp", random_vip(), [{"name": "dns", "port": port, "protocol": "UDP"}]))
    await api.endpoints.create(endpoints("orphan", [b]))
    await api.services.create(service("good", vip_good, [{"name": "http", "port": port}]))
    await api.endpoints.create(endpoints("good", [b]))
    await wait_for(lambda: _is(ask(vip_good, port), "good"), 30, "the good Service served")

    assert await ask(vip_empty, port) is None
    await api.endpoints.create(endpoints("empty", [], not_ready=[b]))
    assert await ask(vip_empty, port) is None
    assert await ask(vip_mismatch, port) is None
    # A port removed from under its listener, then the Service and its Endpoints deleted.
    await api.services.patch("mismatch", {"spec": {"ports": [{"name": "other", "port": free_port()}]}})
    await wait_for(lambda: refused(vip_mismatch, port), 10, "the removed port closed")
    await api.endpoints.delete("good")
    await wait_for(lambda: _is(ask(vip_good, port), None), 10, "no endpoints -> rejected")
    await api.endpoints.create(endpoints("good", [b]))
    await wait_for(lambda: _is(ask(vip_good, port), "good"), 10, "served again")
    await api.services.delete("good")
    await wait_for(lambda: refused(vip_good, port), 10, "deleted")
    healthy(p)


async def test_cluster_dns_started_beside_the_proxy(api, start_service, backends, wait_for) -> None:
    """`--dns-address/--dns-port/--cluster-domain` start ClusterDns on the proxy's informers."""
    import dns.asyncquery
    import dns.message
    import dns.rdatatype

    dns_ip, dns_port = random_vip(), free_port()
    p = start_service("proxy", "--dns-address", dns_ip, "--dns-port", str(dns_port),
                      "--cluster-domain", "flo.test", "--nodeport-addresses", "127.0.0.1")
    vip, port = random_vip(), free_port()
    await api.services.create(service("named", vip, [{"name": "http", "port": port}]))

    async def resolved() -> list[str] | None:
        q = dns.message.make_query("named.default.svc.flo.test", dns.rdatatype.A)
        try:
            reply = await dns.asyncquery.udp(q, dns_ip, port=dns_port, timeout=1)
        except (dns.exception.Timeout, OSError):
            return None
        return [r.address for rrset in reply.answer for r in rrset] or None
    assert await wait_for(resolved, 30, "the Service name resolved by the proxy's DNS") == [vip]
    healthy(p)

