"""Scheduler benchmark: 1,000 hollow nodes, 10,000 pending pods; pods bound per second from the first
bind to the last, beside the raw JetStream KV CAS rate of the same run; scheduler RSS.

    .venv/bin/python benchmarks/scheduler.py [--nodes 1000] [--pods 10000]

Hollow nodes: by default Node objects registered through the API with Ready status and no agent
behind them (what the scheduler sees of any node); with --hollow-agents, a real hollow node agent
process runs them (heartbeats, pod watches, pods reported Running: more load on the same 2 cores).
Target (issue 4): >= 1,000 pods/s, scheduler RSS < 300 MB.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nats  # noqa: E402

from benchmarks.common import (embedded_nats, pod_json, raw_kv_cas_rate, rss_mb, run_pipelined,  # noqa: E402
                               service, wait_for_service, wait_nodes_ready)
from schemas import Condition, Node, NodeStatus, ObjectMeta  # noqa: E402
from services.lib.client import Api  # noqa: E402


async def prepare(url: str, args: argparse.Namespace) -> str:
    nc = await nats.connect(url, pending_size=64 * 1024 * 1024)
    await wait_for_service(nc, "flotilla-apiserver")
    api = Api(nc, timeout=30)
    alloc = {"cpu": "32", "memory": "128Gi", "pods": "110"}

    async def node(i: int) -> None:
        await api.nodes.create(Node(metadata=ObjectMeta(name=f"hollow-{i:05d}", labels={"type": "hollow"}),
                                    status=NodeStatus(capacity=alloc, allocatable=alloc,
                                                      conditions=[Condition(type="Ready", status="True")])))
    if args.hollow_agents:
        secs = await wait_nodes_ready(api, args.nodes)
        print(f"{'hollow node agents Ready':<44} {args.nodes:>10}   in {secs:.1f} s")
    else:
        secs, _ = await run_pipelined(args.nodes, 64, node)
        print(f"{'registered hollow nodes':<44} {args.nodes:>10}   in {secs:.1f} s")

    async def pod(i: int) -> None:
        msg = await nc.request("flo.api.v1.pods.create", pod_json(f"pending-{i:06d}"), timeout=30)
        assert msg.data.startswith(b'{"kind":"Pod"'), msg.data[:200]
    secs, _ = await run_pipelined(args.pods, 64, pod)
    print(f"{'created pending pods':<44} {args.pods:>10}   in {secs:.1f} s ({args.pods / secs:.0f}/s)")
    raw = await raw_kv_cas_rate(nc, 5000, 64)
    print(f"{'raw JetStream KV get+CAS update, 64 in flight':<44} {raw:>10.0f}/s")
    rv = (await api.pods.list(limit=1)).resource_version
    await nc.close()
    return f"{raw}:{rv}"


async def observe(url: str, rv: str, n: int) -> tuple[float, float]:
    """Watch binds from `rv`: returns (time of first bind, time of last bind)."""
    nc = await nats.connect(url, pending_size=64 * 1024 * 1024)
    api = Api(nc, timeout=30)
    bound: set[str] = set()
    first = last = 0.0
    async for _, pod in api.pods.watch(resource_version=rv):
        if pod.spec.node_name and pod.metadata.name not in bound:
            bound.add(pod.metadata.name)
            last = time.monotonic()
            first = first or last
            if len(bound) >= n:
                break
    await nc.close()
    return first, last


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--pods", type=int, default=10_000)
    p.add_argument("--apiservers", type=int, default=1)
    p.add_argument("--hollow-agents", action="store_true", help="run the nodes as hollow node agents")
    args = p.parse_args()
    with embedded_nats() as server, contextlib.ExitStack() as stack:
        for i in range(args.apiservers):
            stack.enter_context(service("apiserver", server.url, "--identity", f"bench-api-{i}"))
        if args.hollow_agents:
            stack.enter_context(service("nodeagent.hollow", server.url, "--count", str(args.nodes),
                                        "--cpu", "32", "--memory", "128Gi", "--heartbeat-seconds", "10"))
        raw_s, rv = asyncio.run(prepare(server.url, args)).split(":")
        raw = float(raw_s)
        sched = stack.enter_context(service("scheduler", server.url, "--identity", "bench-scheduler"))
        first, last = asyncio.run(observe(server.url, rv, args.pods))
        rate = args.pods / (last - first) if last > first else float("nan")
        print(f"{'pods bound per second (first to last bind)':<44} {rate:>10.0f}/s   (target >= 1000)")
        print(f"{'ratio to raw KV get+CAS':<44} {rate / raw:>12.2f}")
        print(f"{'scheduler RSS':<44} {rss_mb(sched.pid):>10.1f} MB   (target < 300 MB)")


if __name__ == "__main__":
    main()
