"""Fairness and the cost of authorization (issue 12), on a secured nats-server (Flotilla's generated
operator/account/user credentials), one API server process at a time with the apiserver's creds.

    .venv/bin/python benchmarks/fairness.py [--seconds 10] [--flood-concurrency 64] [--flood-processes 2]
        [--limit-qps Q --limit-burst B] [--creates 10000] [--rounds 2] [--raw 10000]

(a) Fairness: a victim identity (`scheduler`, one request in flight, `get` of a Node) measures its
    latency alone, then while a flood identity (`reader`, many requests in flight, get/list as fast
    as it can, never backing off) runs in processes of its own (so the flood's client CPU does not
    sit in the victim's event loop). The flood is bounded in time (--seconds) and count (--flood-max) and goes to a
    loopback URL only. Measured twice, each on a fresh API server: with the per-principal rate limit
    at its defaults (or a row of its own for the flood principal: --limit-qps/--limit-burst), and with
    it effectively off (a huge --rate-limit-qps), to show what it buys.
    Target: victim p99 under flood < 100 ms (with the limit on).
(b) Cost of authorization: API pod creates (64 in flight, as the `replicaset` principal, whose
    creates pass the table) with `--authorization on` vs `off`, a fresh API server and bucket each,
    rounds alternating; the raw JetStream KV create rate of the same run as the baseline. The rate
    limit is off in (b) (qps 0), so that only the authorization check differs. Target: < 10 % cost.

The machine is shared: every figure is measured in this run, the ratios are the result.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgspec  # noqa: E402
import nats  # noqa: E402
import nats.errors  # noqa: E402
import yaml  # noqa: E402

from benchmarks.common import (Unfinished, finish, percentile, pod_json, process, raw_kv_create_rate,  # noqa: E402
                               run_pipelined, service, wait_for_service)
from flotilla.credentials import ClusterCredentials  # noqa: E402
from flotilla.natsserver import NatsServer  # noqa: E402
from schemas import RESOURCES  # noqa: E402
from services.apiserver.authz import DEFAULT_CONFIG, Authorizer, load_config  # noqa: E402
from services.lib import permissions  # noqa: E402

VICTIM = "scheduler"
FLOOD = "reader"
CREATOR = "replicaset"
VICTIM_NODE = "bench-node"
DEFAULT_QPS, DEFAULT_BURST = "2000", "4000"  # the API server's (services/apiserver/__main__.py)
HUGE_QPS = "1e9"  # "effectively off": no bucket ever runs dry
TARGET_P99_MS = 100.0
TARGET_AUTHZ_COST = 0.10
_GET = msgspec.json.encode({"name": VICTIM_NODE})
_LIST = msgspec.json.encode({"namespace": "default", "limit": 50})


def _status(data: bytes) -> dict | None:
    """The Status of an error reply, None for an object (every Status begins so: services/lib/codec)."""
    return json.loads(data) if data.startswith(b'{"kind":"Status"') else None


async def connect(url: str, creds: ClusterCredentials, principal: str) -> nats.NATS:
    path = creds.node_creds(principal[5:]) if principal.startswith("node-") else creds.creds_path(principal)
    if not path.exists():
        creds.write_user(principal, permissions.for_principal(principal))
    return await nats.connect(url, user_credentials=str(path), inbox_prefix=permissions.inbox(principal),
                              pending_size=64 * 1024 * 1024, max_reconnect_attempts=-1)


# ---- the flood: a process of its own ----------------------------------------------------------------

async def flood(url: str, creds_file: str, seconds: float, concurrency: int, max_requests: int) -> None:
    """`concurrency` workers, each one request in flight, alternating get and list of pods as the flood
    principal, until `seconds` pass or `max_requests` were sent; prints the counts as one JSON line."""
    nc = await nats.connect(url, user_credentials=creds_file, inbox_prefix=permissions.inbox(FLOOD),
                            pending_size=64 * 1024 * 1024)
    pods = RESOURCES["pods"]
    subjects = (pods.subject("get", user=FLOOD), pods.subject("list", user=FLOOD))
    counts = {"accepted": 0, "throttled": 0, "other": 0, "timeouts": 0}
    sent = 0
    deadline = time.monotonic() + seconds

    async def worker(w: int) -> None:
        nonlocal sent
        i = w
        while sent < max_requests and time.monotonic() < deadline:
            sent += 1
            i += 1
            try:
                msg = await nc.request(subjects[i % 2], _GET if i % 2 == 0 else _LIST, timeout=10)
            except nats.errors.TimeoutError:
                counts["timeouts"] += 1
                continue
            st = _status(msg.data)
            if st is None or st.get("code") == 404:  # a pod that is not there is an answer too
                counts["accepted"] += 1
            elif st.get("code") == 429:
                counts["throttled"] += 1
            else:
                counts["other"] += 1

    t0 = time.monotonic()
    async with asyncio.TaskGroup() as tg:
        for w in range(concurrency):
            tg.create_task(worker(w))
    counts["seconds"] = time.monotonic() - t0
    print(json.dumps(counts), flush=True)
    await nc.close()


# ---- the measuring side -----------------------------------------------------------------------------

class Cluster:
    def __init__(self, server: NatsServer, creds: ClusterCredentials, log_dir: Path):
        self.server = server
        self.creds = creds
        self.log_dir = log_dir
        self.generation = 0

    @contextlib.contextmanager
    def apiserver(self, *args: str) -> Iterator[str]:
        """A fresh API server on a fresh bucket; yields the bucket's name."""
        self.generation += 1
        bucket = f"bench{self.generation}"
        with service("apiserver", self.server.url, "--creds", str(self.creds.creds_path(permissions.APISERVER)),
                     "--identity", f"bench-api-{self.generation}", "--bucket", bucket, *args, log_dir=self.log_dir):
            yield bucket


