"""The node agent across its own death and the node's: reboot detection from the checkpointed boot
id, a kill -9 while a container is starting, and the pods that changed or vanished from the API
while the agent was down (their processes must be stopped, never left running or doubled).

Agents are real processes with a state dir (`na_cluster` from test_nodeagent_support); container
processes are found by the pod's sandbox path (FLOTILLA_SANDBOX holds the pod uid).
"""
from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
from pathlib import Path

import pytest

from test_nodeagent_support import alive, container_pid, container_processes, cstatus, na_cluster, proc_env, unique

__all__ = ["na_cluster"]
pytestmark = pytest.mark.timeout(150)

SLEEP = {"name": "c", "command": ["sleep", "1000"]}
TRIES = 10


def pod_processes(uid: str) -> list[int]:
    """The container processes (session leaders: one per running container) of the pod with this uid."""
    return [pid for pid in container_processes(uid) if _session_leader(pid)]


def agent_child_with(agent_pid: int, uid: str) -> int | None:
    """A child of the agent process running in this pod's sandbox: a cheap poll (the children
    lists, then one environ per child) that sees a container start within milliseconds."""
    for task in Path(f"/proc/{agent_pid}/task").glob("*/children"):
        try:
            children = task.read_text().split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        for child in children:
            if uid in proc_env(int(child)).get("FLOTILLA_SANDBOX", ""):
                return int(child)
    return None


def _session_leader(pid: int) -> bool:
    try:
        return os.getsid(pid) == pid
    except ProcessLookupError:
        return False


def running(p) -> bool:
    cs = cstatus(p)
    return p.status.phase == "Running" and cs is not None and cs.state.running is not None


async def test_reboot_detected_from_the_checkpointed_boot_id(na_cluster):
    """The boot id is read from /proc and cannot be injected; the checkpoint's copy can be: an
    agent that finds another boot id there must treat every recorded container as gone (a reboot
    killed them, and a PID recorded then may now be some other process) and start them again."""
    agent = na_cluster.agent()
    await agent.ready()
    name = unique("reboot")
    await na_cluster.create_pod(name, agent.node, [SLEEP])
    pod = await na_cluster.wait_pod(name, running, 20, "Running")
    uid, old_pid = pod.metadata.uid, container_pid(cstatus(pod).container_id)
    assert old_pid is not None

    agent.kill9()
    for pid in pod_processes(uid):  # what the reboot would have done to it
        os.killpg(pid, signal.SIGKILL)
    await na_cluster.wait_for(lambda: not pod_processes(uid), 10, "the container processes gone")
    db = sqlite3.connect(agent.state_dir / "checkpoint.db")
    try:
        assert db.execute("SELECT value FROM meta WHERE key = 'boot_id'").fetchone() is not None
        db.execute("UPDATE meta SET value = 'a-boot-before-this-one' WHERE key = 'boot_id'")
        db.commit()
    finally:
        db.close()

    restarted = na_cluster.agent(agent.node)
    await restarted.ready()
    pod = await na_cluster.wait_pod(name, lambda p: running(p) and cstatus(p).restart_count == 1, 30,
                                    "started again after the reboot")
    last = cstatus(pod).last_state.terminated
    # Without reboot detection the dead process is an ordinary unexplained exit; with it, the node
    # rebooted (Kubernetes' ContainerStatusUnknown).
    assert last is not None and last.exit_code == 137
    assert last.reason == "ContainerStatusUnknown" and "rebooted" in (last.message or ""), last
    assert len(pod_processes(uid)) == 1
    assert "container adopted" not in restarted.proc.log_text()


