"""`flotilla up` heals its embedded nats-server: a real `python -m flotilla.up`, and a real kill -9."""
from __future__ import annotations

import os
import re
import signal
from pathlib import Path
from typing import Any

import nats.errors
import pytest

from conftest import _wait_for as wait_for
from conftest import connect
from procs import running
from schemas import ApiError
from services.lib.client import Api
from test_up import READY, Up, processes_mentioning, stop_and_check_nothing_is_left, up  # noqa: F401 (fixture)

pytestmark = pytest.mark.timeout(300)


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except (FileNotFoundError, ProcessLookupError):
        return []


def nats_server_pids(up: Up) -> list[int]:
    return [pid for pid in processes_mentioning(str(up.state_dir))
            if Path(cmdline(pid)[0]).name == "nats-server"]


def service_pids(up: Up) -> dict[int, list[str]]:
    """The service processes of this `up` (`python -m services.X ...`): pid -> argv."""
    found = {}
    for pid in processes_mentioning(str(up.state_dir)):
        argv = cmdline(pid)
        if any(a.startswith("services.") for a in argv[1:3]):
            found[pid] = argv
    return found


async def create_namespace(api: Api, name: str) -> Any:
    try:
        return await api.namespaces.create({"metadata": {"name": name}})
    except (ApiError, nats.errors.Error) as e:  # the bus or the API server is not back yet
        if isinstance(e, ApiError) and e.reason == "AlreadyExists":
            return True  # an earlier attempt went through although its reply was lost
        return None


async def namespace_exists(api: Api, name: str) -> bool:
    try:
        return (await api.namespaces.get(name)).metadata.name == name
    except (ApiError, nats.errors.Error):
        return False


async def test_a_killed_nats_server_is_restarted_with_its_store_and_services_reconnect(up: Up) -> None:
    line = await up.line_starting(READY, timeout=120)
    url = line.removeprefix(READY).split(",")[0]
    nc = await connect(url, None, reconnect_time_wait=0.2, **up.admin)
    try:
        api = Api(nc, timeout=5, retries=2)
        assert await wait_for(lambda: create_namespace(api, "before-the-crash"), timeout=60,
                              what="a namespace to be created before the crash")
        [old_nats] = nats_server_pids(up)
        services = service_pids(up)
        assert len(services) >= 3, services  # at least the API server, a controller and the node agent
        logs = up.state_dir / "logs"
        watched = ("apiserver-1", "scheduler", "nodeagent-1")
        for name in watched:  # connected to the bus already (else it could not *re*connect)
            await wait_for(lambda: re.search(r"msg=started .*nats=", (logs / f"{name}.log").read_text()),
                           timeout=60, what=f"{name} to connect")
        reconnects_before = {name: (logs / f"{name}.log").read_text().count('msg="nats reconnected"')
                             for name in watched}

        os.kill(old_nats, signal.SIGKILL)

        def new_nats() -> int | None:
            pids = nats_server_pids(up)
            return pids[0] if pids and pids[0] != old_nats else None

        new = await wait_for(new_nats, timeout=60, what="a new nats-server process")
        restarted = f'msg="restarted" service=nats-server pid={new} '
        console = await wait_for(lambda: restarted in (text := up.stderr.read_text()) and text,
                                 timeout=60, what="the console to say nats-server restarted")
        assert re.search(r'msg="restarting" service=nats-server exit=SIGKILL backoff=\S+', console), console[-3000:]
        assert not running(old_nats)

        # The same URL answers (same port), with the object written before the crash (same store).
        assert await wait_for(lambda: namespace_exists(api, "before-the-crash"), timeout=90,
                              what="the namespace created before the crash to be read back")
        assert await wait_for(lambda: create_namespace(api, "after-the-crash"), timeout=90,
                              what="a namespace to be created after the crash")
        assert await namespace_exists(api, "after-the-crash")

        # The services rode it out on their own reconnects: none of them was restarted.
        for name, before in reconnects_before.items():
            await wait_for(lambda: (logs / f"{name}.log").read_text().count('msg="nats reconnected"') > before,
                           timeout=60, what=f"{name} to reconnect")
        assert service_pids(up) == services
        assert not re.search(r'msg="restarting" service=(?!nats-server)', up.stderr.read_text()), \
            up.stderr.read_text()[-3000:]
    finally:
        await nc.close()
    await stop_and_check_nothing_is_left(up)  # exit code 0, no process left
    assert up.proc.stdout is not None
    assert "Flotilla stopped" in (await up.proc.stdout.read()).decode()
    # Services first, then NATS (they may still talk to it while they stop); NATS by SIGTERM, not a kill.
    stopped = re.findall(r'msg="stopped" service=(\S+) exit=(\S+)', up.stderr.read_text())
    assert stopped[-1] == ("nats-server", "0") and len(stopped) == len(services) + 1, stopped
