"""Service registration (`$SRV.PING`) survives NATS going away while a service starts."""
from __future__ import annotations

import asyncio
import json
import os
import signal

import pytest

from conftest import connect
from services.lib.registry import register


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_registration_cut_off_by_a_nats_restart_answers_once_nats_is_back(nats_server) -> None:
    """The framework subscribes and then flushes (PING, wait for PONG). Here NATS takes the PING and
    dies without answering (stopped, then killed and started again), as in a restart that falls in
    the middle of a service's start: nats-py's flush then times out after 10 s. That used to kill the
    service; the subscriptions are in place all the same, and answer once NATS is back."""
    nc = await connect(nats_server.url)
    try:
        os.kill(nats_server.pid, signal.SIGSTOP)  # takes the PING, never answers it
        registering = asyncio.ensure_future(register(nc, "probe", "probe-1"))
        await asyncio.sleep(0.5)
        await asyncio.to_thread(nats_server.kill)
        await nats_server.astart()
        svc = await asyncio.wait_for(registering, 20)
        checker = await connect(nats_server.url)
        try:
            for _ in range(100):
                try:
                    reply = await checker.request("$SRV.PING.flotilla-probe", b"", timeout=0.5)
                    break
                except Exception:  # nc still reconnecting: ask again
                    await asyncio.sleep(0.1)
            else:
                raise AssertionError("the service never answered $SRV.PING after NATS came back")
            assert json.loads(reply.data)["metadata"]["identity"] == "probe-1"
        finally:
            await checker.close()
        await svc.stop()
    finally:
        await nc.close()
