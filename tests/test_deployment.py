"""Deployments against real services: API server, scheduler, replica and deployment controllers, and a
node agent running the pods as real processes with readiness probes."""
from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from conftest import cli_env

from schemas import ApiError
from schemas.pod import ExecAction
from services.lib.podutil import is_ready

REPO_ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


def web_deployment(name: str, replicas: int, version: str, *, ready_cmd: list[str] | None = None,
                   deadline: int | None = None) -> dict:
    probe = {"exec": {"command": ready_cmd}} if ready_cmd else {"tcpSocket": {"port": 8080}}
    spec: dict = {
        "replicas": replicas,
        "selector": {"matchLabels": {"app": name}},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
        "template": {"metadata": {"labels": {"app": name}}, "spec": {
            "terminationGracePeriodSeconds": 2,
            "containers": [{"name": "web", "image": f"web:{version}",
                            "command": ["python3", "-m", "http.server", "8080", "--bind", "$(POD_IP)"],
                            "env": [{"name": "VERSION", "value": version}],
                            "readinessProbe": {**probe, "periodSeconds": 1, "failureThreshold": 1}}]}}}
    if deadline:
        spec["progressDeadlineSeconds"] = deadline
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name}, "spec": spec}


async def change_template(api, name: str, change) -> None:
    """Read-modify-write with a retry on Conflict: the controller writes the Deployment's status too."""
    for _ in range(10):
        d = await api.deployments.get(name)
        change(d.spec.template.spec.containers[0])
        try:
            await api.deployments.update(d)
            return
        except ApiError as exc:
            if exc.reason != "Conflict":
                raise
    raise AssertionError(f"could not update deployment {name}: it kept changing")


@pytest.fixture
async def cluster(api, start_service):
    for svc in ("scheduler", "replicaset", "deployment", "gc"):
        start_service(svc, "--identity", f"{svc}-a", "--lease-duration", "2")
    start_service("nodeagent", "--node-name", "node-a", "--cpu", "32", "--memory", "64Gi",
                  "--heartbeat-seconds", "1", "--stop-pods-on-exit", "--backoff-base", "1", "--backoff-cap", "4")
    return api


async def pods_of(api, app: str) -> list:
    return [p for p in (await api.pods.list(label_selector=f"app={app}")).items if not p.metadata.deletion_timestamp]


async def ready_count(api, app: str, version: str | None = None) -> int:
    return sum(1 for p in await pods_of(api, app) if is_ready(p) and
               (version is None or p.spec.containers[0].image == f"web:{version}"))


