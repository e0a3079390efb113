"""Recovery benchmark: leader failover time per leader-elected component, and time to converge after
each kind of fault on a small real workload, p50/p99 over repeated runs, beside the raw baseline of
the same run (raw KV create/get rates and nats-server's own restart time).

    .venv/bin/python benchmarks/recovery.py [--runs 5] [--seed 1] [--sections failover,faults]

Failover: two replicas of a component (distinct --identity, --lease-duration 4, the services'
default); the leader is killed with SIGKILL; measured from the kill to the standby holding the Lease
`flotilla-<component>` (seen on a watch) and to its first act (scheduler: a pod created after the
kill is bound; replicaset: a scale-up made after the kill is fulfilled; deployment: its ReplicaSet
scaled; gc: a dependent of an owner deleted after the kill is deleted; endpoints: a Service created
after the kill gets its Endpoints; nodelifecycle: a Node created after the kill reporting
Ready=False is tainted). Goal (issue 11): <= 5 s.

Faults: 2 API servers, one of each controller, 3 real node agents (process runtime) and a Deployment
of `sleep 3600` pods behind a Service. Each fault starts from 3 Ready replicas; converged means the
desired number of pods are Ready on live nodes, no other live pods exist and the Service's Endpoints
list exactly that many ready addresses. The API server, NATS and controller faults are measured on a
scale-up to 5 requested right after the fault (for a controller: killed as the scale-up starts and
restarted at once under a new identity, as `flotilla up` does, so its successor waits out the lease).
The node agent fault is measured on the pods being Ready elsewhere (the agent and its pods are killed,
as when a machine dies; its Node is deleted afterwards and a fresh agent joins for the next run).

Each printed figure is measured in this run; `--keep` leaves the services' logs in the temp dir.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nats  # noqa: E402
import nats.errors  # noqa: E402

from benchmarks.common import (ROOT, Unfinished, baseline_note, finish, percentile, raw_kv_create_rate,  # noqa: E402
                               raw_kv_get_rate, state_log_like_bucket)
from flotilla.natsserver import NatsServer  # noqa: E402
from schemas import SYSTEM_NAMESPACE, ApiError  # noqa: E402
from services.lib.client import Api, WatchExpired  # noqa: E402
from services.lib.registry import ping_identities  # noqa: E402

LEASE = "4"  # the services' default --lease-duration; --lease-duration changes it for a run
CONTROLLERS = ["scheduler", "replicaset", "deployment", "gc", "endpoints", "nodelifecycle"]
BASE, UP = 3, 5
APP = "web"
HEALTH_TAINTS = ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")
WAIT = 180.0  # the longest any one wait may take before the run counts as not finished


def has_module(name: str) -> bool:
    return (ROOT / "services" / name / "__main__.py").is_file()


# -- processes -------------------------------------------------------------------------------------

class Proc:
    def __init__(self, name: str, module: str, popen: subprocess.Popen[bytes], log: Path, identity: str,
                 state_dir: Path | None = None):
        self.name, self.module, self.popen, self.log, self.identity = name, module, popen, log, identity
        self.state_dir = state_dir

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill9(self) -> None:
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.popen.wait()

    def stop(self, grace: float = 10.0) -> None:
        if self.popen.poll() is not None:
            return
        try:
            os.killpg(self.popen.pid, signal.SIGTERM)
            self.popen.wait(grace)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            self.kill9()

    def tail(self, lines: int = 15) -> str:
        try:
            return "".join(self.log.read_text(errors="replace").splitlines(keepends=True)[-lines:])
        except FileNotFoundError:
            return "(no log)"


def processes_under(root: Path) -> list[int]:
    """Pids whose working directory is inside `root`: the pod processes of this run's node agents (each
    in its own session, so killing an agent's group does not reach them)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if cwd == str(root) or cwd.startswith(str(root) + "/"):
            found.append(int(entry.name))
    return found


