"""The agent's Node object and its heartbeat.

Registration: get or create the Node (labels `kubernetes.io/hostname`, `kubernetes.io/os`,
`kubernetes.io/arch` and any `--node-labels`; a pod CIDR no other node has; capacity and
allocatable from flags or the host), not Ready until the agent has synced its pods. Heartbeat:
the Lease `flotilla-node-lease/<node>` renewed every `heartbeat` seconds (lease duration 4x that),
and the Node's status written when a condition changes, after the agent was cut off, and every
`status_seconds` anyway. Conditions: Ready, MemoryPressure (available memory under 100Mi),
DiskPressure (under 10% free where the agent keeps its state), PIDPressure (over 90% of pid_max
in use), and ResourceLimitsEnforced (whether cgroup limits are applied here, and why not).
"""
from __future__ import annotations

import asyncio
import os
import platform
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from schemas import (NODE_LEASE_NAMESPACE, ApiError, Condition, Lease, Node, ObjectMeta, OwnerReference, now_iso,
                     now_micro)
from schemas.cluster import NodeAddress, NodeSpec, NodeStatus, NodeSystemInfo
from schemas.quantity import format_bytes
from schemas.workloads import LeaseSpec

from services.lib.client import Api
from services.lib.log import get_logger
from services.lib.registry import VERSION

from .network import DEFAULT_POOL, PodAddresses, choose_pod_cidr
from .runtime import procfs

log = get_logger("flotilla.nodeagent.node")

MEMORY_PRESSURE_BYTES = 100 * 2**20
DISK_PRESSURE_FRACTION = 0.10
PID_PRESSURE_FRACTION = 0.90


