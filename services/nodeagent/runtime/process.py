"""The process runtime: every container is a real OS process in its own session (so its process
group is the container), its stdout and stderr appended to a log file it holds itself (so it keeps
running, and logging, while the agent restarts), placed in its own cgroups when the host allows.

Exits are noticed through a pidfd (no thread per child, and it works for adopted processes that
are not our children). For our own children the exit status comes from waitpid; for adopted ones
from /proc while the process is still a zombie, otherwise it is unknown (reported like Kubernetes
does for a vanished container: reason ContainerStatusUnknown, exit code 137).
"""
from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
from pathlib import Path

from schemas import now_iso

from ..cgroups import CgroupError, Cgroups
from . import Exit, Handle, Launch, StartError, procfs

# Joins the cgroups given before "--", then becomes the container command (same PID, so the
# process is limited from its first instruction; no preexec_fn, which is unsafe with threads).
_JOIN_CGROUPS = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 126; shift; done; shift; exec "$@"'
_POLL_SECONDS = 0.5
MAX_PROBE_OUTPUT = 10 * 1024


def resolve_executable(argv0: str, env: dict[str, str], cwd: Path) -> str:
    """The file `argv0` names, as exec would find it; StartError with Kubernetes' wording if none."""
    if "/" in argv0:
        path = Path(argv0) if argv0.startswith("/") else cwd / argv0
        if not path.exists():
            raise StartError("RunContainerError", f'exec: "{argv0}": stat {argv0}: no such file or directory')
        if path.is_dir() or not os.access(path, os.X_OK):
            raise StartError("RunContainerError", f'exec: "{argv0}": permission denied')
        return str(path)
    found = shutil.which(argv0, path=env.get("PATH", os.defpath))
    if found is None:
        raise StartError("RunContainerError", f'exec: "{argv0}": executable file not found in $PATH')
    return found


