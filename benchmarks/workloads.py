"""Workload benchmark: a ReplicaSet scaled 0 -> 5,000 on 500 hollow nodes; seconds until all 5,000 pods
are Running (created by the replica controller, bound by the scheduler, reported by the hollow node
agents), pods per second, beside the raw JetStream KV create rate of the same run.

    .venv/bin/python benchmarks/workloads.py [--nodes 500] [--pods 5000] [--apiservers 1]

Target (issue 5): >= 300 pods/s end to end.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nats  # noqa: E402

from benchmarks.common import (Unfinished, baseline_note, cpu_seconds, embedded_nats, finish,  # noqa: E402
                               raw_kv_create_rate, rss_mb, service, wait_for_service, wait_nodes_ready)
import msgspec  # noqa: E402

from schemas import RESOURCES  # noqa: E402
from services.lib.client import Api, ResourceClient  # noqa: E402


class _Name(msgspec.Struct):
    name: str


class _Spec(msgspec.Struct, rename="camel"):
    node_name: str | None = None


class _Status(msgspec.Struct):
    phase: str | None = None


class PodProgress(msgspec.Struct):
    """The three fields the benchmark follows: decoding whole pods made the observer itself a visible
    share of the two cores."""
    metadata: _Name
    spec: _Spec = msgspec.field(default_factory=_Spec)
    status: _Status = msgspec.field(default_factory=_Status)


async def run(url: str, args: argparse.Namespace, pids: dict[str, int]) -> None:
    nc = await nats.connect(url, pending_size=64 * 1024 * 1024)
    await wait_for_service(nc, "flotilla-apiserver")
    api = Api(nc, timeout=60)
    secs = await wait_nodes_ready(api, args.nodes)
    print(f"{'hollow nodes Ready':<46} {args.nodes:>8}   after {secs:.1f} s")
    raw = await raw_kv_create_rate(nc, 5000, 64)
    print(f"{'raw JetStream KV create, 64 in flight':<46} {raw:>8.0f}/s   ({baseline_note()})")
    rv = (await api.pods.list(limit=1)).resource_version
    js = nc.jetstream()
    seq0 = {b: (await js.stream_info(f"KV_{b}")).state.last_seq for b in ("flotilla", "flotilla-events")}
    await api.replicasets.create({
        "apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "bench"},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "bench"}},
                 "template": {"metadata": {"labels": {"app": "bench"}}, "spec": {"containers": [
                     {"name": "c", "image": "bench:1", "command": ["sleep", "3600"],
                      "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}}}})
    running: set[str] = set()
    created: set[str] = set()
    bound: set[str] = set()
    marks: dict[str, float] = {}
    pids = {**pids, "benchmark (watching)": os.getpid()}
    cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    t0 = time.monotonic()
    await api.replicasets.scale("bench", args.pods)

    async def observe() -> None:
        pods = ResourceClient(api, msgspec.structs.replace(RESOURCES["pods"], type=PodProgress))
        async for _, pod in pods.watch(label_selector="app=bench", resource_version=rv):
            name = pod.metadata.name
            created.add(name)
            if pod.spec.node_name:
                bound.add(name)
            if pod.status.phase == "Running":
                running.add(name)
            for what, s in (("created", created), ("bound", bound), ("running", running)):
                if what not in marks and len(s) >= args.pods:
                    marks[what] = time.monotonic() - t0
            if len(running) >= args.pods:
                return

    async def progress() -> None:
        while True:
            await asyncio.sleep(5)
            print(f"  t={time.monotonic() - t0:5.1f}s created {len(created)} bound {len(bound)} running {len(running)}",
                  flush=True)

    async with asyncio.TaskGroup() as tg:
        p = tg.create_task(progress())
        try:
            await asyncio.wait_for(observe(), timeout=args.timeout)
        except TimeoutError:
            raise Unfinished(f"after {args.timeout:.0f} s only {len(created)} created, {len(bound)} bound, "
                             f"{len(running)} Running of {args.pods} pods") from None
        finally:
            p.cancel()
    total = marks["running"]
    print(f"{'all pods created':<46} {marks['created']:>8.1f} s")
    print(f"{'all pods bound':<46} {marks['bound']:>8.1f} s")
    print(f"{'all pods Running':<46} {total:>8.1f} s")
    print(f"{'pods per second, end to end':<46} {args.pods / total:>8.0f}/s   (target >= 300)")
    print(f"{'ratio to raw KV create':<46} {args.pods / total / raw:>10.3f}")
    for b, before in seq0.items():
        writes = (await js.stream_info(f"KV_{b}")).state.last_seq - before
        print(f"{'writes to ' + b + ' during the run':<46} {writes:>8}   ({writes / args.pods:.1f} per pod)")
    events_unfinished: str | None = None
    if not args.no_events:
        # Events (Scheduled, Started) are written off the pods' path and may trail the last Running.
        want = 2 * args.pods
        while (got := (await js.stream_info("KV_flotilla-events")).state.last_seq - seq0["flotilla-events"]) < want \
                and time.monotonic() - t0 < args.timeout:
            await asyncio.sleep(0.1)
        if got < want:
            events_unfinished = f"only {got} of {want} pod events (Scheduled, Started) written within {args.timeout:.0f} s"
            print(f"{'events written (Scheduled, Started)':<46} {got:>8} of {want}: timed out after {args.timeout:.0f} s")
        else:
            print(f"{'every pod has its Scheduled and Started events':<46} {time.monotonic() - t0:>8.1f} s")
    cpu_total = 0.0
    for name, pid in pids.items():
        used = cpu_seconds(pid) - cpu0[name]
        cpu_total += used
        print(f"{'CPU ' + name:<46} {used:>8.1f} s   ({100 * used / total:.0f}% of one core)")
    # Less noisy than the rate on a shared VM: the work the whole system did for these pods.
    print(f"{'CPU all processes, per pod':<46} {1000 * cpu_total / args.pods:>8.2f} ms   ({cpu_total:.1f} s)")
    for name, pid in pids.items():
        if name not in ("nats-server", "benchmark (watching)"):
            print(f"{'RSS ' + name:<46} {rss_mb(pid):>8.1f} MB")
    await nc.close()
    if events_unfinished:
        # After the figures above (they stand), but the run as a whole did not finish.
        raise Unfinished(events_unfinished)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=500)
    p.add_argument("--pods", type=int, default=5000)
    p.add_argument("--apiservers", type=int, default=1,
                   help="API server replicas (each follows the whole log: on 2 cores one is faster)")
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--no-events", action="store_true", help="hollow agents record no pod events")
    p.add_argument("--burst", type=int, default=500, help="the replica controller's burst (Kubernetes' default 500)")
    args = p.parse_args()
    with embedded_nats() as server, contextlib.ExitStack() as stack:
        pids = {"nats-server": server.pid}
        for i in range(args.apiservers):
            pids[f"apiserver-{i}"] = stack.enter_context(service("apiserver", server.url, "--identity", f"api-{i}")).pid
        pids["scheduler"] = stack.enter_context(service("scheduler", server.url, "--identity", "sched")).pid
        pids["replicaset"] = stack.enter_context(service("replicaset", server.url, "--identity", "rsc",
                                                         "--burst", str(args.burst))).pid
        hollow_args = ["--count", str(args.nodes), "--heartbeat-seconds", "10"] + (["--no-events"] if args.no_events else [])
        pids["hollow nodes"] = stack.enter_context(service("nodeagent.hollow", server.url, *hollow_args)).pid
        asyncio.run(run(server.url, args, pids))


if __name__ == "__main__":
    finish(main)
