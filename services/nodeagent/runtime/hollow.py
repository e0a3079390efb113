"""The hollow runtime: containers that run nothing, are Running as soon as they are started and
stay so until stopped. For scale benchmarks only (like kubemark / kwok); never the default."""
from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

from schemas import now_iso

from . import Exit, Handle, Launch

_pids = itertools.count(1_000_000)


class HollowRuntime:
    name = "hollow"
    runs_processes = False

    async def start(self, launch: Launch) -> Handle:
        return Handle(container_id=launch.container_id, pid=next(_pids), start_ticks=0, started_at=now_iso(),
                      private=asyncio.Event())

    async def wait(self, handle: Handle) -> Exit:
        await self._event(handle).wait()
        return Exit(0, now_iso(), "Completed")

    async def stop(self, handle: Handle, grace: float) -> None:
        self._event(handle).set()

    def alive(self, handle: Handle) -> bool:
        return not self._event(handle).is_set()

    def adopt(self, container_id: str, pid: int | None, start_ticks: int | None, started_at: str,
              cgroup_dirs: list[str], oom_base: int = 0) -> Handle | Exit:
        # Nothing ran, so nothing died: a hollow container outlives its agent's restarts.
        return Handle(container_id=container_id, pid=pid or next(_pids), start_ticks=0, started_at=started_at,
                      adopted=True, private=asyncio.Event())

    async def exec(self, handle: Handle, argv: list[str], env: dict[str, str], cwd: Path,
                   timeout: float) -> tuple[int | None, str]:
        return 0, ""

    def release(self, pod_uid: str, container: str | None = None) -> None:
        return None

    @staticmethod
    def _event(handle: Handle) -> asyncio.Event:
        if not isinstance(handle.private, asyncio.Event):
            handle.private = asyncio.Event()
        return handle.private
