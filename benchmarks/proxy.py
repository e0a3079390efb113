"""Service proxy benchmark: small request/response round trips and bulk transfer through a ClusterIP,
beside the same traffic sent straight to the backend in the same run; and how long an Endpoints
change takes to steer new connections.

    .venv/bin/python benchmarks/proxy.py [--connections 64] [--seconds 5] [--bulk-mb 256]
                                         [--changes 40] [--datapath protocol,sock]

- round trips: `--connections` keep-alive connections, each sending 64 bytes and awaiting their echo,
  one after the other for `--seconds`; requests/s and p50/p99 latency, direct vs through the proxy.
  With 64 connections the Python client is the bottleneck (its queueing makes most of the latency),
  so the added latency is also measured with one connection (the proxy's own cost per round trip).
- bulk: one connection writes `--bulk-mb` MB to a sink that answers with the byte count at EOF.
- endpoint change: the Endpoints of a Service are rewritten to a new ready address (alternating
  between two backends that answer with their name); from the write until a new connection reaches
  the new backend (connections are opened back to back meanwhile).
- pod Ready -> routed: the same with a selector Service over two pod objects whose status is written
  as a node agent writes it; the endpoints controller (batch period 0.2 s) turns it into Endpoints.
Each data path named in `--datapath` gets its own proxy process, one after the other.
Targets (issue 10): round trips >= 50 % of direct, p99 added < 1 ms.
"""
from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgspec  # noqa: E402
import nats  # noqa: E402

from benchmarks.common import embedded_nats, percentile, process, service, wait_for_service  # noqa: E402
from flotilla.natsserver import free_port  # noqa: E402
from schemas.cluster import Endpoints  # noqa: E402
from schemas.pod import PodStatus  # noqa: E402
from services.lib.client import Api  # noqa: E402

# The backends run in a process of their own (uvloop protocols: as cheap as Python gets), so that
# neither the client nor the proxy shares their event loop.
BACKEND = r"""
import asyncio, sys, uvloop
echo_port, sink_port, names = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]

class Echo(asyncio.Protocol):
    def connection_made(self, t): self.t = t
    def data_received(self, d): self.t.write(d)

class Sink(asyncio.Protocol):
    def connection_made(self, t): self.t, self.n = t, 0
    def data_received(self, d): self.n += len(d)
    def eof_received(self):
        self.t.write(b"%d\n" % self.n); self.t.close()

class Name(asyncio.Protocol):
    def __init__(self, name): self.name = name
    def connection_made(self, t): t.write(self.name); t.close()

async def main():
    loop = asyncio.get_running_loop()
    await loop.create_server(Echo, "127.0.0.1", echo_port, backlog=4096)
    await loop.create_server(Sink, "127.0.0.1", sink_port)
    for spec in names:
        name, port = spec.split(":")
        await loop.create_server(lambda n=name.encode(): Name(n), "127.0.0.1", int(port), backlog=4096)
    print("ready", flush=True)
    await asyncio.Event().wait()

uvloop.run(main())
"""


def vip() -> str:
    return f"127.128.{random.randint(1, 254)}.{random.randint(16, 254)}"


async def wait_port(ip: str, port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, w = await asyncio.open_connection(ip, port)
            w.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def round_trips(ip: str, port: int, connections: int, seconds: float) -> tuple[float, list[float]]:
    payload = b"x" * 63 + b"\n"
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def conn() -> int:
        reader, writer = await asyncio.open_connection(ip, port)
        n = 0
        try:
            while (t0 := time.perf_counter()) < stop:
                writer.write(payload)
                await reader.readexactly(len(payload))
                latencies.append((time.perf_counter() - t0) * 1000)
                n += 1
        finally:
            writer.close()
        return n

    t_start = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(conn()) for _ in range(connections)]
    elapsed = time.perf_counter() - t_start
    return sum(t.result() for t in tasks) / elapsed, latencies


async def bulk(ip: str, port: int, mb: int) -> float:
    chunk = b"\0" * (1 << 20)
    reader, writer = await asyncio.open_connection(ip, port)
    t0 = time.perf_counter()
    for _ in range(mb):
        writer.write(chunk)
        await writer.drain()
    writer.write_eof()
    got = int((await reader.readline()).strip() or 0)
    secs = time.perf_counter() - t0
    writer.close()
    if got != mb << 20:
        raise RuntimeError(f"sink received {got} bytes of {mb << 20}")
    return mb / secs