async def test_agent_killed_while_a_container_starts_runs_it_exactly_once(na_cluster):
    """kill -9 of the agent as soon as the container process exists, before the pod is reported
    Running. The restarted agent must adopt the process it started (from the checkpoint, or by
    finding it by its container id when the checkpoint write did not happen), not start a second
    one: one process, restart count 0, the pod Running. The kill cannot be placed exactly, so a try
    whose kill landed after Running was reported is repeated with a new pod (a few tries at most)."""
    agent = na_cluster.agent()
    await agent.ready()
    for attempt in range(TRIES):
        name = unique("midstart")
        created = await na_cluster.create_pod(name, agent.node, [SLEEP])
        uid = created.metadata.uid
        agent_pid = agent.proc.pid
        await na_cluster.wait_for(lambda: agent_child_with(agent_pid, uid), 20, "the container process started",
                                  interval=0.002)
        agent.kill9()
        pids = pod_processes(uid)
        pod = await na_cluster.pod(name)
        assert len(pids) == 1, pids
        if not running(pod):
            break  # the kill landed in the window: the status never said Running
        agent = na_cluster.agent(agent.node)
        await agent.ready()
    else:
        pytest.fail(f"in {TRIES} tries the agent reported Running before the test could kill it")

    restarted = na_cluster.agent(agent.node)
    await restarted.ready()
    pod = await na_cluster.wait_pod(name, running, 30, "Running after the agent restart")
    await asyncio.sleep(1.5)  # a second start, if one were made, would exist by now
    assert pod_processes(uid) == pids, "the container must run exactly once, as the process started before the kill"
    pod = await na_cluster.pod(name)
    assert running(pod) and cstatus(pod).restart_count == 0
    assert container_pid(cstatus(pod).container_id) == pids[0]
    print(f"kill landed before Running on try {attempt + 1}")


async def test_pod_force_deleted_while_the_agent_was_down_is_stopped(na_cluster):
    agent = na_cluster.agent()
    await agent.ready()
    gone, kept = unique("forced"), unique("kept")
    await na_cluster.create_pod(gone, agent.node, [SLEEP])
    await na_cluster.create_pod(kept, agent.node, [SLEEP])
    gone_pod = await na_cluster.wait_pod(gone, running, 20, "Running")
    kept_pod = await na_cluster.wait_pod(kept, running, 20, "Running")
    gone_pid = container_pid(cstatus(gone_pod).container_id)
    kept_pid = container_pid(cstatus(kept_pod).container_id)

    agent.kill9()
    await na_cluster.api.pods.delete(gone, grace_period_seconds=0)  # no agent to confirm: gone at once
    await na_cluster.wait_gone(gone, 10)
    assert alive(gone_pid)

    restarted = na_cluster.agent(agent.node)
    await restarted.ready()
    # The checkpoint knows the process; the API no longer knows its pod: it must be stopped.
    await na_cluster.wait_for(lambda: not alive(gone_pid), 30, "the force-deleted pod's process stopped")
    assert pod_processes(gone_pod.metadata.uid) == []
    assert await na_cluster.pod(gone) is None, "the agent must not bring the deleted pod back"
    assert alive(kept_pid)
    assert container_pid(cstatus(await na_cluster.pod(kept)).container_id) == kept_pid


async def test_pod_replaced_under_the_same_name_while_the_agent_was_down(na_cluster):
    """The checkpoint's pod (by uid) is gone from the API though a pod of that name exists: the old
    process is a stray and is stopped; the new pod gets its own, one process in all."""
    agent = na_cluster.agent()
    await agent.ready()
    name = unique("replaced")
    await na_cluster.create_pod(name, agent.node, [SLEEP])
    old = await na_cluster.wait_pod(name, running, 20, "Running")
    old_pid = container_pid(cstatus(old).container_id)

    agent.kill9()
    await na_cluster.api.pods.delete(name, grace_period_seconds=0)
    await na_cluster.wait_gone(name, 10)
    await na_cluster.create_pod(name, agent.node, [SLEEP])
    new = await na_cluster.pod(name)
    assert new.metadata.uid != old.metadata.uid

    restarted = na_cluster.agent(agent.node)
    await restarted.ready()
    new = await na_cluster.wait_pod(name, running, 30, "the new pod Running")
    await na_cluster.wait_for(lambda: not alive(old_pid), 30, "the old pod's process stopped")
    assert pod_processes(old.metadata.uid) == []
    assert len(pod_processes(new.metadata.uid)) == 1
    assert cstatus(new).restart_count == 0