def kill_pids(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Cluster:
    """Every process this benchmark starts, in one temp dir; close() stops them all (and any pod process
    left under the temp dir), whatever happened."""

    def __init__(self, keep: bool = False) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="flotilla-recovery-")).resolve()
        self.keep = keep
        self.nats = NatsServer(self.root / "nats")
        self.procs: list[Proc] = []
        self._count = 0
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "XDG_STATE_HOME": str(self.root / "state")}

    def start(self, module: str, *args: str, identity: str | None = None, node: str | None = None) -> Proc:
        self._count += 1
        identity = identity or f"{module}-{self._count}"
        name = node or identity
        log = self.root / f"{name}-{self._count}.log"
        argv = [sys.executable, "-m", f"services.{module}", "--nats-url", self.nats.url,
                "--log-level", os.environ.get("BENCH_LOG_LEVEL", "warning"), "--identity", identity]
        state_dir = None
        if node:
            state_dir = self.root / "nodes" / node
            argv += ["--node-name", node, "--state-dir", str(state_dir)]
        argv += list(args)
        with open(log, "wb") as out:
            popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                     cwd=ROOT, env=self.env)
        proc = Proc(name, module, popen, log, identity, state_dir)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        # Node agents first, so that with --stop-pods-on-exit they stop their own pods.
        for proc in sorted(self.procs, key=lambda p: p.module != "nodeagent"):
            proc.stop()
        self.nats.stop()
        kill_pids(processes_under(self.root))
        if self.keep:
            print(f"logs kept in {self.root}")
        else:
            shutil.rmtree(self.root, ignore_errors=True)


# -- NATS helpers ------------------------------------------------------------------------------------

async def _bus_error(exc: Exception) -> None:
    """Refused connections while nats-server is down are the fault being measured: nats-py would
    print each with its traceback; the waits report what did not come back."""


async def connect(url: str) -> nats.NATS:
    # Short reconnect wait: the benchmark's own client must not add seconds to a NATS restart figure.
    return await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.1,
                              pending_size=64 * 1024 * 1024, error_cb=_bus_error)