async def name_of(ip: str, port: int) -> bytes:
    try:
        reader, writer = await asyncio.open_connection(ip, port)
    except OSError:
        return b""
    try:
        return await reader.read(64)
    except OSError:
        return b""
    finally:
        writer.close()


async def endpoint_changes(api: Api, ip: str, port: int, names: list[tuple[str, int]], n: int) -> list[float]:
    out: list[float] = []
    for i in range(n):
        name, target = names[i % 2]
        ep = await api.endpoints.get("flip")
        new = msgspec.convert({"apiVersion": "v1", "kind": "Endpoints",
                               "metadata": {"name": "flip", "resourceVersion": ep.metadata.resource_version},
                               "subsets": [{"addresses": [{"ip": "127.0.0.1"}], "ports": [{"port": target}]}]},
                              Endpoints)
        t0 = time.perf_counter()
        await api.endpoints.update(new)
        while await name_of(ip, port) != name.encode():
            if time.perf_counter() - t0 > 30:
                raise TimeoutError(f"the proxy never routed to {name}")
        out.append((time.perf_counter() - t0) * 1000)
    return out


async def set_ready(api: Api, name: str, ready: bool) -> None:
    """Write a pod's status as its node agent would: Running on 127.0.0.1, Ready as given."""
    pod = await api.pods.get(name)
    pod.status = msgspec.convert({
        "phase": "Running", "podIP": "127.0.0.1", "hostIP": "127.0.0.1",
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}, PodStatus)
    await api.pods.update_status(pod)


async def pod_ready_changes(api: Api, ip: str, port: int, names: list[tuple[str, int]], n: int) -> list[float]:
    """The whole path: a pod's Ready=True status write -> endpoints controller -> Endpoints -> proxy ->
    the first new connection that reaches that pod. The other pod stays ready meanwhile (round robin
    reaches the newcomer within a connection or two once the proxy knows it), then goes not-ready."""
    out: list[float] = []
    for i in range(n):
        (name, _), (other, _) = names[i % 2], names[(i + 1) % 2]
        t0 = time.perf_counter()
        await set_ready(api, f"pod-{name}", True)
        while await name_of(ip, port) != name.encode():
            if time.perf_counter() - t0 > 30:
                raise TimeoutError(f"the proxy never routed to pod-{name}")
        out.append((time.perf_counter() - t0) * 1000)
        await set_ready(api, f"pod-{other}", False)
        # Until the other one has left the routes (8 connections in a row miss it: round robin would
        # reach it every second one), so that the next round measures a pod the proxy did not route to.
        misses = 0
        while misses < 8:
            misses = misses + 1 if await name_of(ip, port) != other.encode() else 0
            if time.perf_counter() - t0 > 30:
                raise TimeoutError(f"the proxy kept routing to pod-{other}")
    return out


def line(label: str, value: str) -> None:
    print(f"{label:<58} {value}")


