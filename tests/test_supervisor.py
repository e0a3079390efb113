"""The process supervisor behind `flotilla up`: real child processes, real signals."""
from __future__ import annotations

import asyncio
import io
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from flotilla.supervisor import ProcessSpec, StartFailed, Supervisor
from procs import running

SLEEPER = "import time; time.sleep(600)"
# Spawns a helper in its process group that ignores SIGTERM (as a careless service might leave
# behind), and prints the helper's pid.
WITH_HELPER = (
    "import subprocess, sys, time\n"
    "helper = subprocess.Popen([sys.executable, '-c', "
    "'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); time.sleep(600)'],"
    " stdout=subprocess.PIPE)\n"
    "helper.stdout.readline()\n"
    "print('helper', helper.pid, flush=True)\n"
    "time.sleep(600)\n"
)
IGNORES_SIGTERM = (
    "import signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ready', flush=True)\n"
    "time.sleep(600)\n"
)
# Prints when it started (CLOCK_MONOTONIC is shared by all processes), then exits with code 3.
STARTS_AND_EXITS = "import time; print('start', time.monotonic(), flush=True); raise SystemExit(3)"


def python(name: str, code: str, tmp_path: Path) -> ProcessSpec:
    return ProcessSpec(name, [sys.executable, "-c", code], log_path=tmp_path / f"{name}.log")


