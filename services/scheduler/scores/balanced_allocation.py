"""Prefer the node whose cpu and memory would be used in equal proportion (NodeResourcesBalancedAllocation)."""
from __future__ import annotations

from ..nodeinfo import NodeInfo
from ..podinfo import PodInfo


def balanced_allocation(pod: PodInfo, nodes: list[NodeInfo]) -> list[float] | None:
    pc, pm = pod.score_cpu, pod.score_memory
    out = []
    for n in nodes:
        ac, am = n.alloc_cpu, n.alloc_memory
        if not ac or not am:
            out.append(0.0)
            continue
        cpu = min((n.score_cpu + pc) / ac, 1.0)
        mem = min((n.score_memory + pm) / am, 1.0)
        out.append((1 - abs(cpu - mem) / 2) * 100)
    return out