def _meminfo() -> dict[str, int]:
    values: dict[str, int] = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                values[key] = int(parts[0]) * (1024 if len(parts) > 1 and parts[1] == "kB" else 1)
    except OSError:
        pass
    return values


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def _os_image() -> str:
    for line in _read("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    return platform.system()


@dataclass
class NodeConfig:
    name: str
    cpu: str | None = None
    memory: str | None = None
    pods: int = 110
    ephemeral_storage: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    heartbeat: float = 5.0
    status_seconds: float = 60.0
    pod_cidr: str | None = None
    pod_cidr_pool: str = DEFAULT_POOL
    hollow: bool = False
    state_dir: Path | None = None
    runtime: str = "process"


def host_capacity(cfg: NodeConfig) -> dict[str, str]:
    cpu = cfg.cpu or str(len(os.sched_getaffinity(0)))
    memory = cfg.memory or format_bytes(_meminfo().get("MemTotal", 8 * 2**30) // 1024 * 1024)
    capacity = {"cpu": cpu, "memory": memory, "pods": str(cfg.pods)}
    if cfg.ephemeral_storage:
        capacity["ephemeral-storage"] = cfg.ephemeral_storage
    elif cfg.state_dir is not None and not cfg.hollow:
        st = os.statvfs(cfg.state_dir)
        capacity["ephemeral-storage"] = format_bytes(st.f_blocks * st.f_frsize // 1024 * 1024)
    return capacity


class NodeRegistration:
    def __init__(self, api: Api, cfg: NodeConfig, limits_enforced: bool, limits_message: str,
                 limits_reason: str):
        self.api = api
        self.cfg = cfg
        self.limits = (limits_enforced, limits_reason, limits_message)
        self.node: Node | None = None
        self.lease: Lease | None = None
        self.ready = False
        self.capacity = host_capacity(cfg)
        self._conditions: dict[str, Condition] = {}
        self._reported: dict[str, str] = {}
        self._last_report = 0.0
        self._cut_off = False
        self._last_beat = 0.0
        self._beating = asyncio.Lock()
        self._node_info = NodeSystemInfo(
            machine_id=_read("/etc/machine-id"), boot_id=procfs.boot_id(), kernel_version=platform.release(),
            os_image=_os_image(), operating_system="linux", architecture=self.labels()["kubernetes.io/arch"],
            container_runtime_version=f"{cfg.runtime}://{VERSION}", kubelet_version=f"flotilla-{VERSION}")

    @property
    def allocatable(self) -> dict[str, str]:
        return dict(self.capacity)

    @property
    def node_ip(self) -> str:
        assert self.node is not None and self.node.spec.pod_cidr
        return PodAddresses(self.node.spec.pod_cidr).node_ip

    def labels(self) -> dict[str, str]:
        arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
        return {"kubernetes.io/hostname": self.cfg.name, "kubernetes.io/os": "linux", "kubernetes.io/arch": arch,
                **self.cfg.labels}

    # ---- registration -----------------------------------------------------------------------------
    async def register(self, used_cidrs: set[str] | None = None) -> Node:
        """Create or update our Node, retrying until the API answers. `used_cidrs` lets a caller that
        registers many nodes (hollow) skip listing the nodes for each."""
        delay = 0.2
        while True:
            try:
                self.node = await self._register_once(used_cidrs)
                await self.report_status(force=True)
                return self.node
            except ApiError as exc:
                log.warning("node registration failed; retrying", node=self.cfg.name, reason=exc.reason,
                            error=exc.message)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _used_cidrs(self) -> dict[str, tuple[str, str]]:
        nodes = await self.api.nodes.list_all()
        return {n.metadata.name: (n.spec.pod_cidr or "", n.metadata.creation_timestamp or "") for n in nodes.items}

    async def _register_once(self, used_cidrs: set[str] | None, keep_cidr: str | None = None) -> Node:
        try:
            node = await self.api.nodes.get(self.cfg.name)
        except ApiError as exc:
            if exc.reason != "NotFound":
                raise
            node = None
        if node is None:
            if self.cfg.pod_cidr or keep_cidr:
                cidr = self.cfg.pod_cidr or keep_cidr or ""
            else:
                used = used_cidrs if used_cidrs is not None else \
                    {c for c, _ in (await self._used_cidrs()).values() if c}
                cidr = choose_pod_cidr(self.cfg.name, used, self.cfg.pod_cidr_pool)
            node = Node(metadata=ObjectMeta(name=self.cfg.name, labels=self.labels()),
                        spec=NodeSpec(pod_cidr=cidr, pod_cidrs=[cidr]),
                        status=self._status(cidr))
            node = await self.api.nodes.create(node)
            log.info("node registered", node=self.cfg.name, pod_cidr=cidr)
            if not self.cfg.pod_cidr and not keep_cidr and used_cidrs is None:
                node = await self._settle_cidr(node)
            return node
        changed = False
        for k, v in self.labels().items():
            if node.metadata.labels.get(k) != v:
                node.metadata.labels[k] = v
                changed = True
        if not node.spec.pod_cidr:
            used = {c for name, (c, _) in (await self._used_cidrs()).items() if c and name != self.cfg.name}
            node.spec.pod_cidr = self.cfg.pod_cidr or choose_pod_cidr(self.cfg.name, used, self.cfg.pod_cidr_pool)
            node.spec.pod_cidrs = [node.spec.pod_cidr]
            changed = True
        elif self.cfg.pod_cidr and node.spec.pod_cidr != self.cfg.pod_cidr:
            log.warning("node already has another pod CIDR; keeping it", node=self.cfg.name,
                        pod_cidr=node.spec.pod_cidr, flag=self.cfg.pod_cidr)
        if changed:
            node = await self.api.nodes.update(node)
        log.info("node found", node=self.cfg.name, pod_cidr=node.spec.pod_cidr)
        return node

    async def _settle_cidr(self, node: Node) -> Node:
        """Two agents that registered at the same moment may have picked the same /24: the younger
        node (by creation time, then name) moves, before it is Ready, so before any pod lands on it."""
        for _ in range(10):
            others = await self._used_cidrs()
            mine = (node.metadata.creation_timestamp or "", node.metadata.name)
            clash = [name for name, (cidr, created) in others.items()
                     if name != node.metadata.name and cidr == node.spec.pod_cidr and (created, name) < mine]
            if not clash:
                return node
            used = {c for name, (c, _) in others.items() if c and name != node.metadata.name}
            cidr = choose_pod_cidr(node.metadata.name, used, self.cfg.pod_cidr_pool)
            log.info("pod CIDR taken by an older node; moving", node=node.metadata.name, taken=node.spec.pod_cidr,
                     by=clash[0], new=cidr)
            node.spec.pod_cidr, node.spec.pod_cidrs = cidr, [cidr]
            node = await self.api.nodes.update(node)
        return node

    # ---- status -----------------------------------------------------------------------------------
    def _pressure(self) -> dict[str, tuple[bool, str, str]]:
        if self.cfg.hollow:
            return {"MemoryPressure": (False, "KubeletHasSufficientMemory", "hollow node"),
                    "DiskPressure": (False, "KubeletHasNoDiskPressure", "hollow node"),
                    "PIDPressure": (False, "KubeletHasSufficientPID", "hollow node")}
        mem = _meminfo().get("MemAvailable", MEMORY_PRESSURE_BYTES * 10)
        out = {"MemoryPressure": (mem < MEMORY_PRESSURE_BYTES, "KubeletHasInsufficientMemory"
                                  if mem < MEMORY_PRESSURE_BYTES else "KubeletHasSufficientMemory",
                                  f"{format_bytes(mem // 2**20 * 2**20)} of memory available")}
        disk_free = 1.0
        if self.cfg.state_dir is not None:
            try:
                st = os.statvfs(self.cfg.state_dir)
                disk_free = st.f_bavail / st.f_blocks if st.f_blocks else 1.0
            except OSError:
                pass
        out["DiskPressure"] = (disk_free < DISK_PRESSURE_FRACTION, "KubeletHasDiskPressure"
                               if disk_free < DISK_PRESSURE_FRACTION else "KubeletHasNoDiskPressure",
                               f"{disk_free:.0%} of the state disk free")
        try:
            threads = int(_read("/proc/loadavg").split()[3].split("/")[1])
            pid_max = int(_read("/proc/sys/kernel/pid_max"))
            pid_use = threads / pid_max
        except (IndexError, ValueError, ZeroDivisionError):
            pid_use = 0.0
        out["PIDPressure"] = (pid_use > PID_PRESSURE_FRACTION, "KubeletHasInsufficientPID"
                              if pid_use > PID_PRESSURE_FRACTION else "KubeletHasSufficientPID",
                              f"{pid_use:.1%} of pid_max in use")
        return out

    def _condition(self, type_: str, status: str, reason: str, message: str, now: str) -> Condition:
        old = self._conditions.get(type_)
        since = old.last_transition_time if old is not None and old.status == status else now
        cond = Condition(type=type_, status=status, reason=reason, message=message, last_heartbeat_time=now,
                         last_transition_time=since)
        self._conditions[type_] = cond
        return cond

    def conditions(self) -> list[Condition]:
        now = now_iso()
        conds = [self._condition("Ready", "True" if self.ready else "False",
                                 "KubeletReady" if self.ready else "KubeletNotReady",
                                 "flotilla node agent is posting ready status" if self.ready
                                 else "node agent is starting: pods not synced yet", now)]
        for type_, (bad, reason, message) in self._pressure().items():
            conds.append(self._condition(type_, "True" if bad else "False", reason, message, now))
        enforced, reason, message = self.limits
        conds.append(self._condition("ResourceLimitsEnforced", "True" if enforced else "False", reason, message, now))
        return conds

    def _status(self, cidr: str | None = None) -> NodeStatus:
        cidr = cidr or (self.node.spec.pod_cidr if self.node else None)
        addresses = [NodeAddress(type="Hostname", address=self.cfg.name)]
        if cidr:
            addresses.insert(0, NodeAddress(type="InternalIP", address=PodAddresses(cidr).node_ip))
        return NodeStatus(
            capacity=dict(self.capacity), allocatable=self.allocatable, conditions=self.conditions(),
            addresses=addresses,
            node_info=self._node_info)

    async def report_status(self, force: bool = False) -> None:
        status = self._status()
        summary = {c.type: c.status for c in status.conditions}
        due = time.monotonic() - self._last_report >= self.cfg.status_seconds
        if not force and not due and summary == self._reported:
            return
        try:
            await self.api.nodes.update_status(Node(metadata=ObjectMeta(name=self.cfg.name), status=status))
        except ApiError as exc:
            if exc.reason != "NotFound":
                raise
            # Someone deleted our Node: register again, keeping the pod CIDR our pods' addresses are in.
            log.warning("node object was deleted; registering again", node=self.cfg.name)
            self.node = await self._register_once(None, keep_cidr=self.node.spec.pod_cidr if self.node else None)
            await self.api.nodes.update_status(Node(metadata=ObjectMeta(name=self.cfg.name), status=self._status()))
        self._reported = summary
        self._last_report = time.monotonic()

    def set_ready(self, ready: bool) -> None:
        self.ready = ready

    # ---- lease ------------------------------------------------------------------------------------
    def _new_lease(self) -> Lease:
        owner = [OwnerReference(api_version="v1", kind="Node", name=self.cfg.name, uid=self.node.metadata.uid)] \
            if self.node is not None and self.node.metadata.uid else []
        return Lease(metadata=ObjectMeta(name=self.cfg.name, namespace=NODE_LEASE_NAMESPACE, owner_references=owner),
                     spec=LeaseSpec(holder_identity=self.cfg.name,
                                    lease_duration_seconds=max(1, round(4 * self.cfg.heartbeat)),
                                    renew_time=now_micro()))

    async def renew_lease(self) -> None:
        if self.lease is None:
            try:
                self.lease = await self.api.leases.get(self.cfg.name, NODE_LEASE_NAMESPACE)
            except ApiError as exc:
                if exc.reason != "NotFound":
                    raise
                try:
                    self.lease = await self.api.leases.create(self._new_lease())
                    return
                except ApiError as exc:
                    if exc.reason != "AlreadyExists":
                        raise
                    self.lease = await self.api.leases.get(self.cfg.name, NODE_LEASE_NAMESPACE)
        self.lease.spec.renew_time = now_micro()
        self.lease.spec.holder_identity = self.cfg.name
        self.lease.spec.lease_duration_seconds = max(1, round(4 * self.cfg.heartbeat))
        try:
            self.lease = await self.api.leases.update(self.lease)
        except ApiError as exc:
            self.lease = None  # re-read (or re-create) it on the next beat
            if exc.reason not in ("Conflict", "NotFound"):
                raise

    async def beat(self) -> None:
        """One heartbeat: renew the lease, write the status if due; never raises API errors."""
        async with self._beating:  # the startup beat and the periodic ones never overlap
            # A beat long overdue (the agent was paused or starved) may find Ready=Unknown written by the
            # node lifecycle controller meanwhile: report at once, not at the next status_seconds.
            overdue = self._last_beat > 0 and time.monotonic() - self._last_beat > 3 * self.cfg.heartbeat
            try:
                await self.renew_lease()
                await self.report_status(force=self._cut_off or overdue)
                self._cut_off = False
                self._last_beat = time.monotonic()
            except ApiError as exc:
                if not self._cut_off:
                    log.warning("heartbeat failed", node=self.cfg.name, reason=exc.reason, error=exc.message)
                self._cut_off = True

    async def heartbeat(self, jitter: bool = False) -> None:
        """Beats every `heartbeat` seconds (the first one is the caller's); `jitter` spreads many
        agents of one process over the interval."""
        first = random.uniform(0, self.cfg.heartbeat) if jitter else self.cfg.heartbeat
        await asyncio.sleep(first)
        while True:
            await self.beat()
            await asyncio.sleep(self.cfg.heartbeat)