async def wait_serving(nc: nats.NATS, timeout: float = 60.0) -> None:
    await wait_for_service(nc, "flotilla-apiserver", timeout)
    subject = RESOURCES["namespaces"].subject("get")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(nats.errors.TimeoutError, nats.errors.NoRespondersError):
            msg = await nc.request(subject, b'{"name":"default"}', timeout=2)
            if msg.data.startswith(b'{"kind":"Namespace"'):
                return
        await asyncio.sleep(0.2)
    raise Unfinished(f"the API server did not serve within {timeout}s")


async def victim_run(nc: nats.NATS, seconds: float) -> tuple[list[float], int]:
    """Sequential gets of a Node as the victim for `seconds`: latencies (ms) and non-success replies."""
    subject = RESOURCES["nodes"].subject("get", user=VICTIM)
    lat: list[float] = []
    failed = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        t0 = time.perf_counter()
        msg = await nc.request(subject, _GET, timeout=30)
        lat.append((time.perf_counter() - t0) * 1000)
        if _status(msg.data) is not None:
            failed += 1
    return lat, failed


async def fairness_phase(cluster: Cluster, args: argparse.Namespace, label: str, *api_args: str) -> dict:
    with cluster.apiserver(*api_args):
        admin = await connect(cluster.server.url, cluster.creds, permissions.ADMIN)
        victim = await connect(cluster.server.url, cluster.creds, VICTIM)
        try:
            await wait_serving(admin)
            node = {"kind": "Node", "metadata": {"name": VICTIM_NODE}}
            reply = await admin.request(RESOURCES["nodes"].subject("create"), msgspec.json.encode(node), timeout=10)
            if _status(reply.data) is not None:
                raise Unfinished(f"creating the victim's node failed: {reply.data[:200]!r}")
            await victim_run(victim, 1.0)  # warm-up: caches, connections
            alone, failed_alone = await victim_run(victim, args.seconds)
            argv = [sys.executable, str(Path(__file__).resolve()), "--flood-worker", cluster.server.url,
                    str(cluster.creds.creds_path(FLOOD)), "--seconds", str(args.seconds + 1.0),
                    "--flood-concurrency", str(args.flood_concurrency),
                    "--flood-max", str(args.flood_max // args.flood_processes)]
            names = [f"flood-{label}-{k}" for k in range(args.flood_processes)]
            with contextlib.ExitStack() as stack:
                procs = [stack.enter_context(process(name, argv, cluster.log_dir)) for name in names]
                await asyncio.sleep(1.0)  # the flood is connected and running (and past the bucket's burst)
                under, failed_under = await victim_run(victim, args.seconds)
                # Until they exit, without reaping them: common.process signals the group on the way
                # out, which fails for a reaped process whose group is gone.
                for proc in procs:
                    while os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
                        await asyncio.sleep(0.1)
            parts = [_flood_counts(cluster.log_dir, name) for name in names]
            counts = {key: sum(c[key] for c in parts) for key in ("accepted", "throttled", "other", "timeouts")}
            counts["seconds"] = max(c["seconds"] for c in parts)
        finally:
            await admin.close()
            await victim.close()
    return {"label": label, "alone": alone, "under": under, "failed": failed_alone + failed_under, **counts}


def _flood_counts(log_dir: Path, name: str) -> dict:
    """The flood process's JSON line, from its log file (benchmarks.common.process names it)."""
    logs = sorted(log_dir.glob(f"bench-{name}-*.log"), key=lambda p: p.stat().st_mtime)
    for line in reversed(logs[-1].read_text().splitlines() if logs else []):
        if line.startswith("{"):
            return json.loads(line)
    raise Unfinished(f"the flood process printed no counts (log: {logs[-1] if logs else 'none'})")


async def create_rate(cluster: Cluster, n: int, authorization: str) -> tuple[float, float]:
    """Pod creates per second through a fresh API server (64 in flight), and their p99 in ms."""
    with cluster.apiserver("--authorization", authorization, "--rate-limit-qps", "0"):
        admin = await connect(cluster.server.url, cluster.creds, permissions.ADMIN)
        creator = await connect(cluster.server.url, cluster.creds, CREATOR)
        try:
            await wait_serving(admin)
            subject = RESOURCES["pods"].subject("create", user=CREATOR)

            async def create(i: int) -> None:
                msg = await creator.request(subject, pod_json(f"p-{i}"), timeout=30)
                if not msg.data.startswith(b'{"kind":"Pod"'):
                    raise Unfinished(f"create refused: {msg.data[:300]!r}")

            await run_pipelined(200, 64, lambda i: create(n + i))  # warm-up, not counted
            secs, lat = await run_pipelined(n, 64, create)
        finally:
            await admin.close()
            await creator.close()
    return n / secs, percentile(lat, 99)


def authorization_check_us(n: int = 200_000) -> dict[str, float]:
    """What the API server's check costs per request, timed in this process on the built-in table: the
    part of (b) the noise of a shared machine cannot hide."""
    authz = Authorizer(load_config())
    pods, leases = RESOURCES["pods"], RESOURCES["leases"]
    lease = msgspec.json.encode({"namespace": "flotilla-system", "name": "flotilla-replicaset"})
    cases = {"replicaset creates a pod": (CREATOR, pods, "create", pod_json("x")),
             "replicaset gets its lease (names rule)": (CREATOR, leases, "get", lease)}
    out = {}
    for what, (principal, resource, verb, body) in cases.items():
        authz.check(principal, resource, verb, body)  # compiles the principal's grants
        t0 = time.perf_counter()
        for _ in range(n):
            authz.check(principal, resource, verb, body)
        out[what] = (time.perf_counter() - t0) / n * 1e6
    return out


def _row(what: str, value: str, note: str = "") -> None:
    print(f"{what:<58} {value:>14}   {note}", flush=True)


async def measure(cluster: Cluster, args: argparse.Namespace) -> None:
    print(f"{'measure':<58} {'value':>14}", flush=True)
    # benchmarks.common.service turns the limit off unless told: the limited phase says the defaults
    limits = ["--rate-limit-qps", DEFAULT_QPS, "--rate-limit-burst", DEFAULT_BURST]
    if args.limit_qps:  # the flood principal's own row in the table; everyone else keeps the defaults
        table = yaml.safe_load(DEFAULT_CONFIG.read_text())
        table["rateLimits"] = {FLOOD: {"qps": float(args.limit_qps), "burst": int(args.limit_burst or args.limit_qps)}}
        path = cluster.log_dir / "rbac-flood-limited.yaml"
        path.write_text(yaml.safe_dump(table))
        load_config(path)  # refuse a bad table here rather than in the API server's log
        limits += ["--authorization-config", str(path)]
    phases = [await fairness_phase(cluster, args, "limited", *limits),
              await fairness_phase(cluster, args, "unlimited", "--rate-limit-qps", HUGE_QPS,
                                   "--rate-limit-burst", "1000000000")]
    for ph in phases:
        limited = (f"rate limit on ({FLOOD}: qps {args.limit_qps}, burst {args.limit_burst or args.limit_qps}; "
                   "others the defaults)" if args.limit_qps
                   else f"rate limit on (defaults: qps {DEFAULT_QPS}, burst {DEFAULT_BURST})")
        what = (limited if ph["label"] == "limited"
                else f"rate limit effectively off (qps {HUGE_QPS})")
        print(f"-- fairness, {what}")
        a, u = ph["alone"], ph["under"]
        _row(f"victim ({VICTIM}) get, alone", f"p50 {percentile(a, 50):.2f} ms", f"p99 {percentile(a, 99):.2f} ms  "
             f"({len(a)} requests)")
        p99 = percentile(u, 99)
        _row(f"victim ({VICTIM}) get, under flood", f"p50 {percentile(u, 50):.2f} ms", f"p99 {p99:.2f} ms  "
             f"({len(u)} requests; target p99 < {TARGET_P99_MS:.0f} ms: {'met' if p99 < TARGET_P99_MS else 'NOT met'})")
        secs = ph["seconds"]
        _row(f"flood ({FLOOD}, {args.flood_processes} x {args.flood_concurrency} in flight) accepted", f"{ph['accepted']:>10}",
             f"{ph['accepted'] / secs:.0f}/s")
        _row(f"flood ({FLOOD}) refused 429 TooManyRequests", f"{ph['throttled']:>10}", f"{ph['throttled'] / secs:.0f}/s")
        if ph["other"] or ph["timeouts"] or ph["failed"]:
            _row("flood other replies / timeouts; victim failures", f"{ph['other']}/{ph['timeouts']}; {ph['failed']}")

    print("-- cost of authorization (pod creates, 64 in flight, rate limit off)")
    raw_nc = await connect(cluster.server.url, cluster.creds, permissions.APISERVER)
    try:
        raw = await raw_kv_create_rate(raw_nc, args.raw, 64)
    finally:
        await raw_nc.close()
    _row("raw JetStream KV create, 64 in flight", f"{raw:>10.0f}/s")
    rates: dict[str, list[float]] = {"on": [], "off": []}
    for r in range(args.rounds):
        for mode in (("off", "on") if r % 2 == 0 else ("on", "off")):  # alternate: drift hits both alike
            rate, p99 = await create_rate(cluster, args.creates, mode)
            rates[mode].append(rate)
            _row(f"API pod create, authorization {mode} (round {r + 1})", f"{rate:>10.0f}/s",
                 f"p99 {p99:.2f} ms   (ratio to raw {rate / raw:.2f})")
    check_us = authorization_check_us()
    for what, us in check_us.items():
        _row(f"one authorization check, in process ({what})", f"{us:>9.2f} us")
    on, off = statistics.median(rates["on"]), statistics.median(rates["off"])
    cost = 1 - on / off
    _row("median create rate, on / off", f"{on:.0f} / {off:.0f}")
    _row("cost of authorization (1 - on/off)", f"{100 * cost:>9.1f} %",
         f"(target < {100 * TARGET_AUTHZ_COST:.0f} %: {'met' if cost < TARGET_AUTHZ_COST else 'NOT met'})")
    per_create_us = 1e6 / off  # the API server's time per create at the measured rate (one process)
    worst = max(check_us.values())
    _row("a check's share of an API create's time", f"{100 * worst / per_create_us:>9.2f} %",
         f"({worst:.2f} us of {per_create_us:.0f} us)")
    print("(a shared 2-core machine: figures vary run to run; compare within this run)", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=10.0, help="victim measurement time, alone and under flood")
    p.add_argument("--flood-concurrency", type=int, default=64, help="the flood's requests in flight")
    p.add_argument("--flood-processes", type=int, default=2,
                   help="processes the flood runs in (one nats-py client does not outrun the limit)")
    p.add_argument("--flood-max", type=int, default=2_000_000, help="the flood's bound in requests, in all")
    p.add_argument("--limit-qps", default=None,
                   help="the flood principal's own rate limit in the limited phase (a rateLimits row of the "
                        "authorization table); default: the server's defaults for everyone")
    p.add_argument("--limit-burst", default=None, help="its burst (default: --limit-qps)")
    p.add_argument("--creates", type=int, default=10_000, help="pod creates per authorization on/off round")
    p.add_argument("--rounds", type=int, default=3, help="on/off rounds (alternating order; medians compared)")
    p.add_argument("--raw", type=int, default=10_000, help="raw KV creates for the baseline")
    p.add_argument("--flood-worker", nargs=2, metavar=("URL", "CREDS_FILE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.flood_worker:
        url, creds_file = args.flood_worker
        if urlparse(url).hostname not in ("127.0.0.1", "localhost", "::1"):
            raise SystemExit(f"the flood goes to loopback only, not {url}")
        asyncio.run(flood(url, creds_file, args.seconds, args.flood_concurrency, args.flood_max))
        return
    with tempfile.TemporaryDirectory(prefix="flotilla-fairness-") as tmp:
        creds = ClusterCredentials.ensure(Path(tmp) / "auth")
        server = NatsServer(Path(tmp) / "js", extra_config=creds.server_config(),
                            probe_creds=creds.creds_path(permissions.ADMIN))
        server.start()
        try:
            asyncio.run(measure(Cluster(server, creds, Path(tmp)), args))
        finally:
            server.stop()


if __name__ == "__main__":
    finish(main)
