"""The embedded nats-server: a real process, JetStream on disk, restarts that keep the data."""
from __future__ import annotations

import asyncio
import io
import os
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import nats
import pytest

from flotilla.natsserver import NatsServer, NatsServerError, find_binary, free_port
from flotilla.supervisor import Supervisor
from procs import running


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[NatsServer]:
    ns = NatsServer(tmp_path / "nats")
    try:
        await ns.astart()
        yield ns
    finally:
        await ns.astop()


async def kv_roundtrip_bucket(url: str, bucket: str = "things") -> None:
    nc = await nats.connect(url)
    try:
        kv = await nc.jetstream().create_key_value(bucket=bucket)
        await kv.put("pods.default.web-1", b'{"kind":"Pod"}')
        assert (await kv.get("pods.default.web-1")).value == b'{"kind":"Pod"}'
    finally:
        await nc.close()


async def kv_value(url: str, key: str, bucket: str = "things") -> bytes | None:
    nc = await nats.connect(url)
    try:
        kv = await nc.jetstream().key_value(bucket)
        return (await kv.get(key)).value
    finally:
        await nc.close()


def test_find_binary_and_free_port() -> None:
    binary = find_binary()
    assert os.access(binary, os.X_OK)
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))  # was indeed free


async def test_starts_on_a_port_of_its_own_in_its_own_session(server: NatsServer) -> None:
    assert server.running and server.pid is not None
    assert server.port > 0 and server.url == f"nats://127.0.0.1:{server.port}"
    assert os.getsid(server.pid) == server.pid  # Ctrl-C aimed at the caller does not reach it
    await kv_roundtrip_bucket(server.url)


async def test_stop_ends_the_process_and_frees_the_port(server: NatsServer) -> None:
    pid, port = server.pid, server.port
    assert pid is not None
    await server.astop()
    assert not server.running and not running(pid)
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0
    await server.astop()  # stopping twice is harmless


async def test_restart_keeps_port_and_jetstream_data(server: NatsServer) -> None:
    url, old_pid = server.url, server.pid
    await kv_roundtrip_bucket(url)
    await server.arestart()
    assert server.url == url and server.pid != old_pid
    assert await kv_value(url, "pods.default.web-1") == b'{"kind":"Pod"}'


async def test_data_survives_sigkill(server: NatsServer) -> None:
    await kv_roundtrip_bucket(server.url)
    pid = server.pid
    assert pid is not None
    server.kill()
    assert not running(pid)
    await server.astart()
    assert await kv_value(server.url, "pods.default.web-1") == b'{"kind":"Pod"}'


async def test_a_client_reconnects_across_a_restart(server: NatsServer) -> None:
    nc = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
    try:
        kv = await nc.jetstream().create_key_value(bucket="live")
        await kv.put("k", b"before")
        await server.arestart()  # in a thread: this client's loop keeps running meanwhile
        for _ in range(100):
            if nc.is_connected:
                break
            await asyncio.sleep(0.1)
        await kv.put("k", b"after")
        assert (await kv.get("k")).value == b"after"
    finally:
        await nc.close()


async def test_many_in_parallel(tmp_path: Path) -> None:
    servers = [NatsServer(tmp_path / f"nats-{i}", http_port=0) for i in range(4)]
    try:
        await asyncio.gather(*(s.astart() for s in servers))
        assert len({s.port for s in servers}) == 4
        assert all(s.monitor_url for s in servers)
        await asyncio.gather(*(kv_roundtrip_bucket(s.url) for s in servers))
    finally:
        await asyncio.gather(*(s.astop() for s in servers))


def test_sync_context_manager_with_a_temporary_store() -> None:
    with NatsServer() as ns:
        store, pid = ns.store_dir, ns.pid
        assert (store / "jetstream").is_dir()
        assert pid is not None and running(pid)
    assert not running(pid)
    assert not store.exists()  # a store it made itself is its own to remove


async def test_config_has_the_limits_and_extra_text(tmp_path: Path) -> None:
    async with NatsServer(tmp_path / "nats", extra_config="max_connections: 500") as ns:
        config = ns.config_file.read_text()
        assert "max_payload: 8MB" in config and "max_connections: 500" in config
        nc = await nats.connect(ns.url)
        try:
            assert nc.max_payload == 8 * 1024 * 1024
        finally:
            await nc.close()


def test_port_in_use_fails_fast_with_the_log_tail(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ns = NatsServer(tmp_path / "nats", port=port, ready_timeout=15)
        try:
            with pytest.raises(NatsServerError, match="address already in use"):
                ns.start()
        finally:
            ns.stop()
        assert not ns.running


async def test_under_a_supervisor_a_killed_server_comes_back_on_its_port_with_its_data(tmp_path: Path) -> None:
    ns = NatsServer(tmp_path / "nats")  # port 0: the first start picks it, restarts keep it
    out = io.StringIO()
    async with Supervisor([ns.process_spec()], hooks={"nats-server": ns}, out=out, backoff_initial=0.05) as sup:
        assert await sup.wait_started("nats-server") is None  # ready means JetStream answers
        url, first = ns.url, sup.pid("nats-server")
        assert first is not None and ns.port > 0
        await kv_roundtrip_bucket(url)
        sup.kill("nats-server")
        await eventually(lambda: sup.pid("nats-server") not in (None, first), "a new nats-server")
        await eventually(lambda: 'msg="restarted" service=nats-server' in out.getvalue(), "the restarted line")
        assert ns.url == url and not running(first)
        assert await kv_value(url, "pods.default.web-1") == b'{"kind":"Pod"}'
        assert 'msg="restarting" service=nats-server exit=SIGKILL' in out.getvalue()
        last = sup.pid("nats-server")
    assert last is not None and not running(last)
    assert 'msg="stopped" service=nats-server exit=0' in out.getvalue()  # SIGTERM: a clean JetStream flush


async def test_under_a_supervisor_a_taken_port_is_a_failed_start(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ns = NatsServer(tmp_path / "nats", port=taken.getsockname()[1], ready_timeout=15)
        async with Supervisor([ns.process_spec()], hooks={"nats-server": ns}, out=io.StringIO(),
                              backoff_initial=30) as sup:
            error = await sup.wait_started("nats-server")
            assert error is not None and "address already in use" in error
            assert sup.pid("nats-server") is None  # killed, and waiting out its back-off


async def eventually(check: Callable[[], object], what: str, timeout: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)
