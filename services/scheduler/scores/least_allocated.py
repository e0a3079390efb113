"""Prefer the node with the most free cpu and memory after placing the pod (NodeResourcesFit LeastAllocated)."""
from __future__ import annotations

from ..nodeinfo import NodeInfo
from ..podinfo import PodInfo


def least_allocated(pod: PodInfo, nodes: list[NodeInfo]) -> list[float] | None:
    pc, pm = pod.score_cpu, pod.score_memory
    out = []
    for n in nodes:
        ac, am = n.alloc_cpu, n.alloc_memory
        cpu = (ac - n.score_cpu - pc) * 100 / ac if ac else 0
        mem = (am - n.score_memory - pm) * 100 / am if am else 0
        out.append(((cpu if cpu > 0 else 0) + (mem if mem > 0 else 0)) / 2)
    return out
