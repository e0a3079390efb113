"""The compose deployment: compose.yaml is valid and names real services, and the NATS config
makes the API server the only writer of the state log (checked against a real nats-server)."""
from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nats
import nats.errors
import nats.js.errors
import pytest
import yaml

from flotilla.natsserver import find_binary, free_port
from requirements import need

ROOT = Path(__file__).resolve().parent.parent
PASSWORDS = {"FLOTILLA_APISERVER_PASSWORD": "api-pw", "FLOTILLA_CONTROLLER_PASSWORD": "ctl-pw",
             "FLOTILLA_NODE_PASSWORD": "node-pw"}


def test_compose_names_real_services() -> None:
    doc = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = doc["services"]
    assert "nats" in services
    apiservers = [n for n in services if n.startswith("apiserver")]
    assert len(apiservers) >= 2, "the API server runs as two replicas"
    for name, svc in services.items():
        if name == "nats":
            continue
        module = svc["command"][0]
        assert importlib.util.find_spec(module) is not None, f"{name}: no module {module}"
        assert importlib.util.find_spec(module + ".__main__") is not None, f"{name}: {module} is not runnable"
    assert (ROOT / "deploy" / "Dockerfile").exists()


def test_docker_compose_config_accepts_it() -> None:
    need(shutil.which("docker-compose") is not None, "docker-compose is not installed (.ci/run installs it)")
    out = subprocess.run(["docker-compose", "-f", str(ROOT / "compose.yaml"), "config", "-q"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr


def test_nats_config_is_valid() -> None:
    out = subprocess.run([find_binary(), "-t", "-c", str(ROOT / "deploy" / "nats" / "nats-server.conf")],
                         capture_output=True, text=True, env={**os.environ, **PASSWORDS})
    assert out.returncode == 0, out.stderr + out.stdout


@pytest.fixture
def secured_nats(tmp_path: Path):
    """nats-server running the compose config, moved to a free port and a temporary store."""
    port = free_port()
    conf = (ROOT / "deploy" / "nats" / "nats-server.conf").read_text()
    conf = conf.replace("port: 4222", f"port: {port}\nhost: 127.0.0.1").replace("http_port: 8222\n", "")
    conf = conf.replace("/data/jetstream", str(tmp_path / "js"))
    (tmp_path / "nats.conf").write_text(conf)
    log = open(tmp_path / "nats.log", "wb")
    proc = subprocess.Popen([find_binary(), "-c", str(tmp_path / "nats.conf")], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, **PASSWORDS}, start_new_session=True)
    procs = [proc]
    try:
        deadline = time.monotonic() + 15
        while b"Server is ready" not in (tmp_path / "nats.log").read_bytes():
            assert time.monotonic() < deadline, (tmp_path / "nats.log").read_text()
            assert proc.poll() is None, (tmp_path / "nats.log").read_text()
            time.sleep(0.1)
        yield port, tmp_path, procs
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        log.close()


async def _connect(port: int, user: str, password: str) -> nats.NATS:
    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    nc = await nats.connect(f"nats://127.0.0.1:{port}", user=user, password=password, error_cb=on_error,
                            allow_reconnect=False)
    nc.flotilla_errors = errors  # type: ignore[attr-defined]
    return nc


async def _wait_api(nc: nats.NATS) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            msg = await nc.request("flo.api.v1.namespaces.get", b'{"name":"default"}', timeout=1)
            if msg.data.startswith(b'{"kind":"Namespace"'):
                return
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            pass
        assert time.monotonic() < deadline, "API server did not come up"
        await asyncio.sleep(0.2)


async def test_only_the_apiserver_writes_the_state_log(secured_nats) -> None:
    port, tmp_path, procs = secured_nats
    env = {**os.environ, "FLOTILLA_NATS_USER": "apiserver", "FLOTILLA_NATS_PASSWORD": PASSWORDS["FLOTILLA_APISERVER_PASSWORD"]}
    with open(tmp_path / "api.log", "wb") as out:
        procs.append(subprocess.Popen([sys.executable, "-m", "services.apiserver", "--nats-url", f"nats://127.0.0.1:{port}"],
                                      stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=ROOT))
    ctl = await _connect(port, "controller", PASSWORDS["FLOTILLA_CONTROLLER_PASSWORD"])
    node = await _connect(port, "node-1", PASSWORDS["FLOTILLA_NODE_PASSWORD"])
    try:
        await _wait_api(ctl)
        # A controller uses the API ...
        pod = b'{"metadata":{"name":"web-1"},"spec":{"containers":[{"name":"c","image":"i"}]}}'
        created = await ctl.request("flo.api.v1.pods.create", pod, timeout=5)
        assert created.data.startswith(b'{"kind":"Pod"'), created.data
        # ... may read the state log with plain JetStream reads, as `nats kv get` does ...
        js = ctl.jetstream()
        kv = await js.key_value("flotilla")
        entry = await kv.get("pods.default.web-1")
        assert b'"name":"web-1"' in entry.value
        # ... but may not write it: the server refuses the publish and nothing is stored.
        with pytest.raises((nats.errors.TimeoutError, nats.js.errors.NoStreamResponseError, nats.errors.NoRespondersError)):
            await js.publish("$KV.flotilla.pods.default.evil", b"{}", timeout=1)
        await asyncio.sleep(0.3)
        assert any("permissions violation" in str(e).lower() for e in ctl.flotilla_errors), ctl.flotilla_errors  # type: ignore[attr-defined]
        with pytest.raises(nats.js.errors.KeyNotFoundError):
            await kv.get("pods.default.evil")
        # A node agent may use only its node-scoped subjects.
        ok = await node.request("flo.api.v1.node.node-1.namespaces.get", b'{"name":"default"}', timeout=5)
        assert ok.data.startswith(b'{"kind":"Namespace"'), ok.data
        with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
            await node.request("flo.api.v1.pods.create", pod.replace(b"web-1", b"web-2"), timeout=1)
        with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
            await node.request("flo.api.v1.node.node-2.namespaces.get", b'{"name":"default"}', timeout=1)
        # and the API server applies the node restriction on top: node-1 cannot read node-2's pods.
        denied = await node.request("flo.api.v1.node.node-1.pods.list", b'{"fieldSelector":"spec.nodeName=node-2"}', timeout=5)
        assert b'"reason":"Forbidden"' in denied.data
    finally:
        await ctl.close()
        await node.close()
