"""Container lifecycle on real processes: postStart after the start, preStop before the SIGTERM
(inside the grace period), a failing postStart kills and restarts the container, a preStop that
outlives the grace period does not hold the deletion, and a changed image restarts the container."""
from __future__ import annotations

import time

from test_nodeagent_support import cstatus, na_cluster, unique  # noqa: F401 (na_cluster is a fixture)


def _lines(path) -> list[str]:
    return path.read_text().split() if path.exists() else []


async def test_post_start_runs_after_start_and_pre_stop_before_sigterm(na_cluster):
    agent = na_cluster.agent()
    await agent.ready()
    name = unique("hooks")
    log = na_cluster.tmp_path / f"{name}.log"
    main = f"trap 'echo term >> {log}; exit 0' TERM; echo started >> {log}; while true; do sleep 0.1; done"
    await na_cluster.create_pod(name, agent.node, [{
        "name": "c", "command": ["sh", "-c", main],
        "lifecycle": {"postStart": {"exec": {"command": ["sh", "-c", f"echo poststart >> {log}"]}},
                      "preStop": {"exec": {"command": ["sh", "-c", f"sleep 0.3; echo prestop >> {log}"]}}}}],
        terminationGracePeriodSeconds=10)
    await na_cluster.wait_pod(name, lambda p: p.status.phase == "Running", what="Running")
    await na_cluster.wait_for(lambda: "poststart" in _lines(log), 10, "the postStart hook")
    assert "prestop" not in _lines(log) and "term" not in _lines(log)

    await na_cluster.api.pods.delete(name)
    await na_cluster.wait_gone(name, 15)
    lines = _lines(log)
    # The process got its SIGTERM only after the preStop hook finished (it sleeps first).
    assert lines.index("prestop") < lines.index("term"), lines


async def test_a_failing_post_start_hook_kills_and_restarts_the_container(na_cluster):
    agent = na_cluster.agent()
    await agent.ready()
    name = unique("poststart-fails")
    await na_cluster.create_pod(name, agent.node, [{
        "name": "c", "command": ["sleep", "1000"],
        "lifecycle": {"postStart": {"exec": {"command": ["sh", "-c", "echo no-way >&2; exit 3"]}}}}],
        terminationGracePeriodSeconds=2)
    event = await na_cluster.wait_event(name, "FailedPostStartHook", timeout=20)
    assert "no-way" in event.message and event.type == "Warning"
    pod = await na_cluster.wait_pod(name, lambda p: (cstatus(p) is not None and cstatus(p).restart_count >= 1
                                                     and cstatus(p).last_state.terminated is not None),
                                    timeout=30, what="restarted after the failed hook")
    assert "PostStartHookError" in (cstatus(pod).last_state.terminated.message or "")


async def test_a_pre_stop_hook_longer_than_the_grace_period_does_not_hold_deletion(na_cluster):
    agent = na_cluster.agent()
    await agent.ready()
    name = unique("prestop-hangs")
    await na_cluster.create_pod(name, agent.node, [{
        "name": "c", "command": ["sh", "-c", "trap '' TERM; while true; do sleep 0.1; done"],
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", "600"]}}}}], terminationGracePeriodSeconds=2)
    await na_cluster.wait_pod(name, lambda p: p.status.phase == "Running", what="Running")
    began = time.monotonic()
    await na_cluster.api.pods.delete(name)
    # The hook would hold deletion for 600 s: gone within this generous wait means it did not.
    await na_cluster.wait_gone(name, 60)
    took = time.monotonic() - began
    # 2 s of grace used up by the hook, Kubernetes' 2 s extension for the process, then SIGKILL. A
    # lower bound only (load makes it longer, never shorter); the second-rounded deletion timestamp
    # may take up to 0.5 s off.
    assert took >= 3.5, f"gone {took:.2f}s after the delete: the hook's grace or the 2 s extension was cut short"
    await na_cluster.wait_event(name, "FailedPreStopHook", contains="grace period")


async def test_changing_the_image_of_a_running_container_restarts_it(na_cluster):
    """As the kubelet does when a container's definition changes: stop it (Killing), start it again
    at once from the new image, whatever the restart policy; the restart count goes up."""
    agent = na_cluster.agent()
    await agent.ready()
    name = unique("reimage")
    await na_cluster.create_pod(name, agent.node, [{"name": "c", "image": "app:v1", "command": ["sleep", "1000"]}],
                                restartPolicy="Never", terminationGracePeriodSeconds=2)
    before = await na_cluster.wait_pod(name, lambda p: p.status.phase == "Running", what="Running")
    assert cstatus(before).image == "app:v1"
    await na_cluster.api.pods.patch(name, {"spec": {"containers": [
        {"name": "c", "image": "app:v2", "command": ["sleep", "1000"]}]}})
    after = await na_cluster.wait_pod(name, lambda p: cstatus(p).restart_count == 1 and cstatus(p).state.running
                                      is not None, timeout=20, what="restarted from the new image")
    assert cstatus(after).image == "app:v2" and after.status.phase == "Running"
    assert cstatus(after).container_id != cstatus(before).container_id
    await na_cluster.wait_event(name, "Killing", contains="definition changed")
