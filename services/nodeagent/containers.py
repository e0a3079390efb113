"""The supervisor of one running container instance: waits for the process to exit, runs the
instance's probes and lifecycle hooks, and stops it when asked (deletion, failed liveness or startup
probe, failed postStart hook).

Hooks as in Kubernetes: postStart runs once the process has started (probes wait for it); if it fails
the container is killed (FailedPostStartHook) and the restart policy decides. preStop runs before
the SIGTERM of every stop, inside the grace period; if it fails (FailedPreStopHook) or uses up the
grace, the stop goes on, with 2 more seconds for the process when the hook took all of it.

It decides nothing about restarts: on exit it hands the exit to the pod sync, which applies the
restart policy and back-off at its next reconcile of the pod.
"""
from __future__ import annotations

import asyncio
import math
import time
from typing import Protocol

from schemas import now_iso, parse_time

from services.lib.log import get_logger

from .podstate import PodRecord
from .probes import ProbeTarget, ProbeWorker, run_hook
from .runtime import Exit, Handle

log = get_logger("flotilla.nodeagent.containers")

POST_START_TIMEOUT = 30.0  # Kubernetes sets none; a hook that hangs must not hold the container forever
PRE_STOP_EXTENSION = 2.0  # Kubernetes' one-off extension when the preStop hook used up the grace period


class RunnerHost(Protocol):
    async def container_exited(self, rec: PodRecord, name: str, handle: Handle, exit: Exit) -> None: ...

    def probe_changed(self, rec: PodRecord) -> None: ...

    async def record(self, rec: PodRecord, type_: str, reason: str, message: str) -> None: ...


