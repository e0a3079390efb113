"""The chaos run: start (or attach to) a suite, create the workload, then for each fault of the
schedule: wait its gap, start the workload change it comes with, inject it, and time how long until
every invariant is green again. Safety invariants and the ledger are checked all along."""
from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

import msgspec
import nats
import nats.errors

from schemas import SYSTEM_NAMESPACE, ApiError, Lease
from services.lib.client import Api
from services.lib.log import get_logger

from . import invariants as inv
from .invariants import LeaseTracker, Snapshot, Violation
from .ledger import LEDGER_NAMESPACE, Ledger
from .logscan import recent_problems
from .report import FaultResult, Report, ReportViolation, table
from .schedule import (HOLLOW, KILL, KINDS, LEADER_ELECTED, NATS_RESTART, NODE_KILL, PAUSE, ROLLOUT, SCALE_UP, SLOW,
                       Fault, component_of, make_schedule, schedule_text)
from .targets import Attached, Targets, harness, signal_pid
from .workload import BULK, HOLLOW_POOL, NAMESPACE, POOL_LABEL, Workload
from .workload import NAME as WEB

log = get_logger("flotilla.chaos")
BUS_ERRORS = (ApiError, nats.errors.Error, OSError, TimeoutError)



async def _wait(waitable: asyncio.Event | asyncio.Condition, timeout: float) -> None:
    """Until `waitable` is set (notified) or `timeout` passes. Not asyncio.wait_for, which in Python
    3.11 swallows a cancel that meets a wake-up (the loop around it would then outlive Ctrl-C)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await waitable.wait()

class Options(msgspec.Struct, kw_only=True):
    seed: int
    duration: float = 600.0
    nodes: int = 3
    apiservers: int = 2
    hollow_nodes: int = 0  # the large case: one more process running this many hollow nodes, and `bulk` on them
    attach: bool = False
    nats_url: str | None = None
    state_dir: Path | None = None  # harness: where NATS and logs live; attach: `flotilla up`'s state dir
    report: Path | None = None
    converge_timeout: float = 90.0
    check_interval: float = 1.0
    settle: float = 15.0  # quiet seconds at the end whose service logs must show no error loop
    log_threshold: int = 5  # warning/error lines allowed in that window per service
    kinds: tuple[str, ...] = KINDS
    min_gap: float = 3.0
    max_gap: float = 12.0
    schedule: list[Fault] | None = None  # an explicit schedule (tests) instead of the seeded one
    log_level: str = "info"


async def take_snapshot(api: Api, namespace: str) -> tuple[Snapshot, list[Lease]]:
    """Everything the invariants look at, and the leader leases."""
    nodes, pods, deps, rss, svcs, eps, leases = await asyncio.gather(
        api.nodes.list_all(), api.pods.list_all(), api.deployments.list_all(namespace),
        api.replicasets.list_all(namespace), api.services.list_all(namespace), api.endpoints.list_all(namespace),
        api.leases.list_all(SYSTEM_NAMESPACE))
    snap = Snapshot(namespace=namespace, nodes=nodes.items, pods=pods.items, deployments=deps.items,
                    replicasets=rss.items, services=svcs.items, endpoints=eps.items)
    return snap, leases.items


def _leader_lease(component: str) -> str:
    return f"{SYSTEM_NAMESPACE}/flotilla-{component}"


class Chaos:
    def __init__(self, opts: Options, targets: Targets, api: Api, out: TextIO):
        self.opts = opts
        self.targets = targets
        self.api = api
        self.out = out
        self.t0 = time.monotonic()
        self.workload = Workload(api, hollow_nodes=opts.hollow_nodes)
        self.ledger = Ledger(api, random.Random(opts.seed + 1))
        self.leases = LeaseTracker()
        self.lease_rv: dict[str, int] = {}
        self.seen: dict[tuple[str, str], ReportViolation] = {}
        self.current_fault: int | None = None
        self.checks = 0
        # The latest check's verdict and when that check started: convergence is a green check that
        # began after the fault was over.
        self.red: list[Violation] = [Violation("startup", "no check yet")]
        self.checked_from = -1.0
        self.snapshot: Snapshot | None = None
        self.hollow_not_ready_peak = 0  # since the current fault began
        self.stopping = asyncio.Event()
        self.checked = asyncio.Condition()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def say(self, text: str) -> None:
        print(f"[{self.now():7.1f}s] {text}", file=self.out, flush=True)

    def record(self, found: list[Violation]) -> None:
        for v in found:
            key = (v.invariant, v.detail)
            if key in self.seen:
                self.seen[key].count += 1
                continue
            self.seen[key] = ReportViolation(at=round(self.now(), 1), invariant=v.invariant, detail=v.detail,
                                             fault=self.current_fault)
            self.say(f"VIOLATION {v.invariant}: {v.detail}")

    # -- looking ------------------------------------------------------------------------------

    async def check_once(self) -> None:
        started = self.now()
        try:
            snap, leases = await take_snapshot(self.api, NAMESPACE)
        except BUS_ERRORS as exc:
            red = [Violation("api", f"snapshot failed: {exc!r}")]
        else:
            self.snapshot = snap
            self.hollow_not_ready_peak = max(self.hollow_not_ready_peak, len(hollow_not_ready(snap)))
            self.record(inv.safety(snap))
            self.record(self.leases.observe(leases))
            for lease in leases:
                self.lease_rv[f"{lease.metadata.namespace}/{lease.metadata.name}"] = int(
                    lease.metadata.resource_version or 0)
            red = inv.liveness(snap) + self.declared_mismatch(snap) + await self.service_answers(snap)
        self.record(self.ledger.violations)
        self.ledger.violations.clear()
        async with self.checked:
            self.checks += 1
            self.red, self.checked_from = red, started
            self.checked.notify_all()

    async def service_answers(self, snap: Snapshot) -> list[Violation]:
        """The workload's Service answers HTTP on its ClusterIP (through the service proxy)."""
        out = []
        for svc in snap.services:
            ip = svc.spec.cluster_ip
            if not ip or ip == "None" or not svc.spec.ports:
                continue
            port = svc.spec.ports[0].port
            try:
                await asyncio.to_thread(_http_get, ip, port)
            except OSError as exc:
                out.append(Violation(inv.SERVICE_ANSWERS, f"service {svc.metadata.name} at {ip}:{port}: {exc!r}"))
        return out

    def declared_mismatch(self, snap: Snapshot) -> list[Violation]:
        """Green means what the harness last declared, not just whatever the API holds now."""
        return declared_mismatch(snap, self.workload)

    async def checker(self) -> None:
        while not self.stopping.is_set():
            await self.check_once()
            await _wait(self.stopping, self.opts.check_interval)

    async def writer(self) -> None:
        while not self.stopping.is_set():
            try:
                await self.ledger.step()
            except BUS_ERRORS as exc:
                log.debug("ledger write failed", error=repr(exc))
            await _wait(self.stopping, 0.3)

    async def wait_green(self, since: float, timeout: float,
                         extra: Callable[[], bool] | None = None) -> float | None:
        """The run time at which a check begun after `since` found everything green (and `extra()`
        held), or None on timeout."""
        deadline = self.now() + timeout
        while self.now() < deadline:
            async with self.checked:
                await _wait(self.checked, max(0.1, deadline - self.now()))
                green = not self.red and self.checked_from >= since
                at = self.checked_from
            if green and (extra is None or extra()):
                return at
        return None

    # -- acting -------------------------------------------------------------------------------

    def resolve(self, fault: Fault) -> str | None:
        """The process a fault hits: the named one, or the leader among a component's replicas."""
        comp = component_of(fault.target)
        if fault.target in self.targets.names():
            if comp not in LEADER_ELECTED or fault.target != comp:
                return fault.target
        replicas = self.targets.replicas(comp)
        if not replicas:
            return None
        holder = self.leases.holder(_leader_lease(comp))
        return next((r for r in replicas if self.targets.identity(r) == holder), replicas[0])

    async def lease_version(self, lease: str) -> int:
        namespace, name = lease.split("/", 1)
        try:
            got = await self.api.leases.get(name, namespace)
        except BUS_ERRORS:
            return self.lease_rv.get(lease, 0)
        return int(got.metadata.resource_version or 0)

    def all_running(self) -> bool:
        return all(self.targets.pid(n) is not None for n in self.targets.names())

    async def inject(self, fault: Fault, result: FaultResult) -> Callable[[], bool] | None:
        """Inject the fault; returns a predicate for "the fault itself is healed" (beyond green checks)."""
        t = self.targets
        if fault.kind == NATS_RESTART:
            result.process, result.pid = "nats-server", t.nats_pid()
            await t.restart_nats()
            return lambda: t.nats_pid() is not None and t.nats_pid() != result.pid and self.all_running()
        name = self.resolve(fault)
        if name is None:
            result.note = "no such process; skipped"
            return None
        result.process = name
        comp = component_of(name)
        lease = _leader_lease(comp)
        if fault.kind == NODE_KILL:
            result.pid = await t.kill_for_good(name)
            node = name.removeprefix("nodeagent-")
            node = f"node-{node}" if node.isdigit() else node

            def moved() -> bool:
                snap = self.snapshot
                return snap is not None and not any(
                    p.spec.node_name == node and p.metadata.namespace == NAMESPACE and inv.is_active(p)
                    for p in snap.pods)
            return moved
        pid = t.pid(name)
        result.pid = pid
        lease_rv: int | None = None  # the lease's version once the killed leader can no longer renew it
        if pid is None:
            result.note = "not running when the fault fired"
        elif fault.kind == KILL:
            signal_pid(pid, signal.SIGKILL)
            if comp in LEADER_ELECTED:
                await _gone(pid)
                lease_rv = await self.lease_version(lease)
        elif fault.kind == PAUSE:
            signal_pid(pid, signal.SIGSTOP)
            try:
                await asyncio.sleep(fault.hold)
            finally:
                signal_pid(pid, signal.SIGCONT)
        elif fault.kind == SLOW:
            period = 1.0
            end = self.now() + fault.hold
            try:
                while self.now() < end:
                    signal_pid(pid, signal.SIGSTOP)
                    await asyncio.sleep(period * fault.duty)
                    signal_pid(pid, signal.SIGCONT)
                    await asyncio.sleep(period * (1 - fault.duty))
            finally:
                signal_pid(pid, signal.SIGCONT)

        def healed() -> bool:
            if fault.kind == KILL and t.pid(name) in (None, pid):
                return False  # not restarted yet
            if lease_rv is not None and self.lease_rv.get(lease, 0) <= lease_rv:
                return False  # no leader has renewed since the kill
            if name == HOLLOW and (self.snapshot is None or hollow_not_ready(self.snapshot)):
                return False  # the hollow nodes are not all back (Ready) yet
            return self.all_running()
        return healed

    async def run_fault(self, fault: Fault) -> FaultResult:
        result = FaultResult(index=fault.index, kind=fault.kind, target=fault.target, during=fault.during)
        self.current_fault = fault.index
        start = self.now()
        result.at = round(start, 1)
        self.hollow_not_ready_peak = 0
        bulk_before = bulk_pods(self.snapshot)
        try:
            if fault.during == SCALE_UP:
                result.workload = await self.workload.scale_up()
            elif fault.during == ROLLOUT:
                result.workload = await self.workload.roll()
            healed = await self.inject(fault, result)
        except BUS_ERRORS as exc:
            result.note = f"could not inject: {exc!r}"
            healed = None
        green_at = await self.wait_green(self.now(), self.opts.converge_timeout, healed)
        result.hollow_not_ready_peak = self.hollow_not_ready_peak
        result.bulk_pods_replaced = len(bulk_before - bulk_pods(self.snapshot))
        if green_at is not None:
            result.converged = True
            result.converge_seconds = round(green_at - start, 1)
        else:
            self.record([Violation(inv.FAULT_CONVERGED, f"fault #{fault.index} ({fault.kind} {fault.target}) not "
                                   f"converged within {self.opts.converge_timeout:g}s: "
                                   + "; ".join(v.detail for v in self.red[:5]))])
        self.say(f"{fault.describe()} -> {result.process or '-'} (pid {result.pid}) "
                 + (f"[{result.workload}] " if result.workload else "")
                 + (f"converged in {result.converge_seconds:.1f}s" if result.converged else "NOT converged")
                 + (f" ({result.note})" if result.note else ""))
        self.current_fault = None
        if fault.during == SCALE_UP:
            with contextlib.suppress(*BUS_ERRORS):
                await self.workload.scale_down()
                await self.wait_green(self.now(), self.opts.converge_timeout)
        return result


