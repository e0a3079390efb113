"""A node as the scheduler sees it: allocatable resources, what bound and assumed pods request, the
host ports in use and how many pods of each owner it runs."""
from __future__ import annotations

import msgspec

from schemas import Node
from schemas.quantity import amount_of

from .podinfo import PodInfo


def _alloc(node: Node, name: str, cpu: bool = False) -> int:
    return amount_of(node.status.allocatable or node.status.capacity, name, cpu)


class NodeInfo(msgspec.Struct):
    name: str
    node: Node
    alloc_cpu: int = 0
    alloc_memory: int = 0
    alloc_pods: int = 0
    cpu: int = 0
    memory: int = 0
    score_cpu: int = 0
    score_memory: int = 0
    pods: dict[str, PodInfo] = msgspec.field(default_factory=dict)
    host_ports: dict[tuple[str, str, int], int] = msgspec.field(default_factory=dict)
    owners: dict[str, int] = msgspec.field(default_factory=dict)
    inv_cpu: float = 0.0  # 1/alloc_cpu (0 when none): the scores multiply instead of dividing
    inv_memory: float = 0.0
    ready: bool = False
    plain: bool = False  # Ready, schedulable, no NoSchedule/NoExecute taints: only resources can refuse a plain pod
    prefer_taints: bool = False  # has PreferNoSchedule taints (the taint score only matters then)

    def set_node(self, node: Node) -> None:
        self.node = node
        self.alloc_cpu = _alloc(node, "cpu", cpu=True)
        self.alloc_memory = _alloc(node, "memory")
        self.alloc_pods = _alloc(node, "pods") or 110
        self.inv_cpu = 1 / self.alloc_cpu if self.alloc_cpu else 0.0
        self.inv_memory = 1 / self.alloc_memory if self.alloc_memory else 0.0
        self.ready = any(c.type == "Ready" and c.status == "True" for c in node.status.conditions)
        hard = any(t.effect in ("NoSchedule", "NoExecute") for t in node.spec.taints)
        self.plain = self.ready and not node.spec.unschedulable and not hard
        self.prefer_taints = any(t.effect == "PreferNoSchedule" for t in node.spec.taints)

    def add(self, p: PodInfo) -> None:
        if p.key in self.pods:
            self.remove(p.key)
        self.pods[p.key] = p
        self.cpu += p.cpu
        self.memory += p.memory
        self.score_cpu += p.score_cpu
        self.score_memory += p.score_memory
        for port in p.host_ports:
            self.host_ports[port] = self.host_ports.get(port, 0) + 1
        if p.owner_uid:
            self.owners[p.owner_uid] = self.owners.get(p.owner_uid, 0) + 1

    def remove(self, key: str) -> PodInfo | None:
        p = self.pods.pop(key, None)
        if p is None:
            return None
        self.cpu -= p.cpu
        self.memory -= p.memory
        self.score_cpu -= p.score_cpu
        self.score_memory -= p.score_memory
        for port in p.host_ports:
            n = self.host_ports.get(port, 0) - 1
            if n > 0:
                self.host_ports[port] = n
            else:
                self.host_ports.pop(port, None)
        if p.owner_uid:
            n = self.owners.get(p.owner_uid, 0) - 1
            if n > 0:
                self.owners[p.owner_uid] = n
            else:
                self.owners.pop(p.owner_uid, None)
        return p


def new_node_info(node: Node) -> NodeInfo:
    info = NodeInfo(name=node.metadata.name, node=node)
    info.set_node(node)
    return info
