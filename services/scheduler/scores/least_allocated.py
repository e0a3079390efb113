"""Prefer the node with the most free cpu and memory after placing the pod (NodeResourcesFit LeastAllocated)."""
from __future__ import annotations

from ..nodeinfo import NodeInfo
from ..podinfo import PodInfo


def least_allocated(pod: PodInfo, nodes: list[NodeInfo]) -> list[float]:
    out = []
    for n in nodes:
        cpu = (n.alloc_cpu - n.score_cpu - pod.score_cpu) * 100 / n.alloc_cpu if n.alloc_cpu else 0
        mem = (n.alloc_memory - n.score_memory - pod.score_memory) * 100 / n.alloc_memory if n.alloc_memory else 0
        out.append((max(cpu, 0) + max(mem, 0)) / 2)
    return out
