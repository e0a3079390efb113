"""The pod sync: one level-triggered `reconcile(namespace/name)` per pod bound to this node, run by
the shared Controller (work queue of keys, retries with back-off).

Each reconcile compares the pod in the informer cache with what runs here and acts:
- pod gone from the API, or replaced by a new one of the same name: stop its containers (grace
  of the last known pod), remove its sandbox, logs, cgroups, address and checkpoint rows;
- new pod: admission (does it fit the node's allocatable?), an address, a sandbox, checkpoint;
- deletionTimestamp set: stop every container (SIGTERM, the deletion's grace, SIGKILL), write
  the final status, then confirm with a delete of grace 0;
- otherwise: init containers one at a time, then start what should run, restarting exited
  containers as restartPolicy says with the restart back-off, and write the status if it changed.
Process exits and probe results arrive from the container runners, which only record them and
enqueue the pod's key. Every start is checkpointed before and after the process is created.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from schemas import ApiError, ObjectMeta, Pod, now_iso, parse_time
from schemas.pod import Container

from services.lib.codec import encode
from services.lib.controller import Controller
from services.lib.log import get_logger

from .backoff import Backoff
from .containers import ContainerRunner, wall_time_of
from .environment import ConfigError, PodContext, base_env, container_argv, container_env
from .network import NoAddresses
from .podstate import ContainerRecord, PodCheckpoint, PodRecord, Terminated
from .probes import ProbeTarget
from .resources import admit, container_limits
from .runtime import Exit, Handle, Launch, StartError
from .status import compute_phase, init_failed_for_good, initialized, pod_status, terminal_phase

if TYPE_CHECKING:
    from .agent import NodeAgent

log = get_logger("flotilla.nodeagent.pods")

DEFAULT_GRACE = 30


def _should_restart(policy: str, exit_code: int) -> bool:
    return policy == "Always" or (policy == "OnFailure" and exit_code != 0)


def _min(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


class PodSync:
    def __init__(self, agent: "NodeAgent"):
        self.agent = agent
        self.cfg = agent.cfg
        self.runtime = agent.runtime
        self.backoff = Backoff(self.cfg.backoff_base, self.cfg.backoff_cap)
        self.pods: dict[str, PodRecord] = {}         # by uid
        self.by_key: dict[str, set[str]] = {}        # namespace/name -> uids
        self.controller = Controller(f"nodeagent.{self.cfg.node}", self.reconcile, workers=self.cfg.sync_workers,
                                     max_retry_delay=10.0)
        self._adopted: list[tuple[PodRecord, str, Handle]] = []

    # ---- bookkeeping ------------------------------------------------------------------------------
    def _add(self, rec: PodRecord) -> None:
        self.pods[rec.uid] = rec
        self.by_key.setdefault(rec.key, set()).add(rec.uid)

    def _forget(self, rec: PodRecord) -> None:
        self.pods.pop(rec.uid, None)
        uids = self.by_key.get(rec.key)
        if uids is not None:
            uids.discard(rec.uid)
            if not uids:
                del self.by_key[rec.key]

    def records_for(self, key: str) -> list[PodRecord]:
        return [self.pods[u] for u in self.by_key.get(key, ()) if u in self.pods]

    def find(self, namespace: str, name: str) -> PodRecord | None:
        """The live (not tearing down) record of a pod, for the logs server."""
        recs = [r for r in self.records_for(f"{namespace}/{name}") if not r.tearing_down]
        return recs[0] if recs else None

    def enqueue(self, key: str) -> None:
        self.controller.enqueue(key)

    def own_status_echo(self, pod: Pod) -> bool:
        """The pod exactly as this agent's last status write left it: nothing to sync. (Kubernetes'
        kubelet, too, does not sync a pod for a status change; here only our own write is skipped,
        so a status someone else wrote is still put right.)"""
        rec = self.pods.get(pod.metadata.uid or "")
        if rec is None or not rec.written_rv or pod.metadata.resource_version != str(rec.written_rv):
            return False
        rec.pod = pod
        return True

    def enqueue_all(self) -> None:
        for obj in self.agent.pod_informer.list():
            self.enqueue(f"{obj.metadata.namespace}/{obj.metadata.name}")
        for key in list(self.by_key):
            self.enqueue(key)

    async def record(self, rec: PodRecord, type_: str, reason: str, message: str) -> None:
        if rec.pod is not None:
            await self.event(rec.pod, type_, reason, message)

    async def event(self, pod: Pod, type_: str, reason: str, message: str) -> None:
        if self.cfg.events:
            await self.agent.recorder.record(pod, type_, reason, message)

    def probe_changed(self, rec: PodRecord) -> None:
        self.enqueue(rec.key)

    # ---- restore after an agent restart -----------------------------------------------------------
    async def restore(self, records: list[PodRecord], rebooted: bool) -> None:
        """Re-adopt what the checkpoint says runs here: live processes get a runner (after the pod
        cache syncs), dead ones are recorded as exited so the restart policy deals with them."""
        for rec in records:
            self._add(rec)
            if rec.cp.ip and rec.cp.phase is None and not self.agent.ips.reserve(rec.cp.ip, rec.uid):
                log.warning("pod address is not in this node's CIDR any more", pod=rec.key, ip=rec.cp.ip)
            for crec in rec.containers.values():
                await self._restore_container(rec, crec, rebooted)
        if records:
            log.info("checkpoint restored", pods=len(records), adopted=len(self._adopted))

    async def _restore_container(self, rec: PodRecord, crec: ContainerRecord, rebooted: bool) -> None:
        if crec.pending_id is not None:  # the agent died while starting it
            result = Exit(137, now_iso(), "ContainerStatusUnknown", message="the node rebooted") if rebooted else \
                self.runtime.adopt(crec.pending_id, None, None, now_iso(), crec.cgroup_dirs, crec.oom_base)
            pending, crec.pending_id = crec.pending_id, None
            if isinstance(result, Handle):
                crec.restart_count += 1 if crec.container_id else 0
                self._mark_running(crec, pending, result)
                self._adopted.append((rec, crec.name, result))
            await self.agent.checkpoint.save_container(rec.uid, crec)
            return
        if crec.state != "running" or crec.container_id is None:
            return
        result = Exit(137, now_iso(), "ContainerStatusUnknown", message="the node rebooted") if rebooted else \
            self.runtime.adopt(crec.container_id, crec.pid, crec.start_ticks, crec.started_at or now_iso(),
                               crec.cgroup_dirs, crec.oom_base)
        if isinstance(result, Handle):
            self._adopted.append((rec, crec.name, result))
            return
        self._record_exit(crec, result)
        log.info("container exited while the agent was down", pod=rec.key, container=crec.name,
                 exit_code=result.exit_code, reason=result.reason)
        await self.agent.checkpoint.save_container(rec.uid, crec)

    def start_adopted(self) -> None:
        """Runners for the adopted processes, once the pod cache can seed their readiness."""
        for rec in self.pods.values():  # restored pods count in admission from now on
            pod = self.agent.pod_informer.get(rec.key)
            if pod is not None and pod.metadata.uid == rec.uid:
                rec.pod = pod
        for rec, name, handle in self._adopted:
            # Probe results as last reported: an agent restart does not make a ready container unready.
            last = next((s for s in rec.pod.status.container_statuses + rec.pod.status.init_container_statuses
                         if s.name == name), None) if rec.pod is not None else None
            spec = self._container_spec(rec, name)
            env, cwd = self._probe_env(rec, spec)
            self._run(rec, spec, handle, env, cwd, seed_ready=last.ready if last else None,
                      seed_started=bool(last and last.started), probes=rec.pod is not None)
            log.info("container adopted", pod=rec.key, container=name, pid=handle.pid)
        self._adopted.clear()

    def _container_spec(self, rec: PodRecord, name: str) -> Container:
        if rec.pod is not None:
            for c in rec.pod.spec.init_containers + rec.pod.spec.containers:
                if c.name == name:
                    return c
        return Container(name=name)

    def _probe_env(self, rec: PodRecord, spec: Container) -> tuple[dict[str, str], Path]:
        sandbox = self.agent.sandboxes.path(rec.uid)
        if rec.pod is None:
            return {}, sandbox
        ctx = self._context(rec.pod, rec)
        try:
            env = container_env(ctx, spec, {})
            cwd = self.agent.sandboxes.working_dir(rec.pod, spec) if self.runtime.runs_processes else sandbox
        except ConfigError:
            env, cwd = base_env(ctx, {}), sandbox
        return env, cwd

    # ---- the reconcile ----------------------------------------------------------------------------
    async def reconcile(self, key: str) -> float | None:
        pod = self.agent.pod_informer.get(key)
        for rec in self.records_for(key):
            if pod is None or rec.uid != pod.metadata.uid:
                self._start_teardown(rec)
        if pod is None or pod.spec.node_name != self.cfg.node:
            return None
        rec = self.pods.get(pod.metadata.uid or "")
        if rec is not None and rec.tearing_down:
            return None
        if rec is None:
            if pod.metadata.deletion_timestamp:
                await self._confirm_deletion(pod)  # it never ran here
                return None
            if pod.status.phase in ("Succeeded", "Failed"):
                return None  # finished before (our checkpoint is gone): nothing to run
            rec = await self._admit(pod)
        rec.pod = pod
        if pod.metadata.deletion_timestamp:
            return await self._sync_deleting(pod, rec)
        requeue = None
        if rec.cp.phase is None:
            requeue = await self._sync_containers(pod, rec)
        await self._write_status(pod, rec)
        return requeue

    async def _confirm_deletion(self, pod: Pod) -> None:
        try:
            await self.agent.api.pods.delete(pod.metadata.name, pod.metadata.namespace, grace_period_seconds=0,
                                             uid=pod.metadata.uid)
        except ApiError as exc:
            if exc.reason not in ("NotFound", "Conflict"):
                raise

    async def _admit(self, pod: Pod) -> PodRecord:
        uid = pod.metadata.uid or ""
        ns = pod.metadata.namespace or "default"
        grace = pod.spec.termination_grace_period_seconds
        cp = PodCheckpoint(uid=uid, namespace=ns, name=pod.metadata.name,
                           grace=DEFAULT_GRACE if grace is None else grace, start_time=now_iso())
        admitted = [r.pod for r in self.pods.values()
                    if r.pod is not None and r.cp.phase is None and not r.tearing_down]
        rejection = admit(pod, admitted, self.agent.allocatable)
        if rejection is not None:
            cp.phase, (cp.reason, cp.message) = "Failed", rejection
            rec = PodRecord(cp=cp, containers={}, pod=pod)
            log.info("pod rejected", pod=rec.key, reason=cp.reason, message=cp.message)
            await self.event(pod, "Warning", cp.reason or "Rejected", cp.message or "")
        else:
            try:
                cp.ip = self.agent.ips.allocate(uid, prefer=pod.status.pod_ip)
            except NoAddresses as exc:
                await self.event(pod, "Warning", "FailedCreatePodSandBox", str(exc))
                raise ApiError("ServiceUnavailable", str(exc)) from None
            if self.runtime.runs_processes:
                self.agent.sandboxes.create(pod)
            containers = {c.name: ContainerRecord(name=c.name, init=True) for c in pod.spec.init_containers}
            containers.update({c.name: ContainerRecord(name=c.name) for c in pod.spec.containers})
            rec = PodRecord(cp=cp, containers=containers, pod=pod)
        await self.agent.checkpoint.save_pod(cp)
        for crec in rec.containers.values():
            await self.agent.checkpoint.save_container(uid, crec)
        self._add(rec)
        if rejection is None:
            log.info("pod admitted", pod=rec.key, uid=uid, ip=cp.ip)
        return rec

    async def _sync_containers(self, pod: Pod, rec: PodRecord) -> float | None:
        requeue: float | None = None
        deadline = pod.spec.active_deadline_seconds
        if deadline and rec.cp.start_time:
            left = deadline - (time.time() - parse_time(rec.cp.start_time).timestamp())
            if left <= 0:
                await self._finish(pod, rec, "Failed", "DeadlineExceeded",
                                   "Pod was active on the node longer than the specified deadline")
                return None
            requeue = left
        policy = pod.spec.restart_policy or "Always"
        if init_failed_for_good(pod, rec):
            await self._finish(pod, rec, "Failed", None, None)
            return None
        if not initialized(pod, rec):
            for c in pod.spec.init_containers:
                crec = rec.containers[c.name]
                if crec.succeeded:
                    continue
                if rec.live_of(c.name).handle is None:
                    # init containers restart on failure unless the policy is Never (handled above)
                    requeue = _min(requeue, await self._maybe_start(pod, rec, c))
                break
            for c in pod.spec.containers:
                crec = rec.containers[c.name]
                if not crec.ever_started and crec.reason in (None, "ContainerCreating"):
                    crec.reason = "PodInitializing"
            return requeue
        for c in pod.spec.containers:
            crec = rec.containers[c.name]
            live = rec.live_of(c.name)
            if live.handle is not None:
                await self._restart_if_changed(rec, c, crec, live.runner)
                continue
            if crec.definition_changed:  # as Kubernetes: at once, whatever the policy and back-off
                crec.definition_changed, crec.backoff, crec.backoff_at = False, 0.0, 0.0
                requeue = _min(requeue, await self._start(pod, rec, c, stepped=False))
                continue
            if crec.state == "terminated" and crec.terminated is not None \
                    and not _should_restart(policy, crec.terminated.exit_code):
                continue
            requeue = _min(requeue, await self._maybe_start(pod, rec, c))
        phase = compute_phase(pod, rec)
        if phase in ("Succeeded", "Failed"):
            await self._finish(pod, rec, phase, None, None)
        return requeue

    async def _restart_if_changed(self, rec: PodRecord, c: Container, crec: ContainerRecord,
                                  runner: ContainerRunner | None) -> None:
        """A running container whose image was changed in the pod is stopped (and then started from
        the new image), as the kubelet does when a container's definition changes."""
        if crec.image is None or crec.image == c.image or runner is None or runner.stopping:
            return
        crec.definition_changed = True
        await self.agent.checkpoint.save_container(rec.uid, crec)
        await self.record(rec, "Normal", "Killing", f"Container {c.name} definition changed, will be restarted")
        runner.request_stop(float(rec.cp.grace), f"Container {c.name} definition changed")

    async def _finish(self, pod: Pod, rec: PodRecord, phase: str, reason: str | None, message: str | None) -> None:
        """The pod is done here: nothing will run again; stop what still runs, free its address."""
        rec.cp.phase, rec.cp.reason, rec.cp.message = phase, reason, message
        for name in rec.running():
            runner = rec.live[name].runner
            if runner is not None:
                runner.request_stop(float(rec.cp.grace))
        if reason:
            await self.record(rec, "Warning", reason, message or reason)
        self.agent.ips.release(rec.uid)
        await self.agent.checkpoint.save_pod(rec.cp)
        log.info("pod finished", pod=rec.key, phase=phase, reason=reason)

    async def _maybe_start(self, pod: Pod, rec: PodRecord, c: Container) -> float | None:
        crec = rec.containers[c.name]
        live = rec.live_of(c.name)
        now = time.time()
        if crec.exited_at > 0:  # a restart (or a retry after a failed start): back-off applies
            wait = self.backoff.remaining(crec, now)
            if wait > 0:
                if crec.terminated is not None and crec.ever_started:
                    crec.state = "waiting"
                    crec.reason = "CrashLoopBackOff"
                    crec.message = (f"back-off {crec.backoff:g}s restarting failed container={c.name} "
                                    f"pod={pod.metadata.name}_{rec.cp.namespace}({rec.uid})")
                if live.backoff_reported != crec.backoff_at:
                    live.backoff_reported = crec.backoff_at
                    await self.record(rec, "Warning", "BackOff",
                                      f"Back-off restarting failed container {c.name} in pod "
                                      f"{pod.metadata.name}_{rec.cp.namespace}({rec.uid})")
                return wait
            self.backoff.step(crec, now)
            return await self._start(pod, rec, c, stepped=True)
        return await self._start(pod, rec, c, stepped=False)

    def _context(self, pod: Pod, rec: PodRecord) -> PodContext:
        return PodContext(pod=pod, node_name=self.cfg.node, pod_ip=rec.cp.ip, host_ip=self.agent.node_ip,
                          sandbox=str(self.agent.sandboxes.path(rec.uid)), node_allocatable=self.agent.allocatable,
                          services=self.agent.services())

    async def _start(self, pod: Pod, rec: PodRecord, c: Container, stepped: bool) -> float | None:
        crec = rec.containers[c.name]
        sandboxes = self.agent.sandboxes
        cid = uuid.uuid4().hex
        restart = crec.restart_count + (1 if crec.ever_started else 0)
        try:
            try:
                limits = container_limits(c)
            except ValueError as exc:
                raise StartError("CreateContainerError", str(exc)) from None
            try:
                volumes = sandboxes.mount(pod, c) if self.runtime.runs_processes else {}
                env = container_env(self._context(pod, rec), c, volumes)
                cwd = sandboxes.working_dir(pod, c) if self.runtime.runs_processes else sandboxes.path(rec.uid)
            except (ConfigError, OSError) as exc:
                raise StartError("CreateContainerConfigError", str(exc)) from None
            env["FLOTILLA_CONTAINER_ID"] = cid
            argv = container_argv(c, env)
            crec.pending_id, crec.image = cid, c.image
            await self.agent.checkpoint.save_container(rec.uid, crec)
            handle = await self.runtime.start(Launch(
                container_id=cid, pod_uid=rec.uid, container=c.name, argv=argv, env=env, cwd=cwd,
                log_path=self.agent.logs.path(rec.cp.namespace, rec.cp.name, rec.uid, c.name, restart),
                limits=limits))
        except StartError as exc:
            now = time.time()
            crec.pending_id = None
            crec.state, crec.reason, crec.message = "waiting", exc.reason, exc.message
            if not stepped:
                self.backoff.step(crec, now)
            crec.exited_at = now
            await self.agent.checkpoint.save_container(rec.uid, crec)
            log.info("container failed to start", pod=rec.key, container=c.name, reason=exc.reason, error=exc.message)
            await self.record(rec, "Warning", "FailedToStart", f"Error: {exc.reason}: {exc.message}")
            return self.backoff.remaining(crec, time.time())
        crec.pending_id = None
        crec.restart_count = restart
        self._mark_running(crec, cid, handle)
        await self.agent.checkpoint.save_container(rec.uid, crec)
        if self.runtime.runs_processes:
            self.agent.logs.prune(rec.cp.namespace, rec.cp.name, rec.uid, c.name, {restart, restart - 1})
        self._run(rec, c, handle, env, cwd, started=time.time(), post_start=True)
        log.info("container started", pod=rec.key, container=c.name, pid=handle.pid, restarts=restart)
        await self.record(rec, "Normal", "Started", f"Started container {c.name}")
        return None

    @staticmethod
    def _mark_running(crec: ContainerRecord, cid: str, handle: Handle) -> None:
        crec.container_id = cid
        crec.pid, crec.start_ticks = handle.pid, handle.start_ticks
        crec.started_at = handle.started_at
        crec.cgroup_dirs, crec.oom_base = handle.cgroup_dirs, handle.oom_base
        crec.state, crec.reason, crec.message = "running", None, None

    def _run(self, rec: PodRecord, c: Container, handle: Handle, env: dict[str, str], cwd: Path,
             seed_ready: bool | None = None, seed_started: bool = False, probes: bool = True,
             started: float | None = None, post_start: bool = False) -> None:
        target = ProbeTarget(runtime=self.runtime, handle=handle, container=c, pod_ip=rec.cp.ip, env=env, cwd=cwd)
        crec = rec.containers[c.name]
        runner = ContainerRunner(self, rec, c.name, handle, target, started or wall_time_of(crec.started_at),
                                 probes_enabled=probes and self.runtime.runs_processes, seed_ready=seed_ready,
                                 seed_started=seed_started, post_start=post_start)
        live = rec.live_of(c.name)
        live.handle, live.runner = handle, runner
        self.agent.tg.create_task(runner.run(), name=f"container {rec.key}/{c.name}")

    @staticmethod
    def _record_exit(crec: ContainerRecord, result: Exit) -> None:
        crec.previous = crec.terminated
        crec.terminated = Terminated(exit_code=result.exit_code, reason=result.reason, finished_at=result.finished_at,
                                     started_at=crec.started_at, signal=result.signal, message=result.message,
                                     container_id=crec.container_id, restart=crec.restart_count)
        crec.state, crec.reason, crec.message = "terminated", None, None
        crec.pid = crec.start_ticks = None
        crec.exited_at = time.time()

    async def container_exited(self, rec: PodRecord, name: str, handle: Handle, result: Exit) -> None:
        live = rec.live_of(name)
        crec = rec.containers.get(name)
        try:
            if crec is None or live.handle is not handle:
                return
            live.handle = live.runner = None
            live.ready = live.started = False
            self._record_exit(crec, result)
            log.info("container exited", pod=rec.key, container=name, exit_code=result.exit_code, reason=result.reason)
            await self.agent.checkpoint.save_container(rec.uid, crec)
            if result.reason == "OOMKilled":
                limit = self._container_spec(rec, name).resources.limits.get("memory", "?")
                await self.record(rec, "Warning", "OOMKilled",
                                  f"Container {name} was killed for exceeding its memory limit ({limit})")
        except Exception:  # e.g. the checkpoint's disk is full: the exit is known in memory all the same
            log.exception("recording a container exit failed", pod=rec.key, container=name)
        finally:
            self.enqueue(rec.key)

    # ---- deletion ---------------------------------------------------------------------------------
    def _grace(self, pod: Pod | None, rec: PodRecord) -> float:
        if pod is not None and pod.metadata.deletion_grace_period_seconds is not None:
            return float(pod.metadata.deletion_grace_period_seconds)
        return float(rec.cp.grace)

    async def _stop_all(self, rec: PodRecord, grace: float, announce: bool) -> None:
        for name in rec.running():
            runner = rec.live[name].runner
            if runner is None:
                continue
            if announce and not runner.stopping:
                await self.record(rec, "Normal", "Killing", f"Stopping container {name}")
            runner.request_stop(grace)

    async def _sync_deleting(self, pod: Pod, rec: PodRecord) -> float | None:
        await self._stop_all(rec, self._grace(pod, rec), announce=True)
        if rec.running():
            await self._write_status(pod, rec)
            return None  # each exit enqueues the pod again
        if rec.cp.phase is None:
            rec.cp.phase = terminal_phase(pod, rec) if rec.containers else "Failed"
            await self.agent.checkpoint.save_pod(rec.cp)
        await self._write_status(pod, rec)
        await self._confirm_deletion(pod)
        await self._cleanup(rec)
        log.info("pod deleted", pod=rec.key, uid=rec.uid)
        return None

    def _start_teardown(self, rec: PodRecord) -> None:
        if rec.tearing_down:
            return
        rec.tearing_down = True
        self.agent.tg.create_task(self._teardown(rec), name=f"teardown {rec.key}")

    async def _teardown(self, rec: PodRecord) -> None:
        """The pod is gone from the API (or replaced): stop what runs and clean up."""
        grace = self._grace(rec.pod, rec)
        log.info("pod gone from the API; stopping it", pod=rec.key, uid=rec.uid, grace=grace)
        try:
            await self._stop_all(rec, grace, announce=False)
            for live in list(rec.live.values()):
                if live.runner is not None:
                    await live.runner.done.wait()
            await self._cleanup(rec)
        except Exception:  # cleanup trouble must not take the agent down; the next reconcile retries
            log.exception("pod teardown failed; will retry", pod=rec.key, uid=rec.uid)
            rec.tearing_down = False
            self.controller.queue.add_after(rec.key, 5.0)
            return
        self.enqueue(rec.key)

    async def _cleanup(self, rec: PodRecord) -> None:
        self.runtime.release(rec.uid)
        if self.runtime.runs_processes:
            self.agent.sandboxes.remove(rec.uid)
            self.agent.logs.remove_pod(rec.cp.namespace, rec.cp.name, rec.uid)
        self.agent.ips.release(rec.uid)
        await self.agent.checkpoint.delete_pod(rec.uid)
        self._forget(rec)

    async def stop_everything(self, grace: float) -> None:
        """Agent shutdown with --stop-pods-on-exit: stop every container (the runners are gone by
        now) and checkpoint how each ended, so that the next agent restarts them by their policy."""

        async def stop(rec: PodRecord, crec: ContainerRecord, handle: Handle) -> None:
            await self.runtime.stop(handle, min(grace, self._grace(rec.pod, rec)))
            try:
                result = await asyncio.wait_for(self.runtime.wait(handle), 5)
            except TimeoutError:
                result = Exit(137, now_iso(), "ContainerStatusUnknown", message="did not stop with the node agent")
            self._record_exit(crec, result)
            await self.agent.checkpoint.save_container(rec.uid, crec)

        async with asyncio.TaskGroup() as tg:
            for rec in self.pods.values():
                for name, live in rec.live.items():
                    crec = rec.containers.get(name)
                    if live.handle is not None and crec is not None:
                        tg.create_task(stop(rec, crec, live.handle))
                        live.handle = None
        for rec in self.pods.values():
            self.runtime.release(rec.uid)
        log.info("stopped every pod", pods=len(self.pods))

    # ---- status -----------------------------------------------------------------------------------
    async def _write_status(self, pod: Pod, rec: PodRecord) -> None:
        status = pod_status(pod, rec, self.runtime.name, self.agent.node_ip)
        data = encode(status)
        if data == encode(pod.status):
            return
        rv = int(pod.metadata.resource_version or 0)
        if data == rec.written and rv < rec.written_rv:
            return  # the cache has not caught up with our own write yet
        body = Pod(metadata=ObjectMeta(name=pod.metadata.name, namespace=pod.metadata.namespace,
                                       uid=pod.metadata.uid), status=status)
        try:
            reply = await self.agent.api.pods.update_status(body)
        except ApiError as exc:
            if exc.reason in ("NotFound", "Conflict"):
                return  # gone or replaced: the watch brings the news
            raise
        rec.written = data
        rec.written_rv = int(reply.metadata.resource_version or 0)
