"""`flotilla up --demo` end to end, as `make up` runs it: every service comes up, the demo Deployment's
pods run as real processes and answer HTTP on their pod IPs, and Ctrl-C (SIGTERM) leaves nothing."""
from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import urllib.request
from pathlib import Path

import nats
import pytest

from services.lib.client import Api
from services.lib.podutil import is_ready

REPO = Path(__file__).resolve().parent.parent


def processes_under(folder: Path) -> list[int]:
    """Processes whose command line, environment or working directory mention `folder`."""
    found = []
    mark = str(folder)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            text = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
            cwd = os.readlink(entry / "cwd")
        except (OSError, PermissionError):
            continue
        if mark.encode() in text or cwd.startswith(mark):
            found.append(int(entry.name))
    return found


@pytest.mark.slow
async def test_up_demo_runs_the_demo_app_and_stops_everything(tmp_path: Path) -> None:
    state = tmp_path / "up"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "flotilla.cli", "up", "--nats-port", "0", "--state-dir", str(state), "--nodes", "2",
        "--demo", cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "config")})
    output = b""
    try:
        async with asyncio.timeout(60):
            while not (m := re.search(rb"nats://127\.0\.0\.1:\d+", output)) or b"Ctrl-C" not in output:
                chunk = await proc.stdout.read(4096)
                assert chunk, f"flotilla up ended early:\n{output.decode(errors='replace')}"
                output += chunk
        url = m.group(0).decode()
        nc = await nats.connect(url, user_credentials=str(state / "auth" / "creds" / "admin.creds"),
                                inbox_prefix="_INBOX.admin")
        api = Api(nc)
        try:
            async def demo_ready():
                pods = [p for p in (await api.pods.list(label_selector="app=hello")).items
                        if not p.metadata.deletion_timestamp]
                return pods if len(pods) == 2 and all(is_ready(p) for p in pods) else None
            pods = None
            async with asyncio.timeout(90):
                while pods is None:
                    pods = await demo_ready()
                    await asyncio.sleep(0.5)
            assert {p.spec.node_name for p in pods} <= {"node-1", "node-2"}
            for pod in pods:
                body = await asyncio.to_thread(lambda ip=pod.status.pod_ip: urllib.request.urlopen(
                    f"http://{ip}:8080/", timeout=5).read())
                assert b"Directory listing" in body
            d = await api.deployments.get("hello")
            assert (d.status.available_replicas or 0) == 2
            # The demo's Service answers on its ClusterIP (port 80 -> 8080 of a ready pod).
            vip = (await api.services.get("hello")).spec.cluster_ip
            assert vip and vip.startswith("127.128."), vip

            def through_vip() -> bytes | None:
                try:
                    return urllib.request.urlopen(f"http://{vip}:80/", timeout=5).read()
                except OSError:  # the proxy has not seen the ready endpoints yet
                    return None

            body = None
            async with asyncio.timeout(30):
                while body is None:
                    body = await asyncio.to_thread(through_vip)
                    if body is None:
                        await asyncio.sleep(0.5)
            assert b"Directory listing" in body
        finally:
            await nc.close()
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(40):
            assert await proc.wait() == 0
        await asyncio.sleep(0.5)
        assert processes_under(tmp_path) == [], "processes outlived flotilla up"
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        for pid in processes_under(tmp_path):
            os.kill(pid, signal.SIGKILL)
