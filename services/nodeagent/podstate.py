"""What the agent knows about the pods it runs: the part that survives its restarts (checkpointed
Structs) and the part that lives with the process (handles, runners, probe results)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgspec

from schemas import Pod

from .runtime import Handle

if TYPE_CHECKING:
    from .containers import ContainerRunner


class Terminated(msgspec.Struct, kw_only=True, omit_defaults=True):
    exit_code: int
    reason: str
    finished_at: str
    started_at: str | None = None
    signal: int | None = None
    message: str | None = None
    container_id: str | None = None
    restart: int = 0  # the instance's restart index (its log file is <restart>.log)


class ContainerRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One container of a pod across its restarts (checkpointed)."""

    name: str
    init: bool = False
    restart_count: int = 0
    state: str = "waiting"  # waiting | running | terminated
    reason: str | None = "ContainerCreating"  # while waiting
    message: str | None = None
    container_id: str | None = None  # of the current (or last) instance
    pending_id: str | None = None    # an instance being started (checkpointed before the process exists)
    pid: int | None = None
    start_ticks: int | None = None
    started_at: str | None = None
    cgroup_dirs: list[str] = msgspec.field(default_factory=list)
    oom_base: int = 0
    terminated: Terminated | None = None  # the latest termination
    previous: Terminated | None = None    # the one before it
    exited_at: float = 0.0    # wall time of the latest exit (or failed start)
    backoff: float = 0.0      # the current back-off step, seconds (0: none yet)
    backoff_at: float = 0.0   # wall time of the restart that began that step
    image: str | None = None  # what the current (or last) instance was started from
    definition_changed: bool = False  # stopped because the pod's image changed: restart whatever the policy

    @property
    def ever_started(self) -> bool:
        return self.container_id is not None

    @property
    def succeeded(self) -> bool:
        return self.state == "terminated" and self.terminated is not None and self.terminated.exit_code == 0


class PodCheckpoint(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A pod admitted to this node (checkpointed; its containers are rows of their own)."""

    uid: str
    namespace: str
    name: str
    ip: str = ""
    grace: int = 30
    start_time: str = ""
    phase: str | None = None    # set once the pod is terminal here: Succeeded or Failed
    reason: str | None = None   # pod-level reason (OutOfcpu, DeadlineExceeded, ...)
    message: str | None = None


@dataclass
class ContainerLive:
    """Per container, what lives only with the agent process."""

    handle: Handle | None = None
    runner: "ContainerRunner | None" = None
    ready: bool = False
    started: bool = False       # startup probe passed (or none)
    seed_ready: bool | None = None  # readiness reported before an agent restart, for adopted containers
    backoff_reported: float = 0.0   # the back-off step a BackOff event was recorded for


@dataclass
class PodRecord:
    cp: PodCheckpoint
    containers: dict[str, ContainerRecord]
    live: dict[str, ContainerLive] = field(default_factory=dict)
    pod: Pod | None = None           # the latest API object seen
    written: bytes = b""             # the last status this agent wrote
    written_rv: int = 0              # and the resourceVersion it got
    tearing_down: bool = False
    stop_requested: bool = False

    @property
    def uid(self) -> str:
        return self.cp.uid

    @property
    def key(self) -> str:
        return f"{self.cp.namespace}/{self.cp.name}"

    def live_of(self, name: str) -> ContainerLive:
        if name not in self.live:
            self.live[name] = ContainerLive()
        return self.live[name]

    def running(self) -> list[str]:
        return [n for n, lv in self.live.items() if lv.handle is not None]