async def run(url: str, args: argparse.Namespace) -> None:
    nc = await nats.connect(url, pending_size=64 * 1024 * 1024)
    await wait_for_service(nc, "flotilla-apiserver")
    api = Api(nc, timeout=30)
    echo_port, sink_port = free_port(), free_port()
    names = [("n0", free_port()), ("n1", free_port())]
    vip_echo, vip_sink, vip_flip = vip(), vip(), vip()
    port = free_port()
    for name, ip, target in (("echo", vip_echo, echo_port), ("sink", vip_sink, sink_port),
                             ("flip", vip_flip, names[0][1])):
        await api.services.create({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
                                   "spec": {"clusterIP": ip, "ports": [{"port": port}]}})
        await api.endpoints.create({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": name},
                                    "subsets": [{"addresses": [{"ip": "127.0.0.1"}], "ports": [{"port": target}]}]})
    # A Service with a selector over two pods (objects only: their "processes" are the named backends
    # on 127.0.0.1, each pod declaring its backend's port as `web`) for the pod Ready -> routed path.
    vip_pods = vip()
    await api.services.create({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "pods"},
                               "spec": {"clusterIP": vip_pods, "selector": {"app": "bench-pods"},
                                        "ports": [{"port": port, "targetPort": "web"}]}})
    for name, target in names:
        await api.pods.create({"apiVersion": "v1", "kind": "Pod",
                               "metadata": {"name": f"pod-{name}", "labels": {"app": "bench-pods"}},
                               "spec": {"containers": [{"name": "c", "command": ["true"],
                                                        "ports": [{"name": "web", "containerPort": target}]}]}})
        await api.pods.bind(f"pod-{name}", "bench-node")
    await set_ready(api, f"pod-{names[1][0]}", True)
    argv = [sys.executable, "-c", BACKEND, str(echo_port), str(sink_port)] + [f"{n}:{p}" for n, p in names]
    with process("proxy-backend", argv):
        await wait_port("127.0.0.1", echo_port)
        rps_d, lat_d = await round_trips("127.0.0.1", echo_port, args.connections, args.seconds)
        bulk_d = await bulk("127.0.0.1", sink_port, args.bulk_mb)
        _, seq_d = await round_trips("127.0.0.1", echo_port, 1, args.seconds)
        line(f"direct: round trips, {args.connections} connections", f"{rps_d:>9.0f}/s   p50 {percentile(lat_d, 50):.2f} ms"
             f"  p99 {percentile(lat_d, 99):.2f} ms")
        line("direct: round trips, 1 connection", f"p50 {percentile(seq_d, 50):.3f} ms  p99 {percentile(seq_d, 99):.3f} ms")
        line("direct: bulk transfer", f"{bulk_d:>9.0f} MB/s")
        for datapath in args.datapath.split(","):
            with service("proxy", url, "--dns-port", "0", "--nodeport-addresses", "127.0.0.1",
                         "--datapath", datapath):
                await wait_port(vip_echo, port)
                await wait_port(vip_sink, port)
                rps_p, lat_p = await round_trips(vip_echo, port, args.connections, args.seconds)
                _, seq_p = await round_trips(vip_echo, port, 1, args.seconds)
                bulk_p = await bulk(vip_sink, port, args.bulk_mb)
                changes = await endpoint_changes(api, vip_flip, port, names, args.changes)
                await wait_port(vip_pods, port)
                ready_changes = await pod_ready_changes(api, vip_pods, port, names, args.changes)
            p99_added = percentile(lat_p, 99) - percentile(lat_d, 99)
            seq_added = percentile(seq_p, 99) - percentile(seq_d, 99)
            line(f"proxy ({datapath}): round trips, {args.connections} connections",
                 f"{rps_p:>9.0f}/s   p50 {percentile(lat_p, 50):.2f} ms  p99 {percentile(lat_p, 99):.2f} ms")
            line(f"proxy ({datapath}): round trips vs direct (goal >= 0.50)", f"{rps_p / rps_d:>9.2f}")
            line(f"proxy ({datapath}): p99 added, {args.connections} connections", f"{p99_added:>9.2f} ms")
            line(f"proxy ({datapath}): round trips, 1 connection",
                 f"p50 {percentile(seq_p, 50):.3f} ms  p99 {percentile(seq_p, 99):.3f} ms")
            line(f"proxy ({datapath}): p99 added, 1 connection (goal < 1 ms)", f"{seq_added:>9.3f} ms")
            line(f"proxy ({datapath}): bulk transfer", f"{bulk_p:>9.0f} MB/s  ({bulk_p / bulk_d:.2f} of direct)")
            line(f"proxy ({datapath}): Endpoints write -> first connection routed, {args.changes}x",
                 f"p50 {percentile(changes, 50):.1f} ms  p99 {percentile(changes, 99):.1f} ms")
            line(f"proxy ({datapath}): pod Ready write -> first connection routed, {args.changes}x",
                 f"p50 {percentile(ready_changes, 50):.1f} ms  p99 {percentile(ready_changes, 99):.1f} ms"
                 "  (goal < 1 s; Kubernetes' SLO p99 <= 30 s)")
    await nc.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--bulk-mb", type=int, default=256)
    p.add_argument("--changes", type=int, default=40)
    p.add_argument("--datapath", default="protocol,sock", help="comma list of proxy data paths to measure")
    args = p.parse_args()
    try:
        import uvloop
    except ImportError:
        uvloop = None
    with embedded_nats() as nats_server:
        with service("apiserver", nats_server.url), service("endpoints", nats_server.url):
            coro = run(nats_server.url, args)
            if uvloop is not None:
                uvloop.run(coro)
            else:
                asyncio.run(coro)
    print("done")


if __name__ == "__main__":
    main()