def cli(url: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flotilla.cli", "--nats-url", url, *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO_ROOT, env=cli_env(url))


@pytest.mark.slow
async def test_rolling_update_keeps_capacity_and_undo_returns(cluster, nats_url, connect_api, wait_for) -> None:
    api = cluster
    await api.deployments.create(web_deployment("roll", 10, "v1"))
    await wait_for(lambda: ready_count_is(api, "roll", 10, "v1"), 90, "10 ready v1 pods")
    out = await asyncio.to_thread(cli, nats_url, "rollout", "status", "deployment/roll", "--timeout", "30")
    assert out.returncode == 0 and "successfully rolled out" in out.stdout, out.stdout + out.stderr

    watcher = await connect_api()
    live: dict[str, object] = {p.metadata.name: p for p in await pods_of(api, "roll")}
    low, high = 10, 10
    rv = (await watcher.pods.list(label_selector="app=roll")).resource_version

    async def check_every_event() -> None:
        nonlocal low, high
        async for type_, pod in watcher.pods.watch(label_selector="app=roll", resource_version=rv):
            if type_ == "DELETED" or pod.metadata.deletion_timestamp:
                live.pop(pod.metadata.name, None)
            else:
                live[pod.metadata.name] = pod
            ready = sum(1 for p in live.values() if is_ready(p))
            low, high = min(low, ready), max(high, len(live))

    async with asyncio.TaskGroup() as tg:
        checker = tg.create_task(check_every_event())
        out = await asyncio.to_thread(cli, nats_url, "set", "image", "deployment/roll", "web=web:v2")
        assert out.returncode == 0 and "image updated" in out.stdout, out.stdout + out.stderr
        out = await asyncio.to_thread(cli, nats_url, "rollout", "status", "deployment/roll", "--timeout", "120", timeout=130)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "Waiting for deployment" in out.stdout and "successfully rolled out" in out.stdout
        await wait_for(lambda: ready_count_is(api, "roll", 10, "v2"), 30, "10 ready v2 pods")
        await asyncio.sleep(1)
        checker.cancel()
    assert low >= 10, f"ready pods fell to {low} during the rollout"
    assert high <= 11, f"{high} pods existed at once during the rollout"

    history = await asyncio.to_thread(cli, nats_url, "rollout", "history", "deployment/roll")
    assert history.returncode == 0 and "1" in history.stdout and "2" in history.stdout, history.stdout
    undo = await asyncio.to_thread(cli, nats_url, "rollout", "undo", "deployment/roll")
    assert undo.returncode == 0 and "rolled back" in undo.stdout, undo.stdout + undo.stderr
    await wait_for(lambda: ready_count_is(api, "roll", 10, "v1"), 120, "back to 10 ready v1 pods")
    d = await api.deployments.get("roll")
    assert d.spec.template.spec.containers[0].image == "web:v1"
    assert d.metadata.annotations["deployment.kubernetes.io/revision"] == "3"


async def ready_count_is(api, app: str, n: int, version: str) -> bool:
    pods = await pods_of(api, app)
    return len(pods) == n and all(is_ready(p) and p.spec.containers[0].image == f"web:{version}" for p in pods)


@pytest.mark.slow
async def test_rollout_that_never_gets_ready_hits_the_deadline(cluster, nats_url, wait_for) -> None:
    api = cluster
    await api.deployments.create(web_deployment("stuck", 2, "v1", deadline=6))
    await wait_for(lambda: ready_count_is(api, "stuck", 2, "v1"), 60, "2 ready pods")
    def break_it(c) -> None:
        c.image = "web:broken"
        c.readiness_probe.tcp_socket = None
        c.readiness_probe.exec = ExecAction(command=["false"])
    await change_template(api, "stuck", break_it)
    out = await asyncio.to_thread(cli, nats_url, "rollout", "status", "deployment/stuck", "--timeout", "60", timeout=70)
    assert out.returncode != 0
    assert "exceeded its progress deadline" in out.stderr

    d = await api.deployments.get("stuck")
    cond = next(c for c in d.status.conditions if c.type == "Progressing")
    assert cond.status == "False" and cond.reason == "ProgressDeadlineExceeded"
    assert await ready_count(api, "stuck", "v1") == 2  # maxUnavailable 0: the old pods stay


async def test_cascade_orphan_from_the_cli(cluster, nats_url, wait_for) -> None:
    api = cluster
    await api.deployments.create(web_deployment("orph", 1, "v1"))

    async def has_rs():
        return [r for r in (await api.replicasets.list()).items if r.metadata.name.startswith("orph-")]
    await wait_for(has_rs, 30, "a replicaset")
    out = await asyncio.to_thread(cli, nats_url, "delete", "deployment", "orph", "--cascade=orphan")
    assert out.returncode == 0, out.stderr

    async def orphaned():  # the deployment gone, its replicaset left behind without an owner
        if any(d.metadata.name == "orph" for d in (await api.deployments.list()).items):
            return None
        left = await has_rs()
        return left if left and not left[0].metadata.owner_references else None
    rs = await wait_for(orphaned, 30, "the replicaset orphaned and the deployment gone")
    assert not rs[0].metadata.deletion_timestamp and await pods_of(api, "orph"), "orphaned, not collected"
    out = await asyncio.to_thread(cli, nats_url, "delete", "rs", rs[0].metadata.name)
    assert out.returncode == 0, out.stderr

    async def pods_gone():
        return not await pods_of(api, "orph")
    await wait_for(pods_gone, 30, "the pods collected with their replicaset")
