"""Kubernetes' two node-resources scores in one pass over the nodes (they read the same numbers):
least allocated (the most free cpu and memory after placing the pod) plus balanced allocation (cpu
and memory used in equal proportion), each 0..100 with weight 1, summed."""
from __future__ import annotations

from ..nodeinfo import NodeInfo
from ..podinfo import PodInfo


def node_resources(pod: PodInfo, nodes: list[NodeInfo]) -> list[float] | None:
    pc, pm = pod.score_cpu, pod.score_memory
    out = []
    append = out.append
    for n in nodes:
        ic, im = n.inv_cpu, n.inv_memory
        if not ic or not im:
            append(0.0)
            continue
        cpu_used = (n.score_cpu + pc) * ic
        mem_used = (n.score_memory + pm) * im
        if cpu_used > 1:
            cpu_used = 1.0
        if mem_used > 1:
            mem_used = 1.0
        # least allocated: (free cpu + free memory) / 2 * 100; balanced: (1 - |cpu - mem| / 2) * 100
        append((2 - cpu_used - mem_used) * 50 + 100 - abs(cpu_used - mem_used) * 50)
    return out
