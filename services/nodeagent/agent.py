"""The node agent: wires registration and heartbeat, the pod and service caches, the pod sync,
the logs server and the checkpoint together, and decides what a shutdown does to the pods.

A plain shutdown (SIGTERM) leaves the pods running, like a kubelet restart: the next agent adopts
them from the checkpoint. With `stop_pods_on_exit` (what `flotilla up` passes) every container is
stopped first (SIGTERM, at most `shutdown_grace` seconds, SIGKILL), so no process outlives it.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from pathlib import Path

from nats.aio.client import Client

from schemas import Pod, Service

from services.lib import permissions
from services.lib.client import Api
from services.lib.events import EventRecorder
from services.lib.informer import Informer
from services.lib.log import get_logger
from services.lib.registry import register

from .cgroups import Cgroups
from .checkpoint import Checkpoint, MemoryCheckpoint
from .logfiles import LogFiles
from .logserver import LogServer
from .network import PodAddresses
from .node import NodeConfig, NodeRegistration
from .podsync import PodSync
from .runtime import Runtime, procfs
from .runtime.hollow import HollowRuntime
from .runtime.process import ProcessRuntime
from .sandbox import Sandboxes

log = get_logger("flotilla.nodeagent")


@dataclass
class AgentConfig:
    registration: NodeConfig  # what the Node is registered with: name, capacity, labels, heartbeat, CIDR
    state_dir: Path | None = None  # None: nothing on disk (hollow agents only)
    identity: str = ""
    backoff_base: float = 10.0
    backoff_cap: float = 300.0
    hollow: bool = False
    stop_pods_on_exit: bool = False
    shutdown_grace: float = 5.0
    log_max_bytes: int = 10 * 2**20
    log_max_files: int = 5
    log_check_seconds: float = 10.0
    sync_workers: int = 4
    register_service: bool = True
    watch_services: bool = True
    events: bool = True

    @property
    def node(self) -> str:
        return self.registration.name


class NodeAgent:
    def __init__(self, nc: Client, cfg: AgentConfig, api: Api | None = None):
        self.nc = nc
        self.cfg = cfg
        self.api = api or Api(nc, node=cfg.node)
        self.recorder = EventRecorder(self.api, "nodeagent", host=cfg.node)
        if cfg.hollow:
            self.cgroups = Cgroups.disabled(cfg.node, "hollow node: nothing runs, so nothing is limited")
            self.runtime: Runtime = HollowRuntime()
        else:
            self.cgroups = Cgroups.detect(cfg.node)
            self.runtime = ProcessRuntime(self.cgroups)
        # Hollow agents of `python -m services.nodeagent.hollow` keep nothing on disk; their runtime
        # runs nothing, so the sandbox and log paths below are never touched.
        root = cfg.state_dir or Path("/nonexistent/flotilla-hollow")
        self.checkpoint = Checkpoint(root / "checkpoint.db") if cfg.state_dir is not None else MemoryCheckpoint()
        self.sandboxes = Sandboxes(root / "pods")
        self.logs = LogFiles(root / "logs", cfg.log_max_bytes, cfg.log_max_files)
        self.registration = NodeRegistration(
            self.api,
            replace(cfg.registration, hollow=cfg.hollow, state_dir=cfg.state_dir, runtime=self.runtime.name),
            limits_enforced=self.cgroups.enforced, limits_message=self.cgroups.message,
            limits_reason=f"Cgroup{self.cgroups.version.upper()}" if self.cgroups.version else "NotEnforced")
        self.pod_informer = Informer(self.api.pods, field_selector=f"spec.nodeName={cfg.node}")
        self.service_informer = Informer(self.api.services) if cfg.watch_services else None
        self.sync = PodSync(self)
        self.logs_server = LogServer(nc, self)
        self.ips: PodAddresses | None = None
        self.tg: asyncio.TaskGroup | None = None
        self.ready = asyncio.Event()

    # ---- what the pod sync asks of the agent ------------------------------------------------------
    @property
    def node_ip(self) -> str:
        return self.ips.node_ip if self.ips is not None else ""

    @property
    def allocatable(self) -> dict[str, str]:
        return self.registration.allocatable

    def services(self) -> list[Service]:
        return self.service_informer.list() if self.service_informer is not None else []

    # ---- running ----------------------------------------------------------------------------------
    async def run(self, used_cidrs: set[str] | None = None) -> None:
        await self.checkpoint.open()
        try:
            if not self.cfg.hollow:
                (log.info if self.cgroups.enforced else log.warning)(self.cgroups.message, node=self.cfg.node)
            node = await self.registration.register(used_cidrs)
            assert node.spec.pod_cidr
            self.ips = PodAddresses(node.spec.pod_cidr)
            boot = procfs.boot_id()
            rebooted = (await self.checkpoint.get_meta("boot_id")) not in (None, boot)
            await self.checkpoint.set_meta("boot_id", boot)
            await self.checkpoint.set_meta("node", self.cfg.node)
            await self.sync.restore(await self.checkpoint.load(), rebooted)
            self._sweep_strays()
            async with asyncio.TaskGroup() as tg:
                self.tg = tg
                tg.create_task(self.pod_informer.run(), name="pod informer")
                if self.service_informer is not None:
                    tg.create_task(self.service_informer.run(), name="service informer")
                tg.create_task(self.registration.heartbeat(jitter=self.cfg.hollow), name="heartbeat")
                tg.create_task(self.logs_server.run(), name="logs server")
                if not self.cfg.hollow:
                    tg.create_task(self._housekeeping(), name="housekeeping")
                await self.pod_informer.wait_synced()
                if self.service_informer is not None:
                    await self.service_informer.wait_synced()
                self.pod_informer.add_handlers(on_add=self._on_pod, on_update=self._on_pod_update, on_delete=self._on_pod)
                self.sync.start_adopted()
                self.sync.enqueue_all()
                tg.create_task(self.sync.controller.run(), name="pod sync")
                self.registration.set_ready(True)
                await self.registration.beat()  # the Lease exists and the Node says Ready from here on
                self.ready.set()
                log.info("node agent ready", node=self.cfg.node, pod_cidr=node.spec.pod_cidr,
                         pods=len(self.sync.pods), runtime=self.runtime.name)
                if self.cfg.register_service:
                    svc = await register(self.nc, "nodeagent", self.cfg.identity or self.cfg.node,
                                         principal=permissions.node_principal(self.cfg.node), node=self.cfg.node,
                                         runtime=self.runtime.name)
                    try:
                        await asyncio.Event().wait()
                    finally:
                        if self.nc.is_connected:
                            await svc.stop()
                else:
                    await asyncio.Event().wait()
        finally:
            try:
                if self.cfg.stop_pods_on_exit:
                    await self.sync.stop_everything(self.cfg.shutdown_grace)
                self.cgroups.remove_base()
            finally:
                await self.checkpoint.close()

    def _on_pod_update(self, old: Pod, new: Pod) -> None:
        if not self.sync.own_status_echo(new):
            self._on_pod(new)

    def _on_pod(self, pod: Pod) -> None:
        self.sync.enqueue(f"{pod.metadata.namespace}/{pod.metadata.name}")

    def _sweep_strays(self) -> None:
        """Sandboxes, logs and cgroups of pods the checkpoint does not know (it was lost or the pod
        was cleaned up half-way): stop their processes and remove them."""
        if self.cfg.hollow:
            return
        known = set(self.sync.pods)
        for uid in self.cgroups.stray_pods(known):
            log.warning("stopping processes of an unknown pod", uid=uid)
            self.cgroups.remove_pod(uid)
        for uid in self.sandboxes.known():
            if uid not in known:
                self.sandboxes.remove(uid)
        for folder in self.logs.known_pod_dirs():
            if folder.name.rsplit("_", 1)[-1] not in known:
                self.logs.remove_pod(*folder.name.rsplit("_", 2))

    async def _housekeeping(self) -> None:
        """Log rotation of running containers, every `log_check_seconds` (the kubelet's is 10 s)."""
        while True:
            await asyncio.sleep(self.cfg.log_check_seconds)
            for rec in list(self.sync.pods.values()):
                for name in rec.running():
                    crec = rec.containers.get(name)
                    if crec is not None:
                        path = self.logs.path(rec.cp.namespace, rec.cp.name, rec.uid, name, crec.restart_count)
                        try:
                            if self.logs.rotate_if_needed(path):
                                log.debug("log rotated", pod=rec.key, container=name)
                        except OSError as exc:
                            log.warning("log rotation failed", pod=rec.key, container=name, error=str(exc))
