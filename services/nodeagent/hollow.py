"""`python -m services.nodeagent.hollow --count 1000 --prefix hollow-`: many hollow node agents in
one process, for scale benchmarks only (like kubemark's hollow nodes).

Each is a full NodeAgent (its own Node, Lease heartbeat, pod watch, pod sync and logs subject)
with the hollow runtime and no checkpoint, sharing one NATS connection. Pod CIDRs are assigned
here from one listing of the Nodes; agents start `--start-concurrency` at a time; heartbeats are
spread over the interval. One `flotilla-nodeagent` service registration covers them all.
"""
from __future__ import annotations

import argparse
import asyncio
import time

from nats.aio.client import Client

from schemas import ApiError

from services.lib.client import Api
from services.lib.log import get_logger
from services.lib.registry import register
from services.lib.runner import run_service

from .agent import AgentConfig, NodeAgent
from .config import _labels
from .node import NodeConfig
from .network import DEFAULT_POOL, choose_pod_cidr

log = get_logger("flotilla.nodeagent.hollow")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--count", type=int, default=100, help="hollow nodes to run (default 100)")
    p.add_argument("--prefix", default="hollow-", help="node names are <prefix><n> (default hollow-)")
    p.add_argument("--first", type=int, default=0, help="number of the first node (default 0)")
    p.add_argument("--cpu", default="4", help="cpu capacity of each node (default 4)")
    p.add_argument("--memory", default="8Gi", help="memory capacity of each node (default 8Gi)")
    p.add_argument("--pods", type=int, default=110, help="pods per node (default 110)")
    p.add_argument("--heartbeat-seconds", type=float, default=10.0, help="lease renewal interval (default 10)")
    p.add_argument("--node-status-seconds", type=float, default=60.0, help="node status interval (default 60)")
    p.add_argument("--start-concurrency", type=int, default=50, help="agents starting at once (default 50)")
    p.add_argument("--pod-cidr-pool", default=DEFAULT_POOL, help=f"pool of node pod CIDRs (default {DEFAULT_POOL})")
    p.add_argument("--no-events", action="store_true", help="record no Events for hollow pods")
    p.add_argument("--node-labels", type=_labels, default={}, help="extra labels of every hollow Node: k=v,k2=v2")


async def _existing_cidrs(api: Api) -> dict[str, str]:
    delay = 0.2
    while True:
        try:
            nodes = await api.nodes.list_all()
            return {n.metadata.name: n.spec.pod_cidr or "" for n in nodes.items}
        except ApiError as exc:
            log.warning("cannot list nodes yet; retrying", reason=exc.reason, error=exc.message)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def main(args: argparse.Namespace, nc: Client) -> None:
    names = [f"{args.prefix}{i}" for i in range(args.first, args.first + args.count)]
    existing = await _existing_cidrs(Api(nc, node=names[0]))
    used = {c for c in existing.values() if c}
    cidrs: dict[str, str] = {}
    for name in names:
        if existing.get(name):
            cidrs[name] = existing[name]
        else:
            cidrs[name] = choose_pod_cidr(name, used, args.pod_cidr_pool)
            used.add(cidrs[name])
    slots = asyncio.Semaphore(max(1, args.start_concurrency))
    began = time.monotonic()
    svc = await register(nc, "nodeagent", args.identity, principal=args.principal, node=f"{args.prefix}*", runtime="hollow",
                         count=str(args.count))
    try:
        async with asyncio.TaskGroup() as tg:
            async def start(name: str) -> None:
                registration = NodeConfig(name=name, cpu=args.cpu, memory=args.memory, pods=args.pods,
                                          heartbeat=args.heartbeat_seconds, status_seconds=args.node_status_seconds,
                                          pod_cidr=cidrs[name], pod_cidr_pool=args.pod_cidr_pool,
                                          labels=dict(args.node_labels))
                cfg = AgentConfig(registration, identity=f"{args.identity}/{name}", hollow=True, sync_workers=1,
                                  register_service=False, watch_services=False, events=not args.no_events)
                agent = NodeAgent(nc, cfg)
                async with slots:
                    tg.create_task(agent.run(), name=f"hollow {name}")
                    await agent.ready.wait()

            async with asyncio.TaskGroup() as starting:
                for name in names:
                    starting.create_task(start(name))
            log.info("hollow nodes ready", count=len(names), seconds=round(time.monotonic() - began, 1))
    finally:
        if nc.is_connected:
            await svc.stop()


if __name__ == "__main__":
    run_service("nodeagent.hollow", main, add_arguments)
