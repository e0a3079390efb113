"""`flotilla chaos --attach` against a running `flotilla up`: it finds the suite's processes in /proc
(by `-m services.<name>` and the NATS URL) and its nats-server (by its port), kills, pauses and
restarts them, and exits 0 with a clean report."""
from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_chaos_attached_to_flotilla_up(tmp_path: Path) -> None:
    state = tmp_path / "up"
    up = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "flotilla.cli", "up", "--nats-port", "0", "--state-dir", str(state), "--nodes", "2",
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "config")})
    output = b""
    try:
        async with asyncio.timeout(90):
            while not (m := re.search(rb"nats://127\.0\.0\.1:\d+", output)) or b"Ctrl-C" not in output:
                chunk = await up.stdout.read(4096)
                assert chunk, f"flotilla up ended early:\n{output.decode(errors='replace')}"
                output += chunk
        url = m.group(0).decode()
        report = tmp_path / "report.json"
        chaos = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "flotilla.cli", "chaos", "--attach", "--nats-url", url, "--state-dir", str(state),
            # Seed 0 draws a pause, a NATS restart (`flotilla up` restarts its nats-server) and a kill.
            "--seed", "0", "--duration", "40", "--kinds", "kill,pause,nats-restart", "--settle", "5",
            "--report", str(report),
            cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            # `up`'s NATS has auth on: the harness connects as the admin `up` made
            env={**os.environ, "FLOTILLA_NATS_CREDS": str(state / "auth" / "creds" / "admin.creds")})
        async with asyncio.timeout(280):
            out, _ = await chaos.communicate()
        text = out.decode(errors="replace")
        assert chaos.returncode == 0, text
        data = json.loads(report.read_text())
        assert data["ok"] and data["mode"] == "attach", text
        assert data["faults"] and all(f["converged"] and f["pid"] for f in data["faults"]), text
        assert {f["kind"] for f in data["faults"]} == {"kill", "pause", "nats-restart"}, text
        assert {f["process"] for f in data["faults"]} <= {"nats-server",
            "apiserver-1", "apiserver-2", "scheduler", "replicaset", "deployment", "gc", "endpoints",
            "nodelifecycle", "proxy", "nodeagent-1", "nodeagent-2"}, text
    finally:
        if up.returncode is None:
            up.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(40):
                    await up.communicate()
            except TimeoutError:
                up.kill()
                await up.wait()
