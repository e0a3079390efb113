"""Keeps a set of OS processes running, like compose's `restart: unless-stopped`.

    async with Supervisor([ProcessSpec("scheduler", argv, log_path=logs / "scheduler.log")]) as sup:
        ...                       # children run; one that dies is restarted with back-off
    # leaving the block stops them all: SIGTERM, grace period, SIGKILL, and waits for each

One task per child owns everything about that child (spawn, wait, restart, stop), so there is
never a second place that could race with it over the process.

A child that needs more than an argv (a server whose config is written before each start and that
counts as started only once it answers, like the embedded nats-server) gets StartHooks; it is then
restarted and backed off by the very same loop as every other child.
"""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Protocol, TextIO

import msgspec


class ProcessSpec(msgspec.Struct, frozen=True):
    name: str
    argv: list[str]
    env: Mapping[str, str] | None = None  # added to (not replacing) the supervisor's environment
    log_path: Path | None = None  # stdout+stderr appended here; None inherits the supervisor's
    cwd: Path | None = None  # None: the supervisor's


class StartFailed(RuntimeError):
    """Raised by StartHooks: this start did not work; the supervisor backs off and tries again."""


class StartHooks(Protocol):
    async def before_start(self) -> None:
        """Called before every spawn (write the config, clear what a crashed predecessor left)."""

    async def ready(self, proc: asyncio.subprocess.Process) -> None:
        """Return once `proc` serves; raise StartFailed if it never will (it is then killed)."""


class ChildStatus(msgspec.Struct, frozen=True):
    name: str
    pid: int | None  # None while waiting out a back-off, or once stopped
    restarts: int
    last_exit: int | None  # returncode; negative is the signal number, as in asyncio
    stopped: bool


class _Child:
    def __init__(self, spec: ProcessSpec) -> None:
        self.spec = spec
        self.proc: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self.last_exit: int | None = None
        self.stop_requested = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.hooks: StartHooks | None = None
        self.first_attempt = asyncio.Event()  # the first start has worked or failed
        self.first_error: str | None = None


