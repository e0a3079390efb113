"""`flotilla logs` end to end: a real pod on a real node agent, its output read back through the CLI."""
from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from conftest import cli_env

REPO = Path(__file__).resolve().parent.parent


def flotilla(url: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flotilla.cli", "--nats-url", url, *args],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO, env=cli_env(url))


async def test_logs_through_the_cli(api, start_service, nats_url, wait_for) -> None:
    start_service("nodeagent", "--node-name", "log-node", "--stop-pods-on-exit", "--heartbeat-seconds", "1")
    script = "import sys,time\nfor i in range(5): print('line', i, flush=True)\nprint('oops', file=sys.stderr, flush=True)\ntime.sleep(3)\nprint('late', flush=True)\ntime.sleep(3600)"
    await api.pods.create({"metadata": {"name": "talker"}, "spec": {
        "nodeName": "log-node", "terminationGracePeriodSeconds": 1,
        "containers": [{"name": "main", "image": "py", "command": ["python3", "-c", script]}]}})

    async def running():
        pod = await api.pods.get("talker")
        return pod.status.phase == "Running"
    await wait_for(running, 30, "the pod running")
    await wait_for(lambda: "line 4" in flotilla(nats_url, "logs", "talker").stdout, 15, "the first lines logged")
    out = await asyncio.to_thread(flotilla, nats_url, "logs", "talker")
    assert out.returncode == 0, out.stderr
    assert [line for line in out.stdout.splitlines() if line.startswith("line")] == [f"line {i}" for i in range(5)]
    assert "oops" in out.stdout  # stderr is captured too
    tail = await asyncio.to_thread(flotilla, nats_url, "logs", "talker", "--tail", "1")
    assert tail.stdout.strip().splitlines() == ["oops"], tail.stdout
    # -f prints what comes later, until we stop it.
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "flotilla.cli", "--nats-url", nats_url,
                                                "logs", "-f", "talker", stdout=asyncio.subprocess.PIPE, cwd=REPO,
                                                env=cli_env(nats_url))
    try:
        seen = b""
        async with asyncio.timeout(20):
            while b"late" not in seen:
                chunk = await proc.stdout.read(1024)
                assert chunk, "flotilla logs -f ended early"
                seen += chunk
    finally:
        proc.kill()
        await proc.wait()
    missing = await asyncio.to_thread(flotilla, nats_url, "logs", "nope")
    assert missing.returncode == 1 and 'pods "nope" not found' in missing.stderr
