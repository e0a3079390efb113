"""A pod's status computed from what the agent knows (pure functions, Kubernetes' rules).

Phase (kubelet's getPhase): Pending while an init container has not succeeded or an app
container waits without having run; Running while any runs (or, with restartPolicy Always or
OnFailure, while stopped ones wait to restart); Succeeded when all stopped with exit code 0;
Failed when all stopped, some not 0, and they will not restart (Never), or an init container
failed under Never. Conditions: PodScheduled (kept as the scheduler/API wrote it), Initialized,
ContainersReady, Ready; other condition types written by others are kept as they are.
"""
from __future__ import annotations

from schemas import Condition, Pod, now_iso
from schemas.pod import (Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
                         ContainerStateWaiting, ContainerStatus, PodIP, PodStatus)

from .podstate import ContainerLive, ContainerRecord, PodRecord, Terminated

OWN_CONDITIONS = ("Initialized", "ContainersReady", "Ready")


def _terminated(t: Terminated, runtime: str) -> ContainerStateTerminated:
    return ContainerStateTerminated(exit_code=t.exit_code, signal=t.signal, reason=t.reason, message=t.message,
                                    started_at=t.started_at, finished_at=t.finished_at,
                                    container_id=f"{runtime}://{t.container_id}" if t.container_id else None)


def container_status(spec: Container, rec: ContainerRecord, live: ContainerLive, runtime: str) -> ContainerStatus:
    state, last = ContainerState(), ContainerState()
    if rec.state == "running":
        state.running = ContainerStateRunning(started_at=rec.started_at)
        if rec.terminated is not None:
            last.terminated = _terminated(rec.terminated, runtime)
    elif rec.state == "terminated" and rec.terminated is not None:
        state.terminated = _terminated(rec.terminated, runtime)
        if rec.previous is not None:
            last.terminated = _terminated(rec.previous, runtime)
    else:
        state.waiting = ContainerStateWaiting(reason=rec.reason or "ContainerCreating", message=rec.message)
        if rec.terminated is not None:
            last.terminated = _terminated(rec.terminated, runtime)
    running = rec.state == "running"
    return ContainerStatus(
        name=spec.name, ready=running and live.started and live.ready, restart_count=rec.restart_count, state=state,
        last_state=last,
        # The image of the instance that runs (or ran): a changed spec shows once it restarted.
        image=(rec.image if running and rec.image else spec.image) or (spec.command[0] if spec.command else ""),
        image_id="",
        container_id=f"{runtime}://{rec.container_id}" if rec.container_id else None,
        started=running and live.started)


def _init_done(rec: ContainerRecord | None) -> bool:
    return rec is not None and rec.succeeded


def init_failed_for_good(pod: Pod, rec: PodRecord) -> bool:
    """An init container failed and restartPolicy Never forbids trying again."""
    if (pod.spec.restart_policy or "Always") != "Never":
        return False
    return any((c := rec.containers.get(ic.name)) is not None and c.state == "terminated"
               and c.terminated is not None and c.terminated.exit_code != 0 for ic in pod.spec.init_containers)


def initialized(pod: Pod, rec: PodRecord) -> bool:
    return all(_init_done(rec.containers.get(ic.name)) for ic in pod.spec.init_containers)


def compute_phase(pod: Pod, rec: PodRecord) -> str:
    policy = pod.spec.restart_policy or "Always"
    if init_failed_for_good(pod, rec):
        return "Failed"
    if not initialized(pod, rec):
        return "Pending"
    running = stopped = succeeded = waiting = 0
    for c in pod.spec.containers:
        r = rec.containers.get(c.name)
        if r is None:
            waiting += 1
        elif r.state == "running":
            running += 1
        elif r.state == "terminated" and r.terminated is not None:
            stopped += 1
            succeeded += r.terminated.exit_code == 0
        elif r.terminated is not None:  # waiting to restart
            stopped += 1
        else:
            waiting += 1
    if waiting:
        return "Pending"
    if running:
        return "Running"
    if stopped:
        if policy == "Always":
            return "Running"
        if stopped == succeeded:
            return "Succeeded"
        if policy == "Never":
            return "Failed"
        return "Running"
    return "Pending"


def terminal_phase(pod: Pod, rec: PodRecord) -> str:
    """The phase of a pod whose containers were all stopped for good (deleted, or deadline exceeded)."""
    if not initialized(pod, rec):
        return "Failed"
    codes = [r.terminated.exit_code if r.terminated else 1 for c in pod.spec.containers
             if (r := rec.containers.get(c.name)) is not None]
    return "Succeeded" if codes and all(code == 0 for code in codes) and len(codes) == len(pod.spec.containers) \
        else "Failed"


def _condition(existing: dict[str, Condition], type_: str, ok: bool, reason: str | None = None,
               message: str | None = None) -> Condition:
    status = "True" if ok else "False"
    old = existing.get(type_)
    since = old.last_transition_time if old is not None and old.status == status and old.last_transition_time \
        else now_iso()
    return Condition(type=type_, status=status, reason=None if ok else reason, message=None if ok else message,
                     last_transition_time=since, last_probe_time=None)


def pod_status(pod: Pod, rec: PodRecord, runtime: str, host_ip: str) -> PodStatus:
    existing = {c.type: c for c in pod.status.conditions}
    phase = rec.cp.phase or compute_phase(pod, rec)
    init_statuses = [container_status(c, rec.containers[c.name], rec.live_of(c.name), runtime)
                     for c in pod.spec.init_containers if c.name in rec.containers]
    statuses = [container_status(c, rec.containers[c.name], rec.live_of(c.name), runtime)
                for c in pod.spec.containers if c.name in rec.containers]
    conditions: list[Condition] = []
    scheduled = existing.get("PodScheduled") or Condition(type="PodScheduled", status="True",
                                                            last_transition_time=rec.cp.start_time or now_iso())
    conditions.append(scheduled)
    if rec.containers:  # a rejected pod never got this far
        incomplete = [c.name for c in pod.spec.init_containers if not _init_done(rec.containers.get(c.name))]
        conditions.append(_condition(existing, "Initialized", not incomplete, "ContainersNotInitialized",
                                     f"containers with incomplete status: [{' '.join(incomplete)}]"))
        unready = [s.name for s in statuses if not s.ready] + \
            [c.name for c in pod.spec.containers if c.name not in rec.containers]
        if phase in ("Succeeded", "Failed"):
            reason, message = "PodCompleted", None
            ready = False
        else:
            reason, message = "ContainersNotReady", f"containers with unready status: [{' '.join(unready)}]"
            ready = not unready
        conditions.append(_condition(existing, "ContainersReady", ready, reason, message))
        conditions.append(_condition(existing, "Ready", ready, reason, message))
    mine = {"PodScheduled", *OWN_CONDITIONS}
    conditions += [c for c in pod.status.conditions if c.type not in mine]
    ip = rec.cp.ip or None
    return PodStatus(
        phase=phase, conditions=conditions, message=rec.cp.message, reason=rec.cp.reason,
        host_ip=host_ip,
        pod_ip=ip, pod_ips=[PodIP(ip=ip)] if ip else [],
        start_time=rec.cp.start_time or pod.status.start_time,
        container_statuses=statuses, init_container_statuses=init_statuses,
        qos_class=pod.status.qos_class, nominated_node_name=pod.status.nominated_node_name)