async def until(what: str, check: Callable[[], Awaitable[object]], timeout: float = WAIT,
                interval: float = 0.05, procs: list[Proc] | None = None) -> object:
    """Poll `check` until it returns something truthy; API errors and timeouts while a fault lasts are
    part of what is being waited out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = await check()
            if got:
                return got
        except (ApiError, nats.errors.Error, TimeoutError):
            pass
        for p in procs or ():
            if not p.alive:
                raise Unfinished(f"{p.name} exited ({p.popen.returncode}) while waiting for {what}:\n{p.tail()}")
        if time.monotonic() > deadline:
            raise Unfinished(f"{what}: not within {timeout:.0f} s")
        await asyncio.sleep(interval)


async def wait_registered(nc: nats.NATS, proc: Proc, settle: float = 1.5) -> None:
    await until(f"{proc.name} answering $SRV.PING", lambda: _registered(nc, proc), 60, 0.2, [proc])
    # Registered comes before the informers are synced; give the standby time to be a real candidate.
    await asyncio.sleep(settle)


async def _registered(nc: nats.NATS, proc: Proc) -> bool:
    return proc.identity in await ping_identities(nc, f"flotilla-{proc.module}", 0.3)


async def lease_holder(api: Api, component: str) -> str | None:
    try:
        return (await api.leases.get(f"flotilla-{component}", SYSTEM_NAMESPACE)).spec.holder_identity
    except ApiError as exc:
        if exc.reason == "NotFound":
            return None
        raise


async def lease_moved(api: Api, component: str, old: str, t0: float) -> float:
    """Seconds from t0 until the Lease is seen (on a watch) held by someone other than `old`."""
    name = f"flotilla-{component}"
    while True:
        try:
            listed = await api.leases.list(namespace=SYSTEM_NAMESPACE, field_selector=f"metadata.name={name}")
            for lease in listed.items:
                if lease.spec.holder_identity not in (None, "", old):
                    return time.monotonic() - t0
            async for _, lease in api.leases.watch(namespace=SYSTEM_NAMESPACE, field_selector=f"metadata.name={name}",
                                                   resource_version=listed.resource_version):
                if lease.spec.holder_identity not in (None, "", old):
                    return time.monotonic() - t0
        except (WatchExpired, ApiError):
            await asyncio.sleep(0.05)


# -- objects -----------------------------------------------------------------------------------------

def node_body(name: str, ready: bool = True) -> dict:
    alloc = {"cpu": "4", "memory": "8Gi", "pods": "110"}
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
            "status": {"capacity": alloc, "allocatable": alloc,
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def template(app: str) -> dict:
    return {"metadata": {"labels": {"app": app}}, "spec": {
        "terminationGracePeriodSeconds": 2,
        "containers": [{"name": "c", "image": "sleep", "command": ["sleep", "3600"],
                        "ports": [{"name": "p", "containerPort": 8080}],
                        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}}


def rs_body(name: str, replicas: int) -> dict:
    return {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}}, "template": template(name)}}


def deployment_body(name: str, replicas: int) -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}}, "template": template(name)}}


def service_body(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"selector": {"app": name}, "ports": [{"name": "p", "port": 80, "targetPort": "p"}]}}


def live(pods) -> list:
    return [p for p in pods if not p.metadata.deletion_timestamp]


def ready(pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))


# -- the raw baseline ----------------------------------------------------------------------------------

async def baseline(cluster: Cluster, runs: int) -> dict[str, object]:
    nc = await connect(cluster.nats.url)
    try:
        out: dict[str, object] = {
            "create": await raw_kv_create_rate(nc, 2000, 64),
            "get": await raw_kv_get_rate(nc, 5000, 64),
        }
        restarts = []
        async with state_log_like_bucket(nc, "bench_restart") as kv:
            await kv.put("k", b"v")
            for _ in range(runs):
                t0 = time.monotonic()
                await asyncio.to_thread(cluster.nats.kill)
                await asyncio.to_thread(cluster.nats.start)

                async def got() -> bool:
                    return (await kv.get("k")).value == b"v"
                await until("a KV get after the nats-server restart", got, 60, 0.02)
                restarts.append(time.monotonic() - t0)
        out["restart"] = restarts
        return out
    finally:
        await nc.close()


# -- failover ------------------------------------------------------------------------------------------

class Failover:
    """One component: its setup, the trigger made right after the kill, and the check of its first act."""

    def __init__(self, api: Api, component: str):
        self.api, self.c = api, component

    async def setup(self) -> None:
        api = self.api
        if self.c == "scheduler":
            await api.nodes.create(node_body("fo-node"))
        elif self.c == "replicaset":
            await api.replicasets.create(rs_body("fo-rs", 0))
        elif self.c == "deployment":
            await api.deployments.create(deployment_body("fo-dep", 0))
            await until("the Deployment's ReplicaSet", self._dep_rs, 60)

    async def _dep_rs(self):
        items = (await self.api.replicasets.list(label_selector="app=fo-dep")).items
        return items[0] if items else None

    async def before(self, run: int) -> None:
        """Objects the trigger acts on that must exist before the kill."""
        if self.c == "gc":
            owner = await self.api.replicasets.create(rs_body(f"fo-gc-{run}", 0))
            pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {
                "name": f"fo-gc-{run}", "labels": {"app": "fo-gc-dependent"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": owner.metadata.name,
                                     "uid": owner.metadata.uid, "controller": True}]},
                "spec": template("x")["spec"]}
            await self.api.pods.create(pod)

    async def trigger(self, run: int) -> None:
        api, c = self.api, self.c
        if c == "scheduler":
            await api.pods.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"fo-sched-{run}"},
                                   "spec": template("x")["spec"]})
        elif c == "replicaset":
            await api.replicasets.scale("fo-rs", run + 1)
        elif c == "deployment":
            await api.deployments.scale("fo-dep", run + 1)
        elif c == "gc":
            try:
                await api.replicasets.delete(f"fo-gc-{run}")
            except ApiError as exc:
                if exc.reason != "NotFound":  # NotFound: an earlier attempt got through, its reply lost
                    raise
        elif c == "endpoints":
            await api.services.create(service_body(f"fo-ep-{run}"))
        elif c == "nodelifecycle":
            # Reporting NotReady itself: tainted at once, with no grace period to wait out first.
            await api.nodes.create(node_body(f"fo-nl-{run}", ready=False))

    async def acted(self, run: int) -> bool:
        api, c = self.api, self.c
        if c == "scheduler":
            return bool((await api.pods.get(f"fo-sched-{run}")).spec.node_name)
        if c == "replicaset":
            return len(live((await api.pods.list(label_selector="app=fo-rs")).items)) == run + 1
        if c == "deployment":
            rs = await self._dep_rs()
            return rs is not None and rs.spec.replicas == run + 1
        if c == "gc":
            try:
                return (await api.pods.get(f"fo-gc-{run}")).metadata.deletion_timestamp is not None
            except ApiError as exc:
                return exc.reason == "NotFound"
        if c == "endpoints":
            try:
                await api.endpoints.get(f"fo-ep-{run}")
                return True
            except ApiError as exc:
                if exc.reason == "NotFound":
                    return False
                raise
        node = await api.nodes.get(f"fo-nl-{run}")
        return any(t.key in HEALTH_TAINTS for t in node.spec.taints or [])

    @property
    def act_name(self) -> str:
        return {"scheduler": "new pod bound", "replicaset": "scale-up fulfilled", "deployment": "ReplicaSet scaled",
                "gc": "dependent deleted", "endpoints": "Endpoints written",
                "nodelifecycle": "NotReady node tainted"}[self.c]


async def failover(cluster: Cluster, components: list[str], runs: int,
                   results: dict[str, tuple[str, list[float], list[float]]]) -> None:
    nc = await connect(cluster.nats.url)
    api = Api(nc, timeout=3)
    try:
        for c in components:
            fo = Failover(api, c)
            procs = {}
            for k in range(2):
                p = cluster.start(c, "--lease-duration", LEASE, identity=f"{c}-{k}")
                procs[p.identity] = p
            for p in procs.values():
                await wait_registered(nc, p)
            await until(f"a leader of {c}", lambda: _held(api, c, procs), 60, 0.2, list(procs.values()))
            await fo.setup()
            lease_s: list[float] = []
            act_s: list[float] = []
            results[c] = (fo.act_name, lease_s, act_s)
            for run in range(runs):
                old = await lease_holder(api, c)
                assert old in procs, (old, list(procs))
                await fo.before(run)
                t0 = time.monotonic()
                procs.pop(old).kill9()
                moved = asyncio.create_task(lease_moved(api, c, old, t0))
                try:
                    await until(f"{c} trigger accepted", lambda: _ok(fo.trigger(run)), 30, 0.05)
                    await until(f"{c} standby's first act ({fo.act_name})", lambda: fo.acted(run), WAIT, 0.05,
                                list(procs.values()))
                    act = time.monotonic() - t0
                    lease = await asyncio.wait_for(moved, WAIT)
                finally:
                    moved.cancel()
                lease_s.append(lease)
                act_s.append(act)
                print(f"  {c:<14} run {run + 1}: lease {lease:5.2f} s, first act {act:5.2f} s", flush=True)
                p = cluster.start(c, "--lease-duration", LEASE, identity=f"{c}-{run + 2}")
                procs[p.identity] = p
                await wait_registered(nc, p)
            for p in procs.values():
                p.stop()
    finally:
        await nc.close()


async def _ok(aw: Awaitable[object]) -> bool:
    try:
        await aw
    except ApiError as exc:
        if exc.reason in ("AlreadyExists", "NotFound"):  # an earlier attempt got through, its reply lost
            return True
        raise
    return True


async def _held(api: Api, c: str, procs: dict[str, Proc]) -> bool:
    return await lease_holder(api, c) in procs


# -- faults on a real workload ---------------------------------------------------------------------------

class Workload:
    def __init__(self, cluster: Cluster, nc: nats.NATS, rng: random.Random):
        self.cluster, self.nc, self.rng = cluster, nc, rng
        self.api = Api(nc, timeout=2)
        self.apis: list[Proc] = []
        self.controllers: dict[str, Proc] = {}
        self.agents: list[Proc] = []
        self.dead_nodes: set[str] = set()
        self._nodes = 0
        self._ids = 0

    def _id(self, base: str) -> str:
        self._ids += 1
        return f"{base}-{self._ids}"

    async def start_api(self) -> Proc:
        p = self.cluster.start("apiserver", identity=self._id("api"))
        await wait_registered(self.nc, p, settle=0.2)
        self.apis.append(p)
        return p

    def start_controller(self, c: str) -> Proc:
        p = self.cluster.start(c, "--lease-duration", LEASE, identity=self._id(c))
        self.controllers[c] = p
        return p

    def start_agent(self) -> Proc:
        self._nodes += 1
        p = self.cluster.start("nodeagent", "--heartbeat-seconds", "2", "--stop-pods-on-exit",
                               "--cpu", "4", "--memory", "8Gi", identity=self._id("agent"), node=f"node-{self._nodes}")
        self.agents.append(p)
        return p

    def procs(self) -> list[Proc]:
        return [*self.controllers.values(), *self.agents]

    async def up(self, controllers: list[str]) -> None:
        for _ in range(2):
            await self.start_api()
        for c in controllers:
            self.start_controller(c)
        for _ in range(3):
            self.start_agent()
        await until("3 nodes Ready", self._nodes_ready, WAIT, 0.5, self.procs())
        await self.api.services.create(service_body(APP))
        await self.api.deployments.create(deployment_body(APP, BASE))
        await self.converged(BASE)

    async def _nodes_ready(self) -> bool:
        nodes = (await self.api.nodes.list()).items
        return sum(1 for n in nodes if ready(n)) >= 3

    async def is_converged(self, n: int) -> bool:
        pods = [p for p in live((await self.api.pods.list(label_selector=f"app={APP}")).items)
                if p.spec.node_name not in self.dead_nodes]
        if len(pods) != n or sum(1 for p in pods if ready(p)) != n:
            return False
        try:
            ep = await self.api.endpoints.get(APP)
        except ApiError as exc:
            if exc.reason == "NotFound":
                return False
            raise
        addresses = sum(len(s.addresses or []) for s in ep.subsets or [])
        not_ready = sum(len(s.not_ready_addresses or []) for s in ep.subsets or [])
        return addresses == n and not_ready == 0

    async def converged(self, n: int, t0: float | None = None) -> float:
        t0 = time.monotonic() if t0 is None else t0
        try:
            await until(f"{n} replicas Ready with their endpoints", lambda: self.is_converged(n), WAIT, 0.1,
                        self.procs())
        except Unfinished as exc:
            raise Unfinished(f"{exc}\n{await self.describe()}") from None
        return time.monotonic() - t0

    async def describe(self) -> str:
        """The state a convergence wait gave up on, for the DID NOT FINISH line."""
        try:
            lines = [f"  dead nodes: {sorted(self.dead_nodes)}"]
            for n in (await self.api.nodes.list()).items:
                cond = next((c.status for c in n.status.conditions or [] if c.type == "Ready"), None)
                lines.append(f"  node {n.metadata.name}: Ready={cond} taints={[t.key + ':' + t.effect for t in n.spec.taints or []]}")
            for p in (await self.api.pods.list(label_selector=f"app={APP}")).items:
                lines.append(f"  pod {p.metadata.name}: node={p.spec.node_name} phase={p.status.phase} ready={ready(p)} "
                             f"deleting={bool(p.metadata.deletion_timestamp)}")
            ep = await self.api.endpoints.get(APP)
            lines.append(f"  endpoints: ready={sum(len(s.addresses or []) for s in ep.subsets or [])} "
                         f"not ready={sum(len(s.not_ready_addresses or []) for s in ep.subsets or [])}")
            return "\n".join(lines)
        except (ApiError, nats.errors.Error, TimeoutError) as exc:
            return f"  (state not readable: {exc!r})"

    async def scale(self, n: int) -> None:
        await until(f"scale to {n} accepted", lambda: _ok(self.api.deployments.scale(APP, n)), WAIT, 0.05)

    async def reset(self) -> None:
        await self.scale(BASE)
        await self.converged(BASE)

    # Each fault: from BASE converged, returns seconds from the fault to convergence.
    async def api_one_of_two(self) -> float:
        victim = self.apis.pop(self.rng.randrange(len(self.apis)))
        t0 = time.monotonic()
        victim.kill9()
        await self.scale(UP)
        secs = await self.converged(UP, t0)
        await self.start_api()
        return secs

    async def api_only(self) -> float:
        self.apis.pop(self.rng.randrange(len(self.apis))).stop()  # leaves one: not part of the figure
        victim = self.apis.pop()
        t0 = time.monotonic()
        victim.kill9()
        replacement = self.cluster.start("apiserver", identity=self._id("api"))  # restarted at once
        await self.scale(UP)
        secs = await self.converged(UP, t0)
        await wait_registered(self.nc, replacement, settle=0)
        self.apis.append(replacement)
        await self.start_api()
        return secs

    async def nats_restart(self) -> float:
        t0 = time.monotonic()
        await asyncio.to_thread(self.cluster.nats.kill)
        await asyncio.to_thread(self.cluster.nats.start)
        await self.scale(UP)
        return await self.converged(UP, t0)

    async def agent_dies(self) -> float:
        pods = live((await self.api.pods.list(label_selector=f"app={APP}")).items)
        load = {a.name: sum(1 for p in pods if p.spec.node_name == a.name) for a in self.agents}
        busiest = max(load.values())
        victim = self.rng.choice([a for a in self.agents if load[a.name] == busiest])
        self.agents.remove(victim)
        assert victim.state_dir is not None
        t0 = time.monotonic()
        victim.kill9()
        kill_pids(processes_under(victim.state_dir))  # the machine died: its pods with it
        self.dead_nodes.add(victim.name)
        secs = await self.converged(BASE, t0)
        # The machine is gone for good: its Node is removed, as an admin would. Left in place, the dead
        # Nodes of earlier runs would soon be most of the zone and (rightly, as in Kubernetes) stop
        # evictions as a partial disruption.
        await until(f"the dead Node {victim.name} deleted", lambda: _ok(self.api.nodes.delete(victim.name)), WAIT)
        self.dead_nodes.discard(victim.name)
        self.start_agent()
        await until("a replacement node Ready", self._replacement_ready, WAIT, 0.5, self.procs())
        return secs

    async def _replacement_ready(self) -> bool:
        nodes = (await self.api.nodes.list()).items
        return sum(1 for n in nodes if ready(n) and n.metadata.name not in self.dead_nodes) >= 3

    def controller_killed(self, c: str) -> Callable[[], Awaitable[float]]:
        async def fault() -> float:
            # The kill opens the scale-up: a kill a moment after the scale request mostly lands after
            # the controller's share of a 3 -> 5 scale-up is done (a few ms), measuring nothing.
            t0 = time.monotonic()
            self.controllers.pop(c).kill9()
            self.start_controller(c)  # restarted at once under a new identity, as a supervisor does
            await self.scale(UP)
            return await self.converged(UP, t0)
        return fault


async def faults(cluster: Cluster, controllers: list[str], runs: int, rng: random.Random, only: list[str],
                 results: dict[str, list[float]], notes: list[str]) -> None:
    nc = await connect(cluster.nats.url)
    try:
        w = Workload(cluster, nc, rng)
        await w.up(controllers)
        kinds: list[tuple[str, Callable[[], Awaitable[float]]]] = [
            ("kill -9 API server (1 of 2)", w.api_one_of_two),
            ("kill -9 API server (the only one)", w.api_only),
            ("nats-server kill + restart (store kept)", w.nats_restart),
        ]
        kinds += [(f"kill -9 {c} during a scale-up", w.controller_killed(c)) for c in controllers]
        # Last: the dead node stays in the cluster, and a stuck eviction would leave nothing to reset to.
        if "nodelifecycle" in controllers:
            kinds.append(("kill -9 node agent for good", w.agent_dies))
        else:
            notes.append("node agent killed for good: skipped, services/nodelifecycle does not exist yet")
        for name, fault in kinds:
            if only and not any(word in name for word in only):
                continue
            results[name] = []
            for run in range(runs):
                secs = await fault()
                results[name].append(secs)
                print(f"  {name:<44} run {run + 1}: {secs:6.2f} s", flush=True)
                await w.reset()
    finally:
        await nc.close()


# -- the report ------------------------------------------------------------------------------------------

def stats(values: list[float]) -> str:
    if not values:
        return f"{'-':>7} {'-':>7}"
    return f"{percentile(values, 50):7.2f} {percentile(values, 99):7.2f}"


def report(args: argparse.Namespace, base: dict[str, object], fo: dict[str, tuple[str, list[float], list[float]]],
           fa: dict[str, list[float]], notes: list[str]) -> None:
    print()
    print(f"recovery benchmark: runs {args.runs}, seed {args.seed}, lease duration {LEASE} s")
    if base:
        print("raw baseline (same machine, same run):")
        print(f"  {'raw JetStream KV create, 64 in flight':<52} {base['create']:8.0f}/s   ({baseline_note()})")
        print(f"  {'raw JetStream KV get, 64 in flight':<52} {base['get']:8.0f}/s")
        restart = base["restart"]
        assert isinstance(restart, list)
        print(f"  {'nats-server kill -> restart -> first KV get (p50 p99)':<52} {stats(restart)} s")
    if fo:
        print("leader failover, from kill -9 of the leader (goal <= 5 s)      p50     p99     (s)")
        for c, (act, lease_s, act_s) in fo.items():
            print(f"  {c + ': standby holds the Lease':<52} {stats(lease_s)}")
            print(f"  {c + ': first act, ' + act:<52} {stats(act_s)}")
    if fa:
        print("time to converge after a fault (Deployment, 3 real agents)     p50     p99     (s)")
        for name, values in fa.items():
            print(f"  {name:<52} {stats(values)}   ({len(values)} runs)")
    for note in notes:
        print(f"  note: {note}")


async def run(args: argparse.Namespace, cluster: Cluster, base: dict[str, object],
              fo: dict[str, tuple[str, list[float], list[float]]], fa: dict[str, list[float]], notes: list[str]) -> None:
    await asyncio.to_thread(cluster.nats.start)
    sections = set(args.sections.split(","))
    base.update(await baseline(cluster, args.runs))
    api_proc = None
    components = [c for c in CONTROLLERS if has_module(c)]
    if "nodelifecycle" not in components:
        notes.append("nodelifecycle: no failover row, services/nodelifecycle does not exist yet")
    if args.components:
        components = [c for c in components if c in args.components.split(",")]
    if "failover" in sections:
        print("leader failover:", flush=True)
        api_proc = cluster.start("apiserver", identity="api-failover")
        nc = await connect(cluster.nats.url)
        try:
            await wait_registered(nc, api_proc, settle=0.2)
        finally:
            await nc.close()
        await failover(cluster, components, args.runs, fo)
        api_proc.stop()
    if "faults" in sections:
        print("faults:", flush=True)
        # A fresh store: the failover section's objects (fake nodes, pods) must not take part.
        await asyncio.to_thread(cluster.nats.stop)
        cluster.nats = NatsServer(cluster.root / "nats-faults")
        await asyncio.to_thread(cluster.nats.start)
        await faults(cluster, components, args.runs, random.Random(args.seed),
                     [w for w in args.faults.split(",") if w], fa, notes)


def main() -> None:
    global LEASE
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--lease-duration", default=LEASE, help="--lease-duration of every leader-elected service (s)")
    p.add_argument("--seed", type=int, default=1, help="which API server replica and which node agent are killed")
    p.add_argument("--sections", default="failover,faults", help="failover, faults, or both (comma-separated)")
    p.add_argument("--components", default="", help="only these components (comma-separated; default all)")
    p.add_argument("--faults", default="", help="only the faults whose name contains one of these words "
                                                "(comma-separated, e.g. 'API,agent'; default all)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (service logs) for a look afterwards")
    args = p.parse_args()
    LEASE = args.lease_duration
    # SIGTERM ends the run like Ctrl-C, so that the cleanup below runs either way.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored (a background job)
    cluster = Cluster(keep=args.keep)
    base: dict[str, object] = {}
    fo: dict[str, tuple[str, list[float], list[float]]] = {}
    fa: dict[str, list[float]] = {}
    notes: list[str] = []
    interrupted = False
    try:
        asyncio.run(run(args, cluster, base, fo, fa, notes))
    except KeyboardInterrupt:
        interrupted = True
    finally:
        # Whatever was measured is printed, also when a wait timed out (finish() then says so and exits 1).
        report(args, base, fo, fa, notes)
        cluster.close()
    if interrupted:
        print("BENCHMARK DID NOT FINISH: interrupted", flush=True)
        sys.exit(130)


if __name__ == "__main__":
    finish(main)