async def eventually(check: Callable[[], object], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


def log_text(tmp_path: Path, name: str) -> str:
    path = tmp_path / f"{name}.log"
    return path.read_text() if path.exists() else ""


async def test_children_run_in_their_own_sessions_with_logs(tmp_path: Path) -> None:
    code = "import os; print('hello from', os.getpid(), os.environ['GREETING'], flush=True); import time; time.sleep(600)"
    spec = ProcessSpec("greeter", [sys.executable, "-c", code], env={"GREETING": "ahoy"},
                       log_path=tmp_path / "logs" / "greeter.log")
    async with Supervisor([spec], out=io.StringIO()) as sup:
        await eventually(lambda: "ahoy" in log_text(tmp_path / "logs", "greeter"), what="the greeting")
        pid = sup.pid("greeter")
        assert pid is not None and os.getsid(pid) == pid
        assert f"hello from {pid} ahoy" in log_text(tmp_path / "logs", "greeter")
    assert not running(pid)


async def test_a_killed_child_is_restarted(tmp_path: Path) -> None:
    out = io.StringIO()
    async with Supervisor([python("victim", SLEEPER, tmp_path)], out=out, backoff_initial=0.1) as sup:
        await eventually(lambda: sup.pid("victim"), what="the first start")
        first = sup.pid("victim")
        assert first is not None
        sup.kill("victim")
        await eventually(lambda: sup.pid("victim") not in (None, first), what="a new pid")
        assert not running(first)
        assert sup.restarts("victim") == 1 and sup.status("victim").last_exit == -signal.SIGKILL
        assert re.search(r'level=info msg="restarting" service=victim exit=SIGKILL backoff=0.1s$', out.getvalue(), re.M)

        sup.kill("victim")  # and again: it keeps coming back
        await eventually(lambda: sup.restarts("victim") == 2 and sup.pid("victim"), what="the second restart")


async def test_a_child_that_keeps_exiting_backs_off_exponentially(tmp_path: Path) -> None:
    out = io.StringIO()
    async with Supervisor([python("flaky", STARTS_AND_EXITS, tmp_path)], out=out,
                          backoff_initial=0.2, backoff_max=0.8) as sup:
        await eventually(lambda: sup.restarts("flaky") >= 4, what="four restarts")
    starts = [float(line.split()[1]) for line in log_text(tmp_path, "flaky").splitlines() if line.startswith("start ")]
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    for gap, backoff in zip(gaps, [0.2, 0.4, 0.8, 0.8]):  # doubling, then capped
        assert gap >= backoff * 0.95, (gaps, backoff)
    logged = re.findall(r'msg="restarting" service=flaky exit=3 backoff=(\S+)', out.getvalue())
    assert logged[:4] == ["0.2s", "0.4s", "0.8s", "0.8s"]


async def test_back_off_resets_after_a_long_enough_run(tmp_path: Path) -> None:
    out = io.StringIO()
    code = "import time; time.sleep(0.4); raise SystemExit(1)"
    async with Supervisor([python("steady", code, tmp_path)], out=out,
                          backoff_initial=0.1, backoff_reset_after=0.3) as sup:
        await eventually(lambda: sup.restarts("steady") >= 3, what="three restarts")
    logged = re.findall(r'service=steady exit=1 backoff=(\S+)', out.getvalue())
    assert logged[:3] == ["0.1s", "0.1s", "0.1s"]


async def test_stop_leaves_nothing_running_not_even_helpers(tmp_path: Path) -> None:
    specs = [python(f"svc-{i}", WITH_HELPER, tmp_path) for i in range(3)]
    out = io.StringIO()
    # A grace period no test waits out: stopping within the generous bound below means the children
    # honoured SIGTERM and their helpers were killed with them, not after the grace period.
    sup = Supervisor(specs, out=out, grace=600)
    async with sup:
        await eventually(lambda: all("helper" in log_text(tmp_path, s.name) for s in specs), what="helpers")
        pids = [sup.pid(s.name) for s in specs]
        helpers = [int(log_text(tmp_path, s.name).split()[1]) for s in specs]
        assert all(p is not None and running(p) for p in pids) and all(map(running, helpers))
        await asyncio.wait_for(sup.stop(), 60)
        assert all(sup.pid(s.name) is None for s in specs)
    assert "killing after grace period" not in out.getvalue()
    for pid in [*pids, *helpers]:
        assert pid is not None
        await eventually(lambda: not running(pid), timeout=30, what=f"pid {pid} to be gone")


async def test_a_child_ignoring_sigterm_is_killed_after_the_grace_period(tmp_path: Path) -> None:
    out = io.StringIO()
    async with Supervisor([python("stubborn", IGNORES_SIGTERM, tmp_path)], out=out, grace=1.0) as sup:
        await eventually(lambda: "ready" in log_text(tmp_path, "stubborn"), what="SIGTERM to be ignored")
        pid = sup.pid("stubborn")
        assert pid is not None
        started = time.monotonic()
        await asyncio.wait_for(sup.stop(), 60)  # generous: what matters is that SIGKILL comes at all
        took = time.monotonic() - started
    # A lower bound only (load makes it longer, never shorter): the grace period was waited out.
    assert took >= 1.0, f"killed {took:.2f}s after stop(), before the 1 s grace period ran out"
    assert not running(pid)
    assert 'msg="killing after grace period" service=stubborn' in out.getvalue()


async def test_stop_one_child_and_keep_the_others(tmp_path: Path) -> None:
    async with Supervisor([python("a", SLEEPER, tmp_path), python("b", SLEEPER, tmp_path)],
                          out=io.StringIO()) as sup:
        await eventually(lambda: sup.pid("a") and sup.pid("b"), what="both started")
        a, b = sup.pid("a"), sup.pid("b")
        assert a is not None and b is not None
        await sup.stop_child("a")
        assert not running(a) and sup.status("a").stopped and sup.pid("a") is None
        await asyncio.sleep(0.3)  # longer than any back-off here: it must not come back
        assert sup.pid("a") is None and sup.restarts("a") == 0
        assert sup.pid("b") == b and running(b)
        with pytest.raises(KeyError, match="no supervised process named 'c'"):
            sup.kill("c")
    assert not running(b)


async def test_a_missing_executable_is_retried_not_fatal(tmp_path: Path) -> None:
    out = io.StringIO()
    specs = [ProcessSpec("ghost", [str(tmp_path / "no-such-program")], log_path=tmp_path / "ghost.log"),
             python("real", SLEEPER, tmp_path)]
    async with Supervisor(specs, out=out, backoff_initial=0.05) as sup:
        await eventually(lambda: sup.restarts("ghost") >= 2, what="retries")
        assert sup.pid("real") is not None
    assert 'msg="start failed" service=ghost' in out.getvalue()


async def test_cancelling_the_owner_still_kills_the_children(tmp_path: Path) -> None:
    sup = Supervisor([python("x", SLEEPER, tmp_path), python("y", SLEEPER, tmp_path)], out=io.StringIO())
    entered = asyncio.Event()

    async def owner() -> None:
        async with sup:
            entered.set()
            await asyncio.sleep(600)

    task = asyncio.create_task(owner())
    try:
        await entered.wait()
        await eventually(lambda: sup.pid("x") and sup.pid("y"), what="both started")
        pids = [sup.pid("x"), sup.pid("y")]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    for pid in pids:
        assert pid is not None
        await eventually(lambda: not running(pid), timeout=30, what=f"pid {pid} to be gone")


def test_duplicate_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="two processes are named 'a'"):
        Supervisor([python("a", SLEEPER, tmp_path), python("a", SLEEPER, tmp_path)])


