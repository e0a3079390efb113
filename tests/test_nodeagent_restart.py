"""The node agent's own restarts: kill -9 with pods running (adoption from the checkpoint), a plain
SIGTERM (pods keep running), and --stop-pods-on-exit (they do not)."""
from __future__ import annotations

import asyncio
import os
import signal

import pytest

from schemas import NODE_LEASE_NAMESPACE
from services.lib.logs import fetch_logs
from test_nodeagent_support import alive, condition, container_pid, cstatus, na_cluster, unique

__all__ = ["na_cluster"]
pytestmark = pytest.mark.timeout(150)


def snapshot(pod):
    cs = cstatus(pod)
    return cs.container_id, container_pid(cs.container_id), cs.restart_count, cs.state.running.started_at


@pytest.mark.slow
async def test_kill9_of_the_agent_adopts_the_20_running_pods(na_cluster):
    agent = na_cluster.agent()
    await agent.ready()
    steady = [unique(f"steady{i}") for i in range(20)]
    victim, dies = unique("victim"), unique("dies")
    creates = []
    for i, name in enumerate(steady):
        container = {"name": "c", "command": ["sleep", "1000"]}
        policy = "Always"
        if i % 4 == 1:  # a readiness probe: Ready must survive the agent restart
            container["readinessProbe"] = {"exec": {"command": ["true"]}, "periodSeconds": 1}
        if i % 4 == 3:  # a passed startup probe stays passed
            container["startupProbe"] = {"exec": {"command": ["true"]}, "periodSeconds": 1}
        if i % 4 == 2:  # one restart before the agent dies: the count must survive too
            container["command"] = ["sh", "-c", "if [ -f once ]; then exec sleep 1000; fi; touch once; exit 1"]
            policy = "OnFailure"
        creates.append(na_cluster.create_pod(name, agent.node, [container], restartPolicy=policy))
    creates.append(na_cluster.create_pod(victim, agent.node, [{"name": "c", "command": ["sleep", "1000"]}],
                                         terminationGracePeriodSeconds=2))
    creates.append(na_cluster.create_pod(dies, agent.node, [{"name": "c", "command": ["sleep", "1000"]}]))
    await asyncio.gather(*creates)

    def settled(p) -> bool:
        cs = cstatus(p)
        return p.status.phase == "Running" and condition(p, "Ready") == "True" and cs is not None \
            and cs.state.running is not None and container_pid(cs.container_id) is not None

    before = {}
    for name in steady + [victim, dies]:
        before[name] = snapshot(await na_cluster.wait_pod(name, settled, 30, "Running and Ready"))
    assert sum(before[n][2] for n in steady) == 5  # the five OnFailure pods restarted once each

    agent.kill9()
    victim_pid, dies_pid = before[victim][1], before[dies][1]
    await na_cluster.api.pods.delete(victim)  # graceful: waits for the (dead) agent to confirm
    os.kill(dies_pid, signal.SIGKILL)
    await asyncio.sleep(0.5)
    assert alive(victim_pid) and (await na_cluster.pod(victim)).metadata.deletion_timestamp

    restarted = na_cluster.agent(agent.node)  # same node, same state dir
    await restarted.ready()
    await na_cluster.wait_gone(victim, 15)
    assert not alive(victim_pid)
    pod = await na_cluster.wait_pod(dies, lambda p: cstatus(p).restart_count == 1 and settled(p), 15,
                                    "restarted by its policy")
    last = cstatus(pod).last_state.terminated
    assert last is not None and last.exit_code == 137  # SIGKILL (or unknown: reported as 137 as well)
    assert container_pid(cstatus(pod).container_id) not in (None, dies_pid)

    await asyncio.sleep(1.5)  # a few probe periods and status syncs of the new agent
    for name in steady:
        pod = await na_cluster.pod(name)
        assert settled(pod), (name, pod.status)
        assert snapshot(pod) == before[name], name
        assert alive(before[name][1]) and cstatus(pod).started
    log = restarted.proc.log_text()
    assert log.count("container adopted") == 21  # the 20 steady ones and the victim, before it was stopped


async def test_sigterm_leaves_pods_running_and_stop_pods_on_exit_stops_them(na_cluster):
    agent = na_cluster.agent(stop_pods=False)
    await agent.ready()
    name = unique("survivor")
    await na_cluster.create_pod(name, agent.node, [{"name": "c", "command": ["sleep", "1000"]}])
    pod = await na_cluster.wait_pod(name, lambda p: p.status.phase == "Running", what="Running")
    cid, pid, _, _ = snapshot(pod)
    assert agent.terminate() == 0
    assert alive(pid), "a plain SIGTERM of the agent must leave its pods running"

    stopping = na_cluster.agent(agent.node, stop_pods=True)
    await stopping.ready()
    pod = await na_cluster.wait_pod(name, lambda p: p.status.phase == "Running", what="still Running")
    assert snapshot(pod)[:2] == (cid, pid)
    assert stopping.terminate() == 0
    assert not alive(pid), "--stop-pods-on-exit must stop the pods"

    again = na_cluster.agent(agent.node, stop_pods=True)
    await again.ready()
    pod = await na_cluster.wait_pod(name, lambda p: cstatus(p).restart_count == 1 and p.status.phase == "Running",
                                    what="restarted after the node came back")
    assert cstatus(pod).last_state.terminated.exit_code == 143


async def test_agent_carries_on_across_a_nats_restart(na_cluster, nats_server):
    agent = na_cluster.agent()
    await agent.ready()
    before, after = unique("before"), unique("after")
    await na_cluster.create_pod(before, agent.node, [{"name": "c", "command": ["sleep", "1000"]}])
    pod = await na_cluster.wait_pod(before, lambda p: p.status.phase == "Running", what="Running")
    pid = container_pid(cstatus(pod).container_id)
    await nats_server.arestart()
    lease = await na_cluster.wait_for(lambda: na_cluster.api.leases.get(agent.node, NODE_LEASE_NAMESPACE), 20,
                                      "the API again")
    # It prints a line, so that its log read back shows output captured and served after the restart.
    await na_cluster.create_pod(after, agent.node, [{"name": "c", "command": [
        "sh", "-c", "echo after-the-nats-restart; exec sleep 1000"]}])
    await na_cluster.wait_pod(after, lambda p: p.status.phase == "Running", 20, "Running after the NATS restart")
    await na_cluster.api.pods.delete(before)
    await na_cluster.wait_gone(before, 15)
    assert not alive(pid) and agent.proc.alive
    async def renewed():
        now = await na_cluster.api.leases.get(agent.node, NODE_LEASE_NAMESPACE)
        return now if now.spec.renew_time > lease.spec.renew_time else None

    await na_cluster.wait_for(renewed, 30, "the node lease renewed")

    async def printed() -> bool:  # the line may reach the log file just after Running is reported
        return b"after-the-nats-restart\n" in await fetch_logs(na_cluster.nc, agent.node, "default", after)
    await na_cluster.wait_for(printed, 15, "the pod's output served after the NATS restart")
