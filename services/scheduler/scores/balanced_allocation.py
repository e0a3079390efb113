"""Prefer the node whose cpu and memory would be used in equal proportion (NodeResourcesBalancedAllocation)."""
from __future__ import annotations

from ..nodeinfo import NodeInfo
from ..podinfo import PodInfo


def balanced_allocation(pod: PodInfo, nodes: list[NodeInfo]) -> list[float]:
    out = []
    for n in nodes:
        if not n.alloc_cpu or not n.alloc_memory:
            out.append(0.0)
            continue
        cpu = min((n.score_cpu + pod.score_cpu) / n.alloc_cpu, 1.0)
        mem = min((n.score_memory + pod.score_memory) / n.alloc_memory, 1.0)
        out.append((1 - abs(cpu - mem) / 2) * 100)
    return out
