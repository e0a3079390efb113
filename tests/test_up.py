"""`flotilla up` end to end: a real `python -m flotilla.up`, its nats-server and services."""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest
from nats import micro
from nats.js.api import StorageType

from flotilla.natsserver import NatsServer, free_port
from flotilla.up import service_specs, wait_for_apiserver
from procs import running

READY = "Flotilla is up: NATS at "


def processes_mentioning(marker: str) -> list[int]:
    """Live processes whose command line or environment names `marker` (every child of `up` gets
    its state dir in XDG_STATE_HOME, nats-server in its config path)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            blob = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if marker.encode() in blob and running(int(entry.name)):
            found.append(int(entry.name))
    return found


class Up:
    def __init__(self, proc: asyncio.subprocess.Process, state_dir: Path, stderr: Path, config_home: Path) -> None:
        self.proc, self.state_dir, self.stderr, self.config_home = proc, state_dir, stderr, config_home
        self.stdout: list[str] = []

    @property
    def admin(self) -> dict[str, Any]:
        """nats.connect options of the admin `up` made (its NATS refuses anonymous clients)."""
        return {"user_credentials": str(self.state_dir / "auth" / "creds" / "admin.creds"),
                "inbox_prefix": "_INBOX.admin"}

    async def line_starting(self, prefix: str, timeout: float) -> str:
        async def read() -> str:
            assert self.proc.stdout is not None
            while True:
                raw = await self.proc.stdout.readline()
                if not raw:
                    raise AssertionError(f"`flotilla up` ended before printing {prefix!r}; stdout: {self.stdout}; "
                                         f"stderr: {self.stderr.read_text()[-3000:]}")
                self.stdout.append(raw.decode().rstrip("\n"))
                if self.stdout[-1].startswith(prefix):
                    return self.stdout[-1]
        return await asyncio.wait_for(read(), timeout)


@contextlib.asynccontextmanager
async def running_up(tmp_path: Path, *flags: str) -> AsyncIterator[Up]:
    """`python -m flotilla.up` with one node and one API server (plus `flags`); killed with all its
    processes on the way out, whatever happened."""
    # A unique directory name: it is how the test recognizes this `up`'s processes in /proc.
    state_dir = tmp_path / f"up-{uuid.uuid4().hex}"
    stderr = tmp_path / "up.stderr"
    config_home = tmp_path / "config"  # where `up` writes its contexts (never the user's own)
    with open(stderr, "wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "flotilla.up", "--nats-port", "0", "--state-dir", str(state_dir),
            "--nodes", "1", "--apiservers", "1", *flags,
            stdout=asyncio.subprocess.PIPE, stderr=err, start_new_session=True,
            env={**os.environ, "XDG_CONFIG_HOME": str(config_home)})
    try:
        yield Up(proc, state_dir, stderr, config_home)
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        for pid in processes_mentioning(str(state_dir)):  # whatever a failed test left behind
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
async def up(tmp_path: Path) -> AsyncIterator[Up]:
    async with running_up(tmp_path) as u:
        yield u


async def stop_and_check_nothing_is_left(up: Up) -> None:
    assert processes_mentioning(str(up.state_dir)), "the /proc scan should see the running suite"
    up.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(up.proc.wait(), 60) == 0, up.stderr.read_text()[-3000:]
    assert processes_mentioning(str(up.state_dir)) == []


async def test_up_starts_nats_and_stops_cleanly_on_sigterm(up: Up) -> None:
    line = await up.line_starting(READY, timeout=90)
    url = line.removeprefix(READY).split(",")[0]
    assert f"logs in {up.state_dir / 'logs'}" in line
    context = up.config_home / "flotilla" / "config"  # the CLI's default context, not an environment variable
    assert any(line.startswith("Context 'local' (admin) written to " + str(context)) for line in up.stdout), up.stdout
    assert (up.state_dir / "logs" / "nats.log").is_file()
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):  # its bus has auth on
        await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=3)

    nc = await nats.connect(url, **up.admin)
    try:
        # `up` printed READY after the API server answered: its state log is a JetStream file stream
        # kept in the state directory (a memory store or a server of its own would lose the cluster).
        info = await nc.jetstream().stream_info("KV_flotilla")
        assert info.config.storage == StorageType.FILE
        assert (up.state_dir / "nats" / "jetstream").is_dir()
    finally:
        await nc.close()
    await stop_and_check_nothing_is_left(up)


async def test_up_waits_for_the_apiserver_to_answer_ping(up: Up) -> None:
    line = await up.line_starting(READY, timeout=90)
    assert not any("has not answered" in out for out in up.stdout), up.stdout
    url = line.removeprefix(READY).split(",")[0]
    nc = await nats.connect(url, **up.admin)
    try:
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        await nc.publish("$SRV.PING", reply=inbox)
        names = []
        try:
            while True:
                msg = await sub.next_msg(timeout=1)
                if msg.data:
                    names.append(json.loads(msg.data)["name"])
        except nats.errors.TimeoutError:
            pass
        assert any(name.endswith("apiserver") for name in names), names
    finally:
        await nc.close()
    assert (up.state_dir / "logs" / "apiserver-1.log").is_file()
    await stop_and_check_nothing_is_left(up)


async def test_up_explains_a_taken_nats_port(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "flotilla.up", "--nats-port", str(port), "--state-dir", str(tmp_path / "s"),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 60)
        finally:
            if proc.returncode is None:
                os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
    assert proc.returncode == 1
    assert b"--nats-port 0" in err and b"address already in use" in err
    assert processes_mentioning(str(tmp_path / "s")) == []


def test_service_specs_name_every_process_and_flag() -> None:
    state = Path("/state")
    specs, skipped = service_specs("nats://127.0.0.1:5000", state, nodes=2, apiservers=2, log_level="debug",
                                   available=lambda service: service != "proxy")
    assert skipped == ["proxy"]
    assert [s.name for s in specs] == ["apiserver-1", "apiserver-2", "scheduler", "replicaset", "deployment", "gc",
                                       "endpoints", "nodelifecycle", "nodeagent-1", "nodeagent-2"]
    by_name = {s.name: s for s in specs}
    common = [sys.executable, "-m"]
    assert by_name["apiserver-2"].argv == [*common, "services.apiserver", "--nats-url", "nats://127.0.0.1:5000",
                                           "--log-level", "debug", "--identity", "apiserver-2"]
    assert by_name["nodeagent-1"].argv[-3:] == ["--node-name", "node-1", "--stop-pods-on-exit"]
    assert by_name["gc"].argv == [*common, "services.gc", "--nats-url", "nats://127.0.0.1:5000", "--log-level", "debug"]
    assert by_name["gc"].log_path == state / "logs" / "gc.log"
    assert by_name["gc"].env is not None and by_name["gc"].env["XDG_STATE_HOME"] == "/state/state"


async def test_wait_for_apiserver_needs_an_apiserver_to_answer(tmp_path: Path) -> None:
    async with NatsServer(tmp_path / "nats") as ns:
        stop = asyncio.Event()
        nc = await nats.connect(ns.url)
        try:
            other = await micro.add_service(nc, name="flotilla-scheduler", version="0.1.0")
            assert not await wait_for_apiserver(ns.url, 1.0, stop)  # another service's answer is not enough
            api = await micro.add_service(nc, name="flotilla-apiserver", version="0.1.0")
            assert await wait_for_apiserver(ns.url, 10.0, stop)
            await api.stop()
            await other.stop()
        finally:
            await nc.close()
        stop.set()
        assert not await wait_for_apiserver(ns.url, 30.0, stop)  # a stop ends the wait at once


async def test_wait_for_apiserver_tolerates_nats_not_being_there_yet(tmp_path: Path) -> None:
    stop = asyncio.Event()
    assert not await wait_for_apiserver(f"nats://127.0.0.1:{free_port()}", 1.0, stop)
