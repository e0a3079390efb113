"""Node agent benchmark.

1. Bind to Running for 100 real-process pods on one agent: each pod is created already bound
   (spec.nodeName) and timed until its status says Running (p50/p99).
2. Hollow agents: how many hollow nodes one process holds with a 10 s heartbeat, its RSS, and whether
   every lease is renewed on time.

    .venv/bin/python benchmarks/nodeagent.py [--pods 100] [--hollow 1000]

Targets (issue 3): >= 1,000 hollow nodes with a 10 s heartbeat in < 500 MB RSS.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nats  # noqa: E402

from benchmarks.common import (Unfinished, baseline_note, embedded_nats, finish, percentile,  # noqa: E402
                               raw_kv_create_rate, rss_mb, run_pipelined, service, wait_for_service,
                               wait_nodes_ready)
from schemas import NODE_LEASE_NAMESPACE, parse_time  # noqa: E402
from services.lib.client import Api  # noqa: E402


async def real_pods(url: str, n: int, timeout: float) -> None:
    nc = await nats.connect(url, pending_size=64 * 1024 * 1024)
    await wait_for_service(nc, "flotilla-apiserver")
    api = Api(nc, timeout=30)
    await wait_nodes_ready(api, 1, timeout)  # bench-node, the only node so far
    raw = await raw_kv_create_rate(nc, 3000, 64)
    print(f"{'raw JetStream KV create, 64 in flight':<48} {raw:>8.0f}/s   ({baseline_note()})")
    rv = (await api.pods.list(limit=1)).resource_version
    started: dict[str, float] = {}
    took: dict[str, float] = {}

    async def observe() -> None:
        async for _, pod in api.pods.watch(field_selector="spec.nodeName=bench-node", resource_version=rv):
            name = pod.metadata.name
            if pod.status.phase == "Running" and name in started and name not in took:
                took[name] = time.monotonic() - started[name]
                if len(took) >= n:
                    return

    async def create(i: int) -> None:
        name = f"real-{i}"
        started[name] = time.monotonic()
        await api.pods.create({"metadata": {"name": name}, "spec": {
            "nodeName": "bench-node", "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "c", "image": "sleep", "command": ["sleep", "3600"]}]}})

    async def observe_within() -> None:
        try:
            await asyncio.wait_for(observe(), timeout)
        except TimeoutError:
            raise Unfinished(f"only {len(took)} of {n} real pods Running after {timeout:.0f} s") from None

    async with asyncio.TaskGroup() as tg:
        watcher = tg.create_task(observe_within())
        await asyncio.sleep(0.2)
        t0 = time.monotonic()
        await run_pipelined(n, 16, create)
        await watcher
        total = time.monotonic() - t0
    lat = [v * 1000 for v in took.values()]
    print(f"{'bind -> Running, %d real process pods' % n:<48} p50 {percentile(lat, 50):.0f} ms  "
          f"p99 {percentile(lat, 99):.0f} ms  (all Running in {total:.1f} s)")
    for i in range(n):
        await api.pods.delete(f"real-{i}", grace_period_seconds=1)
    await nc.close()


async def hollow(url: str, count: int, pid: int, heartbeat: float, hold: float, timeout: float) -> None:
    nc = await nats.connect(url, pending_size=64 * 1024 * 1024)
    api = Api(nc, timeout=60)
    t0 = time.monotonic()
    while True:
        leases = (await api.leases.list_all(namespace=NODE_LEASE_NAMESPACE)).items
        registered = sum(1 for lease in leases if lease.metadata.name.startswith("hollow-"))
        if registered >= count:
            break
        if time.monotonic() - t0 > timeout:
            raise Unfinished(f"only {registered} of {count} hollow nodes registered after {timeout:.0f} s")
        await asyncio.sleep(1)
    print(f"{'hollow nodes registered':<48} {count:>8}   in {time.monotonic() - t0:.1f} s")
    await asyncio.sleep(hold)  # let them settle into their heartbeat rhythm
    leases = [lease for lease in (await api.leases.list_all(namespace=NODE_LEASE_NAMESPACE)).items
              if lease.metadata.name.startswith("hollow-")]
    now = datetime.now(timezone.utc)
    late = [lease for lease in leases
            if (now - parse_time(lease.spec.renew_time or "1970-01-01T00:00:00Z")).total_seconds() > 2 * heartbeat]
    print(f"{'leases renewed within 2 heartbeats':<48} {len(leases) - len(late):>8} / {len(leases)}")
    print(f"{'hollow process RSS':<48} {rss_mb(pid):>8.1f} MB   (target < 500 MB)")
    await nc.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pods", type=int, default=100)
    p.add_argument("--hollow", type=int, default=1000)
    p.add_argument("--heartbeat", type=float, default=10.0)
    p.add_argument("--hold", type=float, default=30.0, help="seconds to watch the hollow heartbeats")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds each phase may take (node Ready, pods Running, hollow nodes registered)")
    args = p.parse_args()
    with embedded_nats() as server, contextlib.ExitStack() as stack:
        stack.enter_context(service("apiserver", server.url, "--identity", "api-0"))
        state = stack.enter_context(tempfile.TemporaryDirectory(prefix="flotilla-bench-agent-"))
        stack.enter_context(service("nodeagent", server.url, "--node-name", "bench-node", "--stop-pods-on-exit",
                                    "--state-dir", state, "--heartbeat-seconds", "2"))
        asyncio.run(real_pods(server.url, args.pods, args.timeout))
        h = stack.enter_context(service("nodeagent.hollow", server.url, "--count", str(args.hollow),
                                        "--heartbeat-seconds", str(args.heartbeat)))
        asyncio.run(hollow(server.url, args.hollow, h.pid, args.heartbeat, args.hold, args.timeout))


if __name__ == "__main__":
    finish(main)
