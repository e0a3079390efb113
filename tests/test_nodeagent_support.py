"""Fixtures and helpers for the node agent tests (no tests here).

`na_cluster` gives a real nats-server, one API server process and a factory for node agent
processes (`python -m services.nodeagent`, each with its own state dir under tmp_path). At
teardown, pass or fail: the agents are stopped, then every container process they started is
killed (found by the FLOTILLA_SANDBOX path in their environment, which is under tmp_path), and
their cgroups are removed.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client

from schemas import ApiError, Event, Node, Pod
from services.lib.client import Api
from services.nodeagent.cgroups import Cgroups
from procs import running as alive

READY_LINE = 'msg="node agent ready"'
FAST_FLAGS = ("--heartbeat-seconds", "1", "--backoff-base", "0.4", "--backoff-cap", "3",
              "--node-status-seconds", "5")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def proc_env(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return {}
    out = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            out[key.decode(errors="replace")] = value.decode(errors="replace")
    return out


def container_processes(marker: str, key: str = "FLOTILLA_SANDBOX") -> list[int]:
    """Live processes whose env var `key` contains `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            pid = int(entry.name)
            if marker in proc_env(pid).get(key, "") and alive(pid):
                found.append(pid)
    return found


def container_pid(status_container_id: str | None) -> int | None:
    """The session leader of a container, from its status containerID (`process://<id>`)."""
    if not status_container_id:
        return None
    cid = status_container_id.split("://", 1)[1]
    for pid in container_processes(cid, "FLOTILLA_CONTAINER_ID"):
        if os.getsid(pid) == pid:
            return pid
    return None


class Agent:
    def __init__(self, cluster: "Cluster", node: str, state_dir: Path, flags: tuple[str, ...]):
        self.cluster, self.node, self.state_dir, self.flags = cluster, node, state_dir, flags
        self.proc: Any = None

    def start(self) -> "Agent":
        log = self.cluster.tmp_path / f"agent-{self.node}.log"
        self.ready_before = log.read_text().count(READY_LINE) if log.exists() else 0
        self.proc = self.cluster.start_service("nodeagent", "--node-name", self.node, "--state-dir",
                                               str(self.state_dir), *self.flags, name=f"agent-{self.node}")
        return self

    def kill9(self) -> None:
        self.proc.kill()

    def terminate(self) -> int:
        return self.proc.stop(grace=20)

    async def ready(self, timeout: float = 20.0) -> Node:
        api = self.cluster.api

        async def check() -> Node | None:
            if not self.proc.alive:
                raise AssertionError(f"agent {self.node} exited:\n{self.proc.log_tail()}")
            if self.proc.log_text().count(READY_LINE) <= self.ready_before:
                return None  # a Ready condition left by an earlier agent of this node does not count
            try:
                node = await api.nodes.get(self.node)
            except ApiError:
                return None
            ready = any(c.type == "Ready" and c.status == "True" for c in node.status.conditions)
            return node if ready else None

        return await self.cluster.wait_for(check, timeout, f"node {self.node} Ready")


class Cluster:
    def __init__(self, api: Api, nc: Client, tmp_path: Path, start_service: Callable[..., Any],
                 wait_for: Callable[..., Any]):
        self.api, self.nc, self.tmp_path = api, nc, tmp_path
        self.start_service, self.wait_for = start_service, wait_for
        self.agents: list[Agent] = []

    def agent(self, node: str | None = None, *flags: str, fast: bool = True, stop_pods: bool = True) -> Agent:
        node = node or unique("na-node")
        all_flags = (*(FAST_FLAGS if fast else ()), *(("--stop-pods-on-exit",) if stop_pods else ()), *flags)
        agent = Agent(self, node, self.tmp_path / "agents" / node, all_flags)
        self.agents.append(agent)
        return agent.start()

    async def create_pod(self, name: str, node: str, containers: list[dict[str, Any]], **spec: Any) -> Pod:
        body = {"metadata": {"name": name, "namespace": spec.pop("namespace", "default")},
                "spec": {"nodeName": node, "containers": containers, **spec}}
        return await self.api.pods.create(msgspec.convert(body, Pod))

    async def pod(self, name: str, namespace: str = "default") -> Pod | None:
        try:
            return await self.api.pods.get(name, namespace)
        except ApiError as exc:
            if exc.reason == "NotFound":
                return None
            raise

    async def wait_pod(self, name: str, predicate: Callable[[Pod], Any], timeout: float = 15.0,
                       what: str = "pod condition", namespace: str = "default") -> Pod:
        async def check() -> Pod | None:
            pod = await self.pod(name, namespace)
            return pod if pod is not None and predicate(pod) else None

        return await self.wait_for(check, timeout, f"{name}: {what}", interval=0.1)

    async def wait_gone(self, name: str, timeout: float = 15.0, namespace: str = "default") -> None:
        async def check() -> bool:
            return await self.pod(name, namespace) is None

        await self.wait_for(check, timeout, f"{name} deleted", interval=0.1)

    async def events(self, name: str, namespace: str = "default") -> list[Event]:
        events = await self.api.events.list(namespace)
        return [e for e in events.items if e.involved_object.name == name]

    async def wait_event(self, name: str, reason: str, timeout: float = 15.0, contains: str = "") -> Event:
        async def check() -> Event | None:
            return next((e for e in await self.events(name) if e.reason == reason and contains in (e.message or "")),
                        None)

        return await self.wait_for(check, timeout, f"event {reason} on {name}", interval=0.1)

    def cleanup(self) -> None:
        for agent in self.agents:
            if agent.proc is not None:
                agent.proc.stop(grace=15)
        marker = str(self.tmp_path)
        for _ in range(3):
            pids = container_processes(marker)
            if not pids:
                break
            for pid in pids:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        for agent in self.agents:
            remove_cgroups(agent.node)


def remove_cgroups(node: str) -> None:
    """Remove `.../flotilla/<node>` in every hierarchy the agent used (detection finds the same ones)."""
    for hierarchy in Cgroups.detect(node).hierarchies.values():
        target = hierarchy.base
        if not target.is_dir():
            continue
        for d in sorted((p for p in target.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            try:
                d.rmdir()
            except OSError:
                pass
        try:
            target.rmdir()
        except OSError:
            pass


def condition(pod_or_node: Any, type_: str) -> str | None:
    return next((c.status for c in pod_or_node.status.conditions if c.type == type_), None)


def cstatus(pod: Pod, name: str | None = None) -> Any:
    statuses = pod.status.container_statuses
    return next((s for s in statuses if name is None or s.name == name), None)


@pytest.fixture
async def na_cluster(apiserver: Any, nc: Client, tmp_path: Path, start_service: Any,
                     wait_for: Any) -> AsyncIterator[Cluster]:
    await apiserver(1)
    cluster = Cluster(Api(nc), nc, tmp_path, start_service, wait_for)
    try:
        yield cluster
    finally:
        await asyncio.to_thread(cluster.cleanup)
        shutil.rmtree(tmp_path / "agents", ignore_errors=True)
