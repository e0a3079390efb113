"""The one way a test finds and runs the official `nats` CLI (natscli, pinned at v0.5.0).

`make test` / `make up` install it into .venv/bin (Makefile target nats-cli); a `nats` on PATH is
the fallback for a user who installed it by hand. Every run gets a clean environment (no NATS_* or
FLOTILLA_* from the developer's shell: a stray NATS_URL or NATS_CONTEXT would point the CLI at
another cluster), the caller's XDG_CONFIG_HOME (where `flotilla up` wrote the `flotilla-<name>`
contexts), and a timeout: a CLI that waits for ever would hang the suite instead of failing it."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from requirements import need

VERSION = "v0.5.0"
PROJECT_BIN = Path(__file__).resolve().parent.parent / ".venv" / "bin"


def nats_binary() -> str | None:
    """The project's pinned CLI (.venv/bin/nats), else a `nats` on PATH, else None."""
    own = PROJECT_BIN / "nats"
    if os.access(own, os.X_OK):
        return str(own)
    return shutil.which("nats")


def need_nats() -> str:
    """The CLI's path; without it the test fails under CI=true (make test installs it) and skips elsewhere."""
    found = nats_binary()
    need(found is not None, f"the nats CLI {VERSION} (`make nats-cli`, or "
                            f"`go install github.com/nats-io/natscli/nats@{VERSION}`)")
    assert found is not None
    return found


def clean_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """os.environ without NATS_* / FLOTILLA_*, plus `env` (which should name XDG_CONFIG_HOME)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "FLOTILLA_"))}
    return {**base, **(env or {})}


def run_nats(args: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 60,
             stdin: str | bytes | None = None) -> subprocess.CompletedProcess[str]:
    """`nats *args` to completion (or TimeoutExpired after `timeout` seconds: never a hang)."""
    data = stdin.encode() if isinstance(stdin, str) else stdin
    proc = subprocess.run([need_nats(), *args], input=data, capture_output=True, env=clean_env(env),
                          timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(errors="replace"),
                                       proc.stderr.decode(errors="replace"))


class Streaming:
    """A long-running `nats` command (`nats sub`, `nats kv watch`) whose stdout is read line by line
    on a thread; until() waits for a predicate over the lines so far. Stopped (SIGKILL) on exit."""

    def __init__(self, args: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        self.proc = subprocess.Popen([need_nats(), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=clean_env(env), start_new_session=True)
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._changed:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def until(self, predicate: Callable[[list[str]], bool], timeout: float = 60) -> list[str]:
        """The lines once `predicate(lines)` holds; AssertionError (with the output) on timeout or exit."""
        with self._changed:
            ok = self._changed.wait_for(lambda: predicate(self.lines) or not self._reader.is_alive(), timeout)
            if ok and predicate(self.lines):
                return list(self.lines)
            state = "exited" if not self._reader.is_alive() else f"still waiting after {timeout}s"
            raise AssertionError(f"`nats {' '.join(map(str, self.proc.args[1:]))}` {state}; output:\n"
                                 + "\n".join(self.lines[-60:]))

    def until_probed(self, probe: str, publish: Callable[[], object], timeout: float = 60) -> None:
        """For `nats sub A B … probe`: wait until the server has the subscriptions. `nats sub` prints
        "Subscribing on" before its SUBs reach the server, so a reply published right after can go by
        unheard; a message on the last subject (`publish()` sends one; repeated until one arrives)
        proves every earlier subscription is in place: the server handles a connection's SUBs in order."""
        seen = f'Received on "{probe}"'
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            publish()
            try:
                self.until(lambda lines: any(seen in line for line in lines), timeout=2)
                return
            except AssertionError:
                if not self._reader.is_alive():
                    raise
        raise AssertionError(f"no probe on {probe} within {timeout}s; output:\n" + "\n".join(self.lines[-60:]))

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._reader.join(timeout=30)

    def __enter__(self) -> Streaming:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["VERSION", "Streaming", "clean_env", "nats_binary", "need_nats", "run_nats"]