def hollow_not_ready(snap: Snapshot) -> list[str]:
    """Hollow nodes whose Ready condition is not True (Unknown once their leases lapse)."""
    return [n.metadata.name for n in snap.nodes if n.metadata.labels.get(POOL_LABEL) == HOLLOW_POOL
            and next((c.status for c in n.status.conditions if c.type == "Ready"), None) != "True"]


def bulk_pods(snap: Snapshot | None) -> set[str]:
    """The uids of the bulk Deployment's pods still active."""
    if snap is None:
        return set()
    return {p.metadata.uid for p in snap.pods if p.metadata.namespace == snap.namespace
            and p.metadata.labels.get("app") == BULK and inv.is_active(p) and p.metadata.uid}


def declared_mismatch(snap: Snapshot, workload: Workload) -> list[Violation]:
    """Each of the workload's Deployments (web; bulk in the large case) has the replicas (and web the
    revision) the harness last declared."""
    out = []
    for name in workload.names:
        d = next((d for d in snap.deployments if d.metadata.name == name), None)
        if d is None:
            out.append(Violation(inv.WORKLOAD_CONVERGED, f"deployment {name} missing"))
            continue
        env = {e.name: e.value for c in d.spec.template.spec.containers for e in c.env}
        revision = env.get("CHAOS_REVISION") if name == WEB else None
        if d.spec.replicas != workload.declared(name) or (name == WEB and revision != str(workload.revision)):
            out.append(Violation(inv.WORKLOAD_CONVERGED, f"deployment {name} is not what was declared "
                                 f"(replicas {d.spec.replicas}, revision {revision})"))
    return out


