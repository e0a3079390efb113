"""`flotilla up` secures its bus: NATS auth with a credential per component, node and user, the admin
context where the CLI finds it by default, nats CLI contexts, and TLS (on by default beyond loopback)."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import nats.errors
import pytest
import yaml

from flotilla.up import tls_by_default
from services.lib.natsjwt import principal_of_creds
from services.lib.tls import client_ssl_context
from test_up import READY, Up, running_up, stop_and_check_nothing_is_left

REPO = Path(__file__).resolve().parent.parent


def test_tls_is_on_by_default_only_beyond_loopback() -> None:
    assert not tls_by_default("127.0.0.1") and not tls_by_default("127.0.0.5") and not tls_by_default("::1")
    assert tls_by_default("0.0.0.0") and tls_by_default("10.1.2.3") and tls_by_default("::")


@pytest.fixture
async def tls_up(tmp_path: Path) -> AsyncIterator[Up]:
    async with running_up(tmp_path, "--tls", "--name", "sec") as u:
        yield u


def cli(up: Up, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FLOTILLA_", "NATS_"))}
    return subprocess.run([sys.executable, "-m", "flotilla.cli", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=60, env={**clean, "XDG_CONFIG_HOME": str(up.config_home), **(env or {})})


async def test_up_with_tls_writes_contexts_the_cli_and_nats_tooling_use(tls_up: Up) -> None:
    up = tls_up
    line = await up.line_starting(READY, timeout=120)
    url = line.removeprefix(READY).split(",")[0]
    assert url.startswith("tls://127.0.0.1:"), line
    printed = "\n".join(up.stdout)
    config = up.config_home / "flotilla" / "config"
    assert str(config) in printed and "nats --context flotilla-sec" in printed, printed

    # The flotilla context: current, the admin's credentials, the cluster's CA.
    doc = yaml.safe_load(config.read_text())
    assert doc["current-context"] == "sec"
    [ctx] = [c for c in doc["contexts"] if c["name"] == "sec"]
    assert ctx["server"] == url and principal_of_creds(ctx["creds"]) == "admin"
    assert Path(ctx["ca"]).is_file()
    assert oct(Path(ctx["creds"]).stat().st_mode & 0o777) == "0o600"

    # The nats CLI's contexts: admin and read-only, with the inbox prefix their permissions allow.
    nats_dir = up.config_home / "nats" / "context"
    admin = json.loads((nats_dir / "flotilla-sec.json").read_text())
    reader = json.loads((nats_dir / "flotilla-sec-reader.json").read_text())
    assert admin["url"] == url and admin["ca"] == ctx["ca"] and admin["inbox_prefix"] == "_INBOX.admin"
    assert principal_of_creds(reader["creds"]) == "reader" and reader["inbox_prefix"] == "_INBOX.reader"

    # The CLI finds the context by default: no URL, no credentials in the environment.
    got = await asyncio.to_thread(cli, up, "get", "nodes")
    assert got.returncode == 0 and "node-1" in got.stdout, got.stderr

    # TLS is required, and the server is checked against the cluster's CA.
    plain = url.replace("tls://", "nats://")
    with pytest.raises((nats.errors.Error, OSError)):
        await nats.connect(plain, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=3,
                           user_credentials=ctx["creds"])
    with pytest.raises((nats.errors.Error, OSError)):  # the system's CAs do not vouch for it
        await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=3,
                           user_credentials=ctx["creds"])
    nc = await nats.connect(url, user_credentials=reader["creds"], inbox_prefix="_INBOX.reader",
                            tls=client_ssl_context(ctx["ca"]), allow_reconnect=False)
    try:  # the reader reads the state log over TLS
        kv = await nc.jetstream().key_value("flotilla")
        assert json.loads((await kv.get("namespaces._.default")).value)["metadata"]["name"] == "default"
    finally:
        await nc.close()
    await stop_and_check_nothing_is_left(up)