class ContainerRunner:
    def __init__(self, host: RunnerHost, rec: PodRecord, name: str, handle: Handle, target: ProbeTarget,
                 started_epoch: float, probes_enabled: bool = True, seed_ready: bool | None = None,
                 seed_started: bool = False, post_start: bool = False):
        self.host = host
        self.rec = rec
        self.name = name
        self.handle = handle
        self.target = target
        self.runtime = target.runtime
        self._requested = asyncio.Event()
        self._deadline = math.inf
        self.stopping = False
        self.kill_reason: str | None = None
        self.started_gate = asyncio.Event()
        self.done = asyncio.Event()
        live = rec.live_of(name)
        spec = target.container
        # Hooks run where probes do (a real process runtime); postStart only for a fresh start, not for
        # a container adopted after an agent restart.
        hooks = spec.lifecycle if probes_enabled else None
        self.post_start = hooks.post_start if hooks is not None and post_start else None
        self.pre_stop = hooks.pre_stop if hooks is not None else None
        self.workers: list[ProbeWorker] = []
        if probes_enabled and spec.startup_probe is not None and not seed_started:
            live.started = False
            self.workers.append(ProbeWorker("startup", spec.startup_probe, target, started_epoch, self._on_result,
                                            self._on_failure))
        else:
            live.started = True
            self.started_gate.set()
        if probes_enabled and spec.readiness_probe is not None:
            live.ready = bool(seed_ready)
            self.workers.append(ProbeWorker("readiness", spec.readiness_probe, target, started_epoch, self._on_result,
                                            self._on_failure, gate=self.started_gate, initial=bool(seed_ready)))
        else:
            live.ready = True
        if probes_enabled and spec.liveness_probe is not None:
            self.workers.append(ProbeWorker("liveness", spec.liveness_probe, target, started_epoch, self._on_result,
                                            self._on_failure, gate=self.started_gate))

    # ---- requests from the pod sync and the probes ------------------------------------------------
    def request_stop(self, grace: float, reason: str | None = None) -> None:
        """Stop the instance within `grace` seconds; a later request can only shorten the deadline."""
        self.stopping = True
        if reason and self.kill_reason is None:
            self.kill_reason = reason
        deadline = asyncio.get_running_loop().time() + max(grace, 0.0)
        if deadline < self._deadline:
            self._deadline = deadline
            self._requested.set()

    def _grace_for_probe(self, worker: ProbeWorker) -> float:
        if worker.probe.termination_grace_period_seconds is not None:
            return float(worker.probe.termination_grace_period_seconds)
        return self._pod_grace()

    def _pod_grace(self) -> float:
        pod = self.rec.pod
        if pod is not None and pod.spec.termination_grace_period_seconds is not None:
            return float(pod.spec.termination_grace_period_seconds)
        return 30.0

    async def _on_result(self, worker: ProbeWorker, ok: bool) -> None:
        live = self.rec.live_of(self.name)
        if worker.kind == "readiness":
            live.ready = ok
            self.host.probe_changed(self.rec)
        elif worker.kind == "startup" and ok:
            live.started = True
            self.started_gate.set()
            self.host.probe_changed(self.rec)
        elif not ok and not self.stopping:  # liveness or startup failed: restart (policy permitting)
            await self.host.record(self.rec, "Normal", "Killing",
                                   f"Container {self.name} failed {worker.kind} probe, will be restarted")
            self.request_stop(self._grace_for_probe(worker), f"{worker.title} probe failed")

    async def _on_failure(self, worker: ProbeWorker, message: str) -> None:
        if self.stopping:
            return
        await self.host.record(self.rec, "Warning", "Unhealthy", f"{worker.title} probe failed: {message}")

    # ---- the supervision ---------------------------------------------------------------------------
    async def _run_pre_stop(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = self._deadline
        grace = deadline - loop.time()
        if self.pre_stop is None or grace <= 0:
            return
        self._requested.clear()
        async with asyncio.TaskGroup() as tg:
            hook = tg.create_task(run_hook(self.pre_stop, self.target, grace))
            shorter = tg.create_task(self._requested.wait())
            await asyncio.wait([hook, shorter], timeout=grace, return_when=asyncio.FIRST_COMPLETED)
            shorter.cancel()
            if not hook.done():  # out of time, or a shorter deadline (a forced delete) came in
                hook.cancel()
        if hook.cancelled():
            if self._deadline >= deadline:  # the hook used up the grace: the process gets a little more
                self._deadline = loop.time() + PRE_STOP_EXTENSION
            await self.host.record(self.rec, "Warning", "FailedPreStopHook",
                                   f"PreStopHook of container {self.name} did not finish within the grace period")
            return
        ok, message = hook.result()
        if not ok:
            await self.host.record(self.rec, "Warning", "FailedPreStopHook",
                                   f"PreStopHook failed for container {self.name}: {message}")

    async def _stopper(self) -> None:
        loop = asyncio.get_running_loop()
        await self._requested.wait()
        await self._run_pre_stop()
        while True:
            self._requested.clear()
            grace = max(0.0, self._deadline - loop.time())
            async with asyncio.TaskGroup() as tg:
                stop = tg.create_task(self.runtime.stop(self.handle, grace))
                again = tg.create_task(self._requested.wait())
                await asyncio.wait([stop, again], return_when=asyncio.FIRST_COMPLETED)
                if stop.done():
                    again.cancel()
                    return
                stop.cancel()  # a shorter deadline came in: start over with it

    async def _post_start_then_probes(self) -> None:
        if self.post_start is not None:
            ok, message = await run_hook(self.post_start, self.target, POST_START_TIMEOUT)
            if not ok:
                await self.host.record(self.rec, "Warning", "FailedPostStartHook",
                                       f"PostStartHook failed for container {self.name}: {message}")
                self.request_stop(self._pod_grace(), f"PostStartHookError: {message}")
                return
        async with asyncio.TaskGroup() as tg:
            for w in self.workers:
                tg.create_task(w.run())

    async def _supervise(self) -> Exit:
        async with asyncio.TaskGroup() as tg:
            helpers = [tg.create_task(self._stopper())]
            if self.post_start is not None or self.workers:
                helpers.append(tg.create_task(self._post_start_then_probes()))
            result = await self.runtime.wait(self.handle)
            for t in helpers:
                t.cancel()
        return result

    async def run(self) -> None:
        try:
            try:
                result = await self._supervise()
            except Exception as exc:  # a bug here must not take the agent down: report the instance lost
                log.exception("container supervision failed", pod=self.rec.key, container=self.name)
                await self.runtime.stop(self.handle, 0)
                result = Exit(137, now_iso(), "ContainerStatusUnknown",
                              message=f"the node agent lost the container: {exc!r}")
            if self.kill_reason and result.reason in ("Error", "Completed"):
                result.message = result.message or self.kill_reason
            await self.host.container_exited(self.rec, self.name, self.handle, result)
        finally:
            self.done.set()


def wall_time_of(iso: str | None) -> float:
    """Epoch seconds of an RFC 3339 time (the container's start, for probe delays)."""
    if not iso:
        return time.time()
    try:
        return parse_time(iso).timestamp()
    except ValueError:
        return time.time()
