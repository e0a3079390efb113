"""API benchmark: pod create throughput and latency through the API server at 1 and 64 in flight,
beside the raw JetStream KV create rate of the same run; and the API server's RSS holding 10,000 pods.

    .venv/bin/python benchmarks/api.py [--pods 10000] [--apiservers 1]

It also runs benchmarks/minimal_hop.py, a responder that only takes the request, KV-creates and
replies while following the bucket (no decoding or validation): the ceiling any nats-py API server
can reach on this machine, measured in the same run (`--no-hop` skips it).

Targets (issue 2): API create throughput >= 50% of raw KV create at 64 in flight; p99 < 20 ms at 64
in flight; API server RSS < 250 MB with 10,000 pods in its watch cache.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nats  # noqa: E402

from benchmarks import minimal_hop  # noqa: E402
from benchmarks.common import (cpu_seconds, embedded_nats, process, percentile, pod_json, raw_kv_create_rate, rss_mb,  # noqa: E402
                               run_pipelined, service, wait_for_service)


class CpuMeter:
    """CPU time each process spends on one phase, per 1,000 operations: where the two cores go."""

    def __init__(self, pids: dict[str, int]):
        self.pids = pids

    def start(self) -> dict[str, float]:
        return {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def report(self, what: str, before: dict[str, float], ops: int, secs: float) -> None:
        used = {name: cpu_seconds(pid) - before[name] for name, pid in self.pids.items()}
        parts = "  ".join(f"{name} {1000 * 1000 * u / ops:.0f}" for name, u in used.items())
        print(f"  CPU ms per 1,000 {what}: {parts}  (all: {sum(used.values()) / secs:.2f} cores busy)")


async def measure(url: str, pids: list[int], args: argparse.Namespace, nats_pid: int) -> None:
    nc = await nats.connect(url, pending_size=64 * 1024 * 1024)
    await wait_for_service(nc, "flotilla-apiserver")
    print(f"{'measure':<44} {'value':>12}")
    meter = CpuMeter({"nats-server": nats_pid, "benchmark client": os.getpid(),
                      **{f"apiserver-{i}": pid for i, pid in enumerate(pids)}})
    before = meter.start()
    raw = await raw_kv_create_rate(nc, args.raw, 64)
    print(f"{'raw JetStream KV create, 64 in flight':<44} {raw:>10.0f}/s")
    meter.report("raw KV creates", before, args.raw, args.raw / raw)

    if args.hop_pid:
        await asyncio.sleep(1.0)  # the responder creates its bucket

        async def hop(i: int) -> None:
            await nc.request(minimal_hop.SUBJECT, pod_json(f"hop-{i}"), timeout=30, headers={"key": f"hop-{i}"})

        hop_meter = CpuMeter({"nats-server": nats_pid, "benchmark client": os.getpid(), "responder": args.hop_pid})
        before = hop_meter.start()
        secs, lat = await run_pipelined(args.raw, 64, hop)
        print(f"{'minimal nats-py hop, 64 in flight':<44} {args.raw / secs:>10.0f}/s"
              f"  p50 {percentile(lat, 50):.2f} ms  p99 {percentile(lat, 99):.2f} ms   (ratio {args.raw / secs / raw:.2f})")
        hop_meter.report("minimal hops", before, args.raw, secs)

    async def create(i: int, prefix: str) -> None:
        msg = await nc.request("flo.api.v1.pods.create", pod_json(f"{prefix}-{i}"), timeout=30)
        if not msg.data.startswith(b'{"kind":"Pod"'):
            raise RuntimeError(msg.data[:300])

    secs1, lat1 = await run_pipelined(args.sequential, 1, lambda i: create(i, "seq"))
    print(f"{'API pod create, 1 in flight':<44} {args.sequential / secs1:>10.0f}/s"
          f"  p50 {percentile(lat1, 50):.2f} ms  p99 {percentile(lat1, 99):.2f} ms")
    n64 = args.pods - args.sequential
    before = meter.start()
    secs64, lat64 = await run_pipelined(n64, 64, lambda i: create(i, "par"))
    rate64 = n64 / secs64
    print(f"{'API pod create, 64 in flight':<44} {rate64:>10.0f}/s"
          f"  p50 {percentile(lat64, 50):.2f} ms  p99 {percentile(lat64, 99):.2f} ms")
    meter.report("API creates", before, n64, secs64)
    print(f"{'ratio API/raw at 64 in flight':<44} {rate64 / raw:>12.2f}   (target >= 0.50)")
    # A consistent list waits for the cache to reach the log's head: then every pod is in the cache.
    msg = await nc.request("flo.api.v1.pods.list", b'{"limit": 1}', timeout=60)
    assert msg.data.startswith(b'{"kind":"PodList"'), msg.data[:200]
    await asyncio.sleep(1.0)
    for pid in pids:
        print(f"{'API server RSS with %d pods cached' % args.pods:<44} {rss_mb(pid):>10.1f} MB   (target < 250 MB)")
    js = nc.jetstream()
    info = await js.stream_info("KV_flotilla")
    print(f"{'state log stream KV_flotilla':<44} {info.state.messages:>10} msgs {info.state.bytes / 1e6:.1f} MB")
    await nc.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pods", type=int, default=10_000, help="pods created in all (then held in the cache)")
    p.add_argument("--sequential", type=int, default=500, help="of those, created one at a time")
    p.add_argument("--raw", type=int, default=10_000, help="raw KV creates for the baseline")
    p.add_argument("--apiservers", type=int, default=1, help="API server replicas (one queue group)")
    p.add_argument("--no-hop", action="store_true", help="skip the minimal nats-py hop (the ceiling) measurement")
    args = p.parse_args()
    with embedded_nats() as server, contextlib.ExitStack() as stack:
        procs = [stack.enter_context(service("apiserver", server.url, "--identity", f"bench-api-{i}"))
                 for i in range(args.apiservers)]
        args.hop_pid = None
        if not args.no_hop:
            args.hop_pid = stack.enter_context(process("minimal-hop", [sys.executable, "-m", "benchmarks.minimal_hop",
                                                                       server.url])).pid
        asyncio.run(measure(server.url, [pr.pid for pr in procs], args, server.pid))


if __name__ == "__main__":
    main()
