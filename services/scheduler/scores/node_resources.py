"""Kubernetes' two node-resources scores in one pass over the nodes (they read the same numbers):
least allocated (the most free cpu and memory after placing the pod) plus balanced allocation (cpu
and memory used in equal proportion), each 0..100 with weight 1, summed."""
from __future__ import annotations

from ..nodeinfo import NodeInfo
from ..podinfo import PodInfo


def node_resources(pod: PodInfo, nodes: list[NodeInfo]) -> list[float] | None:
    pc, pm = pod.score_cpu, pod.score_memory
    out = []
    for n in nodes:
        ac, am = n.alloc_cpu, n.alloc_memory
        if not ac or not am:
            out.append(0.0)
            continue
        cpu_used = (n.score_cpu + pc) / ac
        mem_used = (n.score_memory + pm) / am
        least = ((1 - cpu_used if cpu_used < 1 else 0) + (1 - mem_used if mem_used < 1 else 0)) * 50
        cpu_used = cpu_used if cpu_used < 1 else 1.0
        mem_used = mem_used if mem_used < 1 else 1.0
        balanced = 100 - abs(cpu_used - mem_used) * 50
        out.append(least + balanced)
    return out
