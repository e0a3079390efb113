"""Service registration: `$SRV.PING/INFO/STATS` as the real `nats micro` CLI shows them (version,
identity and principal metadata on every service; the API server's endpoints, one per resource, with
request counters that move), and registration surviving NATS going away while a service starts."""
from __future__ import annotations

import asyncio
import json
import os
import signal

import pytest

from conftest import connect, creds_for
from natscli import need_nats, run_nats
from schemas import RESOURCES
from services.lib.registry import VERSION, ServedEndpoint, register


def micro(url: str, *args: str) -> dict:
    """`nats micro … --json` as the admin (discovery, `$SRV.>`, is open to every identity)."""
    result = run_nats(["micro", *args, "--json", "-s", url, "--creds", creds_for(url, "admin") or ""], timeout=60)
    assert result.returncode == 0, f"nats micro {' '.join(args)}: {result.stdout}\n{result.stderr}"
    return json.loads(result.stdout)


async def test_micro_info_shows_the_api_servers_endpoints_and_stats_count_its_requests(
        nats_server, apiserver, connect_api, wait_for) -> None:
    need_nats()
    await apiserver(1)
    info = micro(nats_server.url, "info", "flotilla-apiserver")["info"]
    meta = info["metadata"]
    assert (meta["version"], meta["principal"], meta["bucket"]) == (VERSION, "apiserver", "flotilla"), meta
    assert meta["identity"].startswith("test-apiserver-")
    endpoints = {e["name"]: e for e in info["endpoints"]}
    assert set(endpoints) == set(RESOURCES), endpoints
    pods = endpoints["pods"]
    assert (pods["subject"], pods["queue_group"]) == ("flo.api.v1.pods.*", "flotilla-apiserver")
    assert "bind" in pods["metadata"]["verbs"] and pods["metadata"]["node-subject"] == "flo.api.v1.node.*.pods.*"

    def counts() -> dict[str, int]:
        (stats,) = micro(nats_server.url, "stats", "flotilla-apiserver")  # one list entry per instance
        return {e["name"]: e["num_requests"] for e in stats["endpoints"]}

    start = counts()
    admin = await connect_api()
    node = await connect_api(node="n1")
    for i in range(5):
        await admin.pods.list()
    await admin.nodes.list()
    await node.pods.list(field_selector="spec.nodeName=n1")  # a node-scoped subject counts too
    await wait_for(lambda: counts()["pods"] >= start["pods"] + 6, 30, "6 more pods requests in $SRV.STATS")
    assert counts()["nodes"] >= start["nodes"] + 1
    (stats,) = micro(nats_server.url, "stats", "flotilla-apiserver")
    pods_data = next(e for e in stats["endpoints"] if e["name"] == "pods")["data"]
    assert pods_data["list"] >= 6, pods_data  # each verb counted apart: which calls a resource gets
    await admin.nc.request("flo.api.v1.pods.frobnicate", b"{}", timeout=10)  # 400: counted, as "other"
    (stats,) = micro(nats_server.url, "stats", "flotilla-apiserver")
    assert next(e for e in stats["endpoints"] if e["name"] == "pods")["data"].get("other") == 1


async def test_api_server_stats_count_throttled_requests_as_errors(nats_server, apiserver) -> None:
    need_nats()
    await apiserver(1, "--rate-limit-qps", "0.2", "--rate-limit-burst", "3")
    nc = await connect(nats_server.url)
    try:
        codes = [json.loads((await nc.request("flo.api.v1.pods.list", b"{}", timeout=10)).data).get("code")
                 for _ in range(6)]
    finally:
        await nc.close()
    throttled = codes.count(429)
    assert throttled >= 2, codes
    (stats,) = micro(nats_server.url, "stats", "flotilla-apiserver")
    pods = next(e for e in stats["endpoints"] if e["name"] == "pods")
    assert pods["num_requests"] == 6 and pods["num_errors"] == throttled, pods
    assert pods["last_error"].startswith("429 TooManyRequests"), pods


async def test_served_endpoint_errors_and_times_reach_stats(nats_server) -> None:
    need_nats()
    nc = await connect(nats_server.url)
    try:
        served = ServedEndpoint("things", "probe.things.*", "probe")
        svc = await register(nc, "probe", "probe-1", principal="admin", endpoints=[served])
        served.done(0)
        served.done(0, "503 ServiceUnavailable: state log unavailable")
        # On a thread: this test's event loop is the service that answers.
        (stats,) = await asyncio.to_thread(micro, nats_server.url, "stats", "flotilla-probe")
        (things,) = stats["endpoints"]
        assert (things["name"], things["num_requests"], things["num_errors"]) == ("things", 2, 1), things
        assert things["last_error"] == "503 ServiceUnavailable: state log unavailable"
        assert things["processing_time"] > 0 and things["average_processing_time"] > 0
        await svc.stop()
    finally:
        await nc.close()


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_every_service_says_its_version_identity_and_principal(nats_server, apiserver, start_service,
                                                                    wait_for) -> None:
    need_nats()
    await apiserver(1)
    start_service("scheduler", "--identity", "sched-a")
    start_service("replicaset", "--identity", "rs-a")
    start_service("nodeagent", "--node-name", "n1", "--identity", "agent-n1")
    expected = {"flotilla-scheduler": ("sched-a", "scheduler"), "flotilla-replicaset": ("rs-a", "replicaset"),
                "flotilla-nodeagent": ("agent-n1", "node-n1")}

    def listed() -> set[str]:
        return {s["name"] for s in micro(nats_server.url, "ls")}

    await wait_for(lambda: set(expected) <= listed(), 60, "scheduler, replicaset and node agent in `nats micro ls`")
    for name, (identity, principal) in expected.items():
        meta = micro(nats_server.url, "info", name)["info"]["metadata"]
        assert (meta["version"], meta["identity"], meta["principal"]) == (VERSION, identity, principal), (name, meta)
    assert micro(nats_server.url, "info", "flotilla-nodeagent")["info"]["metadata"]["node"] == "n1"


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
        registering = asyncio.ensure_future(register(nc, "probe", "probe-1", principal="admin"))
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