class Supervisor:
    def __init__(
        self,
        specs: Iterable[ProcessSpec],
        *,
        grace: float = 10.0,
        backoff_initial: float = 1.0,
        backoff_max: float = 30.0,
        backoff_reset_after: float = 60.0,
        out: TextIO | None = None,
        hooks: Mapping[str, StartHooks] | None = None,
    ) -> None:
        self._children: dict[str, _Child] = {}
        for spec in specs:
            if spec.name in self._children:
                raise ValueError(f"two processes are named {spec.name!r}")
            self._children[spec.name] = _Child(spec)
        for name, child_hooks in (hooks or {}).items():
            self._child(name).hooks = child_hooks
        self.grace = grace
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.backoff_reset_after = backoff_reset_after
        self._out = out
        self._tg: asyncio.TaskGroup | None = None

    async def __aenter__(self) -> Supervisor:
        self._tg = asyncio.TaskGroup()
        await self._tg.__aenter__()
        for child in self._children.values():
            child.task = self._tg.create_task(self._keep_running(child), name=f"supervise {child.spec.name}")
        return self

    async def __aexit__(self, et: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool | None:
        assert self._tg is not None, "Supervisor used without `async with`"
        if not isinstance(exc, asyncio.CancelledError):
            await self.stop()
        # On cancellation the tasks are cancelled by the group and SIGKILL their children themselves.
        return await self._tg.__aexit__(et, exc, tb)

    # -- what tests and `flotilla up` look at ---------------------------------------------------

    @property
    def names(self) -> list[str]:
        return list(self._children)

    def status(self, name: str) -> ChildStatus:
        child = self._child(name)
        proc = child.proc
        return ChildStatus(name=name, pid=proc.pid if proc and proc.returncode is None else None,
                           restarts=child.restarts, last_exit=child.last_exit,
                           stopped=child.stop_requested.is_set())

    def pid(self, name: str) -> int | None:
        return self.status(name).pid

    def restarts(self, name: str) -> int:
        return self._child(name).restarts

    async def wait_started(self, name: str) -> str | None:
        """Wait for the child's first start: None once it runs (and is ready, given StartHooks),
        else why it failed (it is being retried meanwhile)."""
        child = self._child(name)
        await child.first_attempt.wait()
        return child.first_error

    # -- acting on children ---------------------------------------------------------------------

    def kill(self, name: str, sig: signal.Signals = signal.SIGKILL) -> None:
        """Signal one child's process group; it counts as an unexpected exit and is restarted."""
        proc = self._child(name).proc
        if proc is not None and proc.returncode is None:
            _signal_group(proc.pid, sig)

    async def stop_child(self, name: str) -> None:
        """Stop one child for good (SIGTERM, grace, SIGKILL) and wait until it is gone."""
        child = self._child(name)
        child.stop_requested.set()
        if child.task is not None:
            await asyncio.wait([child.task])

    async def stop(self) -> None:
        """Stop every child, latest-started first, within one shared grace period."""
        children = list(self._children.values())
        for child in reversed(children):
            # asyncio wakes tasks in FIFO order, so each child's task sends its SIGTERM in the order
            # the events are set: latest-started first. The grace periods then run side by side,
            # so a whole suite stops within one grace period, not one per child.
            child.stop_requested.set()
        tasks = [c.task for c in children if c.task is not None]
        if tasks:
            await asyncio.wait(tasks)

    # -- the per-child task ---------------------------------------------------------------------

    async def _keep_running(self, child: _Child) -> None:
        try:
            await self._restart_loop(child)
        finally:
            if not child.first_attempt.is_set():  # stopped before its first start: nobody waits forever
                child.first_error = "stopped before it started"
                child.first_attempt.set()

    async def _restart_loop(self, child: _Child) -> None:
        backoff = self.backoff_initial
        while not child.stop_requested.is_set():
            started = time.monotonic()
            code = await self._run_once(child)
            if child.stop_requested.is_set():
                return
            if time.monotonic() - started >= self.backoff_reset_after:
                backoff = self.backoff_initial
            self._log("restarting", service=child.spec.name, exit=_describe_exit(code), backoff=f"{backoff:g}s")
            try:
                await asyncio.wait_for(child.stop_requested.wait(), backoff)
                return
            except TimeoutError:
                pass
            backoff = min(backoff * 2, self.backoff_max)
            child.restarts += 1

    async def _run_once(self, child: _Child) -> int | str:
        """Run the child until it exits or a stop is requested; its exit code, or why it failed."""
        try:
            if child.hooks is not None:
                await child.hooks.before_start()
            proc = await self._spawn(child.spec)
        except (OSError, StartFailed) as e:  # missing executable, unwritable log: back off and retry like a crash
            return self._start_failed(child, str(e))
        child.proc = proc
        try:
            if child.hooks is not None:
                error = await self._wait_ready(child, child.hooks, proc)
                if error is not None:
                    _signal_group(proc.pid, signal.SIGKILL)
                    await proc.wait()
                    child.last_exit = proc.returncode
                    return self._start_failed(child, error)
            # Stopped while it was getting ready: it never counted as started.
            if not child.stop_requested.is_set():
                if child.restarts:
                    self._log("restarted", service=child.spec.name, pid=proc.pid, restarts=child.restarts)
                else:
                    self._log("started", service=child.spec.name, pid=proc.pid)
                child.first_attempt.set()
            await first_completed(proc.wait(), child.stop_requested.wait())
            if proc.returncode is None:
                await self._terminate(child.spec.name, proc)
                self._log("stopped", service=child.spec.name, exit=_describe_exit(proc.returncode))
        except BaseException:
            # Cancelled instead of stopped (the owner's task was cancelled), or a hook's bug: no time
            # for a grace period, but the process must not outlive us.
            _signal_group(proc.pid, signal.SIGKILL)
            raise
        # The service may have left helpers in its process group; they die with it, as in a container.
        _signal_group(proc.pid, signal.SIGKILL)
        child.last_exit = proc.returncode
        return proc.returncode if proc.returncode is not None else "unknown"

    def _start_failed(self, child: _Child, error: str) -> str:
        self._log("start failed", level="error", service=child.spec.name, error=error)
        if not child.first_attempt.is_set():
            child.first_error = error
            child.first_attempt.set()
        return "start-failed"

    async def _wait_ready(self, child: _Child, hooks: StartHooks, proc: asyncio.subprocess.Process) -> str | None:
        """None once the hook says `proc` is ready, or a stop came first; else why it never will be."""
        ready = asyncio.ensure_future(hooks.ready(proc))
        stopping = asyncio.ensure_future(child.stop_requested.wait())
        try:
            await asyncio.wait([ready, stopping], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (ready, stopping):
                task.cancel()
            await asyncio.wait([ready, stopping])  # neither outlives this call
        if ready.cancelled():
            return None  # stopping: the caller's stop path terminates the process
        exc = ready.exception()
        if isinstance(exc, StartFailed):
            return str(exc)
        if exc is not None:
            raise exc
        return None

    async def _terminate(self, name: str, proc: asyncio.subprocess.Process) -> None:
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), self.grace)
        except TimeoutError:
            self._log("killing after grace period", level="warning", service=name, pid=proc.pid,
                      grace=f"{self.grace:g}s")
            _signal_group(proc.pid, signal.SIGKILL)
            await proc.wait()

    async def _spawn(self, spec: ProcessSpec) -> asyncio.subprocess.Process:
        env = {**os.environ, **spec.env} if spec.env else None
        if spec.log_path is None:
            return await asyncio.create_subprocess_exec(
                *spec.argv, stdin=subprocess.DEVNULL, env=env, cwd=spec.cwd, start_new_session=True)
        Path(spec.log_path).parent.mkdir(parents=True, exist_ok=True)
        with open(spec.log_path, "ab") as log:
            # Own session: Ctrl-C in the terminal reaches only the supervisor, which then stops the
            # children in order; and the child's pid names a process group we can signal whole.
            return await asyncio.create_subprocess_exec(
                *spec.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, cwd=spec.cwd, start_new_session=True)

    def _child(self, name: str) -> _Child:
        try:
            return self._children[name]
        except KeyError:
            raise KeyError(f"no supervised process named {name!r} (have: {', '.join(self._children)})") from None

    def _log(self, msg: str, level: str = "info", **fields: object) -> None:
        out = self._out or sys.stderr
        now = time.time()
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"
        parts = [f"ts={ts}", f"level={level}", f'msg="{msg}"']
        parts += [f"{k}={_logfmt(v)}" for k, v in fields.items()]
        print(" ".join(parts), file=out, flush=True)


async def first_completed(*aws: Awaitable[object]) -> None:
    """Wait for whichever finishes first; the others are cancelled and awaited, not left behind."""
    tasks = [asyncio.ensure_future(aw) for aw in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)


def _describe_exit(code: int | str) -> int | str:
    if isinstance(code, int) and code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return code
    return code


def _logfmt(value: object) -> str:
    s = str(value)
    if s == "" or any(c in s for c in ' "=\n\t'):
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return s


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass  # the whole group is already gone
