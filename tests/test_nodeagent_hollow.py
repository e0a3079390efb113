"""Hollow node agents (scale benchmarks only): pods reported Running with no process behind them,
one agent per process (`--hollow`) or many in one (`python -m services.nodeagent.hollow`)."""
from __future__ import annotations

import asyncio
import ipaddress

import pytest

from schemas import NODE_LEASE_NAMESPACE, ApiError
from services.lib.logs import fetch_logs
from test_nodeagent_support import condition, container_processes, cstatus, na_cluster, unique

__all__ = ["na_cluster"]
pytestmark = pytest.mark.timeout(90)


async def test_hollow_agent_reports_pods_running_without_processes(na_cluster):
    agent = na_cluster.agent(None, "--hollow")
    node = await agent.ready()
    assert condition(node, "ResourceLimitsEnforced") == "False"
    names = [unique("ghost") for _ in range(3)]
    await asyncio.gather(*(na_cluster.create_pod(n, agent.node, [
        {"name": "c", "command": ["no-such-binary-would-fail"],
         "livenessProbe": {"exec": {"command": ["false"]}, "periodSeconds": 1, "failureThreshold": 1}}])
        for n in names))
    for n in names:
        pod = await na_cluster.wait_pod(n, lambda p: p.status.phase == "Running" and condition(p, "Ready") == "True",
                                        what="Running and Ready")
        cs = cstatus(pod)
        assert cs.container_id.startswith("hollow://") and cs.restart_count == 0
        assert container_processes(cs.container_id.split("://")[1], "FLOTILLA_CONTAINER_ID") == []
    assert await fetch_logs(na_cluster.nc, agent.node, "default", names[0]) == b""
    await na_cluster.api.pods.delete(names[0])
    await na_cluster.wait_gone(names[0], 5)
    await asyncio.sleep(1.2)  # probes are not run for hollow pods: nothing restarts
    pods = [await na_cluster.pod(n) for n in names[1:]]
    assert [cstatus(p).restart_count for p in pods] == [0, 0]


async def test_many_hollow_agents_in_one_process(na_cluster):
    prefix = unique("h") + "-"
    count = 30
    proc = na_cluster.start_service("nodeagent.hollow", "--count", str(count), "--prefix", prefix,
                                    "--heartbeat-seconds", "1", name="hollow")

    async def all_ready():
        assert proc.alive, proc.log_tail()
        nodes = [n for n in (await na_cluster.api.nodes.list()).items if n.metadata.name.startswith(prefix)]
        ready = [n for n in nodes if condition(n, "Ready") == "True"]
        return ready if len(ready) == count else None

    nodes = await na_cluster.wait_for(all_ready, 30, f"{count} hollow nodes Ready", interval=0.2)
    cidrs = [ipaddress.ip_network(n.spec.pod_cidr) for n in nodes]
    assert len(set(cidrs)) == count
    lease = await na_cluster.api.leases.get(f"{prefix}7", NODE_LEASE_NAMESPACE)
    async def renewed():
        now = await na_cluster.api.leases.get(f"{prefix}7", NODE_LEASE_NAMESPACE)
        return now if now.spec.renew_time > lease.spec.renew_time else None

    await na_cluster.wait_for(renewed, 30, "the node lease renewed")

    name = unique("on-hollow")
    await na_cluster.create_pod(name, f"{prefix}12", [{"name": "c", "command": ["sleep", "1"]}])
    pod = await na_cluster.wait_pod(name, lambda p: p.status.phase == "Running", what="Running on a hollow node")
    assert ipaddress.ip_address(pod.status.pod_ip) in ipaddress.ip_network(
        next(n for n in nodes if n.metadata.name == f"{prefix}12").spec.pod_cidr)
    # NotFound is the hollow node's own answer; a node nobody serves logs for is ServiceUnavailable.
    with pytest.raises(ApiError) as err:
        await fetch_logs(na_cluster.nc, f"{prefix}12", "default", "no-such-pod")
    assert err.value.reason == "NotFound" and f'"{prefix}12"' in err.value.message, err.value


async def test_a_status_written_by_someone_else_is_put_right(na_cluster):
    """The agent skips the watch event of its own status write (nothing changed), but not a status
    another writer put over it: that one is synced and the agent's view written back."""
    import msgspec

    from schemas import PodStatus

    agent = na_cluster.agent(None, "--hollow")
    await agent.ready()
    name = unique("overwritten")
    await na_cluster.create_pod(name, agent.node, [{"name": "c", "command": ["sleep", "60"]}])
    pod = await na_cluster.wait_pod(name, lambda p: p.status.phase == "Running", what="Running")
    await na_cluster.api.pods.update_status(msgspec.structs.replace(pod, status=PodStatus(phase="Pending")))
    back = await na_cluster.wait_pod(name, lambda p: p.status.phase == "Running", what="Running again")
    assert int(back.metadata.resource_version) > int(pod.metadata.resource_version) + 1