# Prints "ready <pid>" after a moment, as a server that takes a while to serve.
GETS_READY = "import os, time; time.sleep(0.3); print('ready', os.getpid(), flush=True); time.sleep(600)"


class LogSaysReady:
    """StartHooks: counts the starts, and the child is ready once its log says `ready <its pid>`."""

    def __init__(self, log: Path, fail_before: int = 0) -> None:
        self.log, self.fail_before = log, fail_before
        self.prepared = 0

    async def before_start(self) -> None:
        self.prepared += 1
        if self.prepared <= self.fail_before:
            raise StartFailed(f"not yet ({self.prepared})")

    async def ready(self, proc: asyncio.subprocess.Process) -> None:
        while f"ready {proc.pid}" not in (self.log.read_text() if self.log.exists() else ""):
            if proc.returncode is not None:
                raise StartFailed(f"exited {proc.returncode} before it was ready")
            await asyncio.sleep(0.02)


async def test_start_hooks_run_before_every_start_and_started_means_ready(tmp_path: Path) -> None:
    out = io.StringIO()
    hooks = LogSaysReady(tmp_path / "server.log")
    async with Supervisor([python("server", GETS_READY, tmp_path)], out=out, hooks={"server": hooks},
                          backoff_initial=0.05) as sup:
        assert await sup.wait_started("server") is None
        first = sup.pid("server")
        assert first is not None and f"ready {first}" in log_text(tmp_path, "server")  # not before
        assert re.search(rf'msg="started" service=server pid={first}$', out.getvalue(), re.M)
        sup.kill("server")
        await eventually(lambda: re.search(r'msg="restarted" service=server pid=\d+ restarts=1$', out.getvalue(),
                                           re.M), what="the restarted line")
        second = sup.pid("server")
        assert second not in (None, first) and f"ready {second}" in log_text(tmp_path, "server")
        assert hooks.prepared == 2
    assert 'msg="restarting" service=server exit=SIGKILL backoff=0.05s' in out.getvalue()


async def test_a_failed_start_hook_is_reported_and_retried_with_back_off(tmp_path: Path) -> None:
    out = io.StringIO()
    hooks = LogSaysReady(tmp_path / "server.log", fail_before=2)
    async with Supervisor([python("server", GETS_READY, tmp_path)], out=out, hooks={"server": hooks},
                          backoff_initial=0.05) as sup:
        assert await sup.wait_started("server") == "not yet (1)"  # the first start's failure, at once
        await eventually(lambda: 'msg="restarted" service=server' in out.getvalue(), what="the third try to work")
        assert hooks.prepared == 3 and sup.restarts("server") == 2
    backoffs = re.findall(r'msg="restarting" service=server exit=start-failed backoff=(\S+)', out.getvalue())
    assert backoffs == ["0.05s", "0.1s"]


async def test_a_child_that_dies_before_it_is_ready_is_a_failed_start(tmp_path: Path) -> None:
    out = io.StringIO()
    async with Supervisor([python("server", STARTS_AND_EXITS, tmp_path)], out=out,
                          hooks={"server": LogSaysReady(tmp_path / "server.log")}, backoff_initial=30) as sup:
        assert await sup.wait_started("server") == "exited 3 before it was ready"
        assert sup.status("server").last_exit == 3 and sup.pid("server") is None
    assert 'msg="started"' not in out.getvalue()


async def test_stopping_a_child_that_is_not_ready_yet_kills_it_without_a_started_line(tmp_path: Path) -> None:
    out = io.StringIO()
    async with Supervisor([python("server", SLEEPER, tmp_path)], out=out, grace=600,
                          hooks={"server": LogSaysReady(tmp_path / "server.log")}) as sup:
        await eventually(lambda: sup.pid("server"), what="the spawn")
        pid = sup.pid("server")
        waiter = asyncio.create_task(sup.wait_started("server"))
        await asyncio.wait_for(sup.stop(), 60)  # SIGTERM, honoured well within the grace period
        assert await asyncio.wait_for(waiter, 30) == "stopped before it started"
    assert pid is not None and not running(pid)
    assert 'msg="started"' not in out.getvalue() and "killing after grace period" not in out.getvalue()
