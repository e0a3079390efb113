"""The container runtime interface: what the pod sync asks of whatever runs containers.

Two implementations: `process.ProcessRuntime` (each container a real OS process in its own session,
the default) and `hollow.HollowRuntime` (runs nothing; scale benchmarks only, like kubemark).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


class StartError(Exception):
    """A container could not be started; `reason` is the container's waiting reason
    (RunContainerError, CreateContainerError, CreateContainerConfigError)."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass
class Limits:
    memory_bytes: int | None = None
    cpu_millis: int | None = None          # limit -> CFS quota
    cpu_request_millis: int | None = None  # request -> shares / weight


@dataclass
class Launch:
    """Everything needed to start one container instance."""

    container_id: str
    pod_uid: str
    container: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    log_path: Path
    limits: Limits = field(default_factory=Limits)


@dataclass
class Handle:
    """One running (or adopted) container instance. `start_ticks` is the process start time from
    /proc/<pid>/stat, so that a reused PID is never taken for the container."""

    container_id: str
    pid: int
    start_ticks: int
    started_at: str
    cgroup_dirs: list[str] = field(default_factory=list)
    adopted: bool = False
    oom_base: int = 0
    private: object = None  # the runtime's own state (a Popen, an Event)


@dataclass
class Exit:
    exit_code: int
    finished_at: str
    reason: str = "Error"  # Completed, Error, OOMKilled, ContainerStatusUnknown
    signal: int | None = None
    message: str | None = None


class Runtime(Protocol):
    name: str
    runs_processes: bool

    async def start(self, launch: Launch) -> Handle: ...

    async def wait(self, handle: Handle) -> Exit: ...

    async def stop(self, handle: Handle, grace: float) -> None: ...

    def alive(self, handle: Handle) -> bool: ...

    def adopt(self, container_id: str, pid: int | None, start_ticks: int | None, started_at: str,
              cgroup_dirs: list[str]) -> Handle | Exit: ...

    async def exec(self, handle: Handle, argv: list[str], env: dict[str, str], cwd: Path,
                   timeout: float) -> tuple[int | None, str]: ...

    def release(self, pod_uid: str, container: str | None = None) -> None: ...