def _killpg(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _running(pid: int, ticks: int | None) -> bool:
    if ticks is not None:
        return procfs.is_alive(pid, ticks)
    fields = procfs.stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


async def wait_pid_exit(pid: int, ticks: int | None = None) -> None:
    """Return once process `pid` (started at `ticks`, if given) has exited (zombie or gone)."""
    loop = asyncio.get_running_loop()
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except OSError:  # no pidfd on this kernel: poll /proc
        while _running(pid, ticks):
            await asyncio.sleep(_POLL_SECONDS)
        return
    try:
        if ticks is not None and not procfs.is_alive(pid, ticks):
            return  # the PID is another process's by now, or ours already exited
        done = loop.create_future()

        def readable() -> None:
            if not done.done():
                done.set_result(None)

        loop.add_reader(fd, readable)
        try:
            await done
        finally:
            loop.remove_reader(fd)
    finally:
        os.close(fd)


class ProcessRuntime:
    name = "process"
    runs_processes = True

    def __init__(self, cgroups: Cgroups):
        self.cgroups = cgroups

    # ---- start ------------------------------------------------------------------------------------
    async def start(self, launch: Launch) -> Handle:
        if not launch.argv:
            raise StartError("CreateContainerError", "no command specified: the process runtime runs "
                                                     "`command` + `args` (image entrypoints are not run)")
        exe = resolve_executable(launch.argv[0], launch.env, launch.cwd)
        dirs: list[str] = []
        oom_base = 0
        if self.cgroups.enforced:
            try:
                dirs = self.cgroups.create(launch.pod_uid, launch.container, launch.limits)
            except CgroupError as exc:
                raise StartError("CreateContainerError", str(exc)) from None
            oom_base = Cgroups.oom_kills(dirs)
        launch.log_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(launch.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        try:
            if dirs:
                args = ["/bin/sh", "-c", _JOIN_CGROUPS, "flotilla-init", *Cgroups.procs_files(dirs), "--",
                        exe, *launch.argv[1:]]
                executable = None
            else:
                args, executable = launch.argv, exe
            popen = subprocess.Popen(args, executable=executable, cwd=launch.cwd, env=launch.env,
                                     stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, start_new_session=True,
                                     close_fds=True)
        except OSError as exc:
            raise StartError("RunContainerError", f'exec: "{launch.argv[0]}": {exc.strerror or exc}') from None
        finally:
            os.close(fd)
        ticks = procfs.start_ticks(popen.pid) or 0
        return Handle(container_id=launch.container_id, pid=popen.pid, start_ticks=ticks, started_at=now_iso(),
                      cgroup_dirs=dirs, adopted=False, oom_base=oom_base, private=popen)

    # ---- adopt ------------------------------------------------------------------------------------
    def adopt(self, container_id: str, pid: int | None, start_ticks: int | None, started_at: str,
              cgroup_dirs: list[str], oom_base: int = 0) -> Handle | Exit:
        if pid is None:  # started, but the agent died before checkpointing the PID
            found = procfs.find_session_leader_with_env(f"FLOTILLA_CONTAINER_ID={container_id}")
            if found is None:
                return Exit(137, now_iso(), "ContainerStatusUnknown",
                            message="the container's process was not found after a node agent restart")
            pid, start_ticks = found
        assert start_ticks is not None
        if procfs.is_alive(pid, start_ticks):
            return Handle(container_id=container_id, pid=pid, start_ticks=start_ticks, started_at=started_at,
                          cgroup_dirs=cgroup_dirs, adopted=True, oom_base=oom_base)
        return self._adopted_exit(pid, start_ticks, cgroup_dirs, oom_base,
                                  "the process exited while the node agent was down")

    def _adopted_exit(self, pid: int, ticks: int, dirs: list[str], oom_base: int, context: str) -> Exit:
        status = procfs.zombie_status(pid, ticks)
        Cgroups.kill_all(dirs)
        if status is None:
            return Exit(137, now_iso(), "ContainerStatusUnknown", message=f"{context}; its exit code is unknown")
        code, sig = procfs.decode_wait_status(status)
        return self._exit(code, sig, dirs, oom_base)

    @staticmethod
    def _exit(code: int, sig: int | None, dirs: list[str], oom_base: int) -> Exit:
        oom = bool(dirs) and code != 0 and Cgroups.oom_kills(dirs) > oom_base
        reason = "OOMKilled" if oom else ("Completed" if code == 0 else "Error")
        return Exit(code, now_iso(), reason, signal=sig)

    # ---- wait / stop ------------------------------------------------------------------------------
    async def wait(self, handle: Handle) -> Exit:
        popen: subprocess.Popen | None = handle.private  # type: ignore[assignment]
        if popen is None:
            await wait_pid_exit(handle.pid, handle.start_ticks)
            return self._adopted_exit(handle.pid, handle.start_ticks, handle.cgroup_dirs, handle.oom_base,
                                      "the adopted process exited")
        if popen.returncode is None:
            await wait_pid_exit(handle.pid)
            # The leader is a zombie now, so its PID (the group's id) cannot be reused yet: end
            # whatever it left behind in its group, as a container's processes end with it.
            _killpg(handle.pid, signal.SIGKILL)
            Cgroups.kill_all(handle.cgroup_dirs)
            popen.wait()
        rc = popen.returncode
        code, sig = (128 - rc, -rc) if rc < 0 else (rc, None)
        return self._exit(code, sig, handle.cgroup_dirs, handle.oom_base)

    def alive(self, handle: Handle) -> bool:
        popen: subprocess.Popen | None = handle.private  # type: ignore[assignment]
        if popen is not None and popen.returncode is not None:
            return False
        return procfs.is_alive(handle.pid, handle.start_ticks)

    def _signal(self, handle: Handle, sig: int) -> None:
        popen: subprocess.Popen | None = handle.private  # type: ignore[assignment]
        # Ours and not reaped: the PID is still ours. Adopted: only if /proc confirms its identity.
        if (popen is not None and popen.returncode is None) or procfs.is_alive(handle.pid, handle.start_ticks):
            _killpg(handle.pid, sig)
        if sig == signal.SIGKILL:
            Cgroups.kill_all(handle.cgroup_dirs)

    async def stop(self, handle: Handle, grace: float) -> None:
        """SIGTERM to the process group, up to `grace` seconds to exit, then SIGKILL (group and cgroup)."""
        if self.alive(handle):
            self._signal(handle, signal.SIGTERM)
            try:
                await asyncio.wait_for(wait_pid_exit(handle.pid, handle.start_ticks), max(grace, 0))
            except TimeoutError:
                pass
        self._signal(handle, signal.SIGKILL)
        try:
            await asyncio.wait_for(wait_pid_exit(handle.pid, handle.start_ticks), 10)
        except TimeoutError:
            pass  # uninterruptible sleep; the waiter will notice the exit when it comes

    # ---- exec (probes) ----------------------------------------------------------------------------
    async def exec(self, handle: Handle, argv: list[str], env: dict[str, str], cwd: Path,
                   timeout: float) -> tuple[int | None, str]:
        """Run `argv` beside the container (its env, cwd and cgroups); (exit code or None on timeout, output)."""
        try:
            exe = resolve_executable(argv[0], env, cwd)
        except StartError as exc:
            return 127, exc.message
        dirs = [d for d in handle.cgroup_dirs if Path(d).is_dir()]
        args = (["/bin/sh", "-c", _JOIN_CGROUPS, "flotilla-probe", *Cgroups.procs_files(dirs), "--", exe, *argv[1:]]
                if dirs else [exe, *argv[1:]])
        loop = asyncio.get_running_loop()
        try:
            popen = subprocess.Popen(args, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
        except OSError as exc:
            return 126, f"exec {argv[0]}: {exc.strerror or exc}"
        assert popen.stdout is not None
        fd = popen.stdout.fileno()
        os.set_blocking(fd, False)
        chunks: list[bytes] = []
        size = 0
        eof = asyncio.Event()

        def readable() -> None:
            nonlocal size
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return
            if not data:
                loop.remove_reader(fd)
                eof.set()
            elif size < MAX_PROBE_OUTPUT:
                chunks.append(data)
                size += len(data)

        loop.add_reader(fd, readable)
        timed_out = False
        try:
            await asyncio.wait_for(asyncio.gather(eof.wait(), wait_pid_exit(popen.pid)), timeout)
        except TimeoutError:
            timed_out = True
        finally:
            loop.remove_reader(fd)
            _killpg(popen.pid, signal.SIGKILL)  # not reaped yet: the group id is still ours
            popen.stdout.close()
        await wait_pid_exit(popen.pid)
        popen.wait()
        output = b"".join(chunks)[:MAX_PROBE_OUTPUT].decode(errors="replace")
        if timed_out:
            return None, output
        rc = popen.returncode
        return (128 - rc if rc < 0 else rc), output

    def release(self, pod_uid: str, container: str | None = None) -> None:
        if self.cgroups.enforced:
            self.cgroups.remove_pod(pod_uid)