def _http_get(ip: str, port: int, timeout: float = 2.0) -> None:
    with socket.create_connection((ip, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(b"GET / HTTP/1.0\r\nHost: chaos\r\n\r\n")
        head = sock.recv(64)
    if not head.startswith(b"HTTP/1.") or b" 200 " not in head:
        raise OSError(f"unexpected reply {head[:40]!r}")


async def _gone(pid: int, timeout: float = 5.0) -> None:
    """Until `pid` no longer runs (a SIGKILLed process is reaped by its parent a moment later)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return
        if state in ("Z", "X"):
            return
        await asyncio.sleep(0.05)


async def _quiet(exc: Exception) -> None:
    log.debug("nats connection trouble", error=repr(exc))


@contextlib.asynccontextmanager
async def _targets(opts: Options) -> AsyncIterator[Targets]:
    if opts.attach:
        if opts.hollow_nodes:
            raise ValueError("--hollow-nodes starts hollow nodes in the harness's own suite; not with --attach")
        if not opts.nats_url:
            raise ValueError("--attach needs --nats-url (the running suite's NATS)")
        from flotilla.up import default_state_dir
        state = opts.state_dir or default_state_dir()
        yield Attached(opts.nats_url, state / "logs")
        return
    if opts.state_dir is not None:
        opts.state_dir.mkdir(parents=True, exist_ok=True)
        async with harness(opts.state_dir, nodes=opts.nodes, apiservers=opts.apiservers,
                           log_level=opts.log_level, hollow_nodes=opts.hollow_nodes) as h:
            yield h
        return
    with tempfile.TemporaryDirectory(prefix="flotilla-chaos-") as tmp:
        async with harness(Path(tmp), nodes=opts.nodes, apiservers=opts.apiservers, log_level=opts.log_level,
                           hollow_nodes=opts.hollow_nodes) as h:
            yield h


def schedule_for(opts: Options, names: list[str], *, nats: bool = True) -> list[Fault]:
    if opts.schedule is not None:
        return opts.schedule
    kinds = opts.kinds if not opts.attach else tuple(k for k in opts.kinds if k != NODE_KILL)
    return make_schedule(opts.seed, opts.duration, names, kinds=kinds, min_gap=opts.min_gap, max_gap=opts.max_gap,
                         nats=nats)


async def run_chaos(opts: Options, out: TextIO = sys.stdout) -> Report:
    async with _targets(opts) as targets:
        report = Report(seed=opts.seed, mode=targets.mode, duration=opts.duration, nats_url=targets.nats_url,
                        started=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        nc = await nats.connect(targets.nats_url, max_reconnect_attempts=-1, reconnect_time_wait=0.2,
                                connect_timeout=5, error_cb=_quiet, **targets.client_options())  # type: ignore[arg-type]
        try:
            api = Api(nc, timeout=5.0, retries=3)
            chaos = Chaos(opts, targets, api, out)
            report.schedule = schedule_for(opts, targets.names(), nats=targets.nats_pid() is not None)
            chaos.say(schedule_text(opts.seed, report.schedule).replace("\n", "\n           "))
            chaos.say(f"suite: {targets.mode}, NATS {targets.nats_url}, processes: {', '.join(targets.names())}")
            await _run(chaos, report)
        finally:
            await nc.close()
    if opts.report is not None:
        report.write(opts.report)
    return report


async def _run(chaos: Chaos, report: Report) -> None:
    opts = chaos.opts
    await chaos.workload.ensure_namespaces(NAMESPACE, LEDGER_NAMESPACE)
    await chaos.workload.create()
    async with asyncio.TaskGroup() as tg:
        tg.create_task(chaos.checker())
        tg.create_task(chaos.writer())
        try:
            if await chaos.wait_green(chaos.now(), max(opts.converge_timeout, 120.0)) is None:
                chaos.record([Violation(inv.WORKLOAD_CONVERGED, "the workload never converged before the first "
                                        "fault: " + "; ".join(v.detail for v in chaos.red[:5]))])
            else:
                chaos.say("workload converged; faults start")
                began = chaos.now()
                for fault in report.schedule:
                    if chaos.now() - began >= opts.duration:
                        chaos.say(f"duration reached; {len(report.schedule) - len(report.faults)} faults not run")
                        break
                    await asyncio.sleep(fault.gap)
                    report.faults.append(await chaos.run_fault(fault))
            # The end: green again, then a quiet window whose logs must show no error loop.
            if await chaos.wait_green(chaos.now(), opts.converge_timeout, chaos.all_running) is None:
                chaos.record([Violation(inv.WORKLOAD_CONVERGED, "not converged at the end: "
                                        + "; ".join(v.detail for v in chaos.red[:5]))])
            quiet_from = time.time()
            await asyncio.sleep(opts.settle)
            await chaos.check_once()
            for name in chaos.targets.names():
                path = chaos.targets.log_path(name)
                problems = recent_problems(path, quiet_from) if path else []
                report.log_problems[name] = len(problems)
                if len(problems) > opts.log_threshold:
                    chaos.record([Violation(inv.NO_ERROR_LOOP, f"{name}: {len(problems)} warning/error lines in the "
                                            f"last {opts.settle:g}s, e.g. {problems[-1][:200]}")])
                if chaos.targets.pid(name) is None:
                    chaos.record([Violation(inv.SERVICES_RUNNING, f"{name} is not running at the end")])
            chaos.record(await chaos.ledger.verify())
        finally:
            chaos.stopping.set()
    report.violations = list(chaos.seen.values())
    report.checks = chaos.checks
    report.acknowledged_writes = chaos.ledger.acked
    report.unanswered_writes = chaos.ledger.unanswered
    report.restarts = chaos.targets.restarts()
    report.elapsed = round(chaos.now(), 1)
    print(table(report), file=chaos.out, flush=True)
