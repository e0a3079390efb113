"""Requests (cpu, memory, pod count) fit the node's allocatable minus what bound and assumed pods request."""
from __future__ import annotations

from ..nodeinfo import NodeInfo
from ..podinfo import PodInfo


def resources_fit(pod: PodInfo, node: NodeInfo) -> str | None:
    if len(node.pods) + 1 > node.alloc_pods:
        return "Too many pods"
    if pod.cpu and node.cpu + pod.cpu > node.alloc_cpu:
        return "Insufficient cpu"
    if pod.memory and node.memory + pod.memory > node.alloc_memory:
        return "Insufficient memory"
    return None
